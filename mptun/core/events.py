"""What core asks the edge to do: typed events a Connection emits, drained with `Connection.events()`.

Core never performs I/O; each event names one action and the edge carries it out, then reports the
outcome back through the connection's input calls (`subflow_opened`, `subflow_connected`, ...).
Bytes are pulled, not pushed: `Connection.next_write()` and `take_for_app()` hand them over without
an event per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mptun.core.subflow import Subflow


@dataclass(frozen=True, slots=True)
class OpenSubflow:
    """Create a kernel socket on path `path` towards the connection's destination and connect it."""
    path: int


@dataclass(frozen=True, slots=True)
class ShutdownSubflow:
    """Shut the write side of the subflow's socket (its FIN; plain TCP after fallback)."""
    subflow: Subflow


@dataclass(frozen=True, slots=True)
class ControlSegment:
    """A pure ACK mptun sends itself on a subflow (bare DATA_FIN, DATA_ACK of the peer's DATA_FIN,
    a data-level window probe): sequence and ACK numbers, window and the complete options area."""
    subflow: Subflow
    seq: int
    ack: int
    window: int
    options: bytes


@dataclass(frozen=True, slots=True)
class ReleaseAppSyn:
    """The upstream handshake is done: let the app's held SYN through to the listener."""


@dataclass(frozen=True, slots=True)
class RefuseApp:
    """The destination refused the connection: answer the app's held SYN with a RST."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over: close every socket it has (reset: with RST, which carries
    MP_FASTCLOSE on a subflow; otherwise gracefully) and let its NAT entries linger."""
    reset: bool
    reason: str | None


Event = OpenSubflow | ShutdownSubflow | ControlSegment | ReleaseAppSyn | RefuseApp | Closed
