"""The netns lab: emulated multi-path networks with a real Linux MPTCP peer, for tests and demos."""

from mptun.lab.netns import LabError
from mptun.lab.topology import Direction, Lab, PathSpec, list_labs, teardown

__all__ = ["Direction", "Lab", "LabError", "PathSpec", "list_labs", "teardown"]
