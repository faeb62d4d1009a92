"""The MPTCP layer, sans I/O: connection, subflows, send buffer, receive path, scheduler, path manager.

Nothing here imports socket, select, selectors, time or pyroute2 (a test checks): the edge hands
it packets' fields, bytes and `now`, and carries out the events it emits. docs/architecture.md
says what each module owns.
"""

from mptun.core.connection import ConnState, Connection, Mode
from mptun.core.events import Closed, ControlSegment, OpenSubflow, RefuseApp, ReleaseAppSyn, ShutdownSubflow
from mptun.core.mapping import MappingTable
from mptun.core.mib import REASONS, Counters
from mptun.core.subflow import Subflow, SubflowKind, SubflowState
from mptun.core.token import TokenTable

__all__ = ["Closed", "ConnState", "Connection", "ControlSegment", "Counters", "MappingTable", "Mode",
           "OpenSubflow", "REASONS", "RefuseApp", "ReleaseAppSyn", "ShutdownSubflow", "Subflow", "SubflowKind",
           "SubflowState", "TokenTable"]
