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
    """Create a kernel socket on path `path` and connect it: towards the connection's destination,
    or (an MP_JOIN to an address the peer advertised) towards `addr`:`port` (None: the destination's
    port). Report it with `subflow_opened(path, port, remote_id)`."""
    path: int
    remote_id: int = 0
    addr: bytes | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class CloseSubflow:
    """Close one subflow's socket (reset: with RST; its last packets still pass the datapath)."""
    subflow: Subflow
    reset: bool = True


@dataclass(frozen=True, slots=True)
class ShutdownSubflow:
    """Shut the write side of the subflow's socket (its FIN; plain TCP after fallback)."""
    subflow: Subflow


@dataclass(frozen=True, slots=True)
class ControlSegment:
    """A segment mptun sends itself on a subflow: a pure ACK (bare DATA_FIN, DATA_ACK of the peer's
    DATA_FIN, a data-level window probe, REMOVE_ADDR, MP_PRIO, an ADD_ADDR echo) or a RST (MP_TCPRST
    for a join that failed): sequence and ACK numbers, window, the complete options area, flags."""
    subflow: Subflow
    seq: int
    ack: int
    window: int
    options: bytes
    flags: int = 0x10    # TCP_ACK


@dataclass(frozen=True, slots=True)
class ReleaseAppSyn:
    """The upstream handshake is done: let the app's held SYN through to the listener."""


@dataclass(frozen=True, slots=True)
class RefuseApp:
    """The destination refused the connection (icmp_code None: answer the app's held SYN with a
    RST), or the network said it is unreachable (answer with an ICMP destination unreachable of
    that code, so the app's connect fails with the error the subflow's got)."""
    icmp_code: int | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over: close every socket it has (reset: with RST, which carries
    MP_FASTCLOSE on a subflow; otherwise gracefully) and let its NAT entries linger."""
    reset: bool
    reason: str | None


Event = OpenSubflow | CloseSubflow | ShutdownSubflow | ControlSegment | ReleaseAppSyn | RefuseApp | Closed
