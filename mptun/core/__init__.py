"""The MPTCP layer, sans I/O: connections and their subflows, mappings, flow table, counters.

Nothing here imports socket, time or pyroute2: the datapath and the daemon hand it packets'
fields, bytes and `now`, and act on what it returns.
"""

from mptun.core.connection import Connection, ControlSegment, Subflow
from mptun.core.counters import REASONS, Counters
from mptun.core.flows import AppLeg, FlowTable
from mptun.core.mapping import MappingTable

__all__ = ["AppLeg", "Connection", "ControlSegment", "Counters", "FlowTable", "MappingTable", "REASONS", "Subflow"]
