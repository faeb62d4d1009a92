"""The netns lab: emulated multi-path networks with a real Linux MPTCP peer, for tests and demos.

Names are imported lazily: the peer programs that run inside namespaces import
mptun.lab.* and should not pay for pyroute2 at every start.
"""

from mptun.lab.netns import LabError

__all__ = ["Direction", "Lab", "LabError", "PathSpec", "list_labs", "teardown"]


def __getattr__(name):
    if name in ("Direction", "PathSpec"):
        from mptun.lab import spec

        return getattr(spec, name)
    if name in __all__:
        from mptun.lab import topology

        return getattr(topology, name)
    raise AttributeError(f"module 'mptun.lab' has no attribute {name!r}")
