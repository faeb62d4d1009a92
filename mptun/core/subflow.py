"""Subflow: one kernel TCP socket carrying part of a connection: its state, sequence spaces and mappings.

Offsets ("ssn") are relative subflow sequence numbers: byte k of the stream written to (or read
from) the kernel socket has ssn k + 1 (RFC 8684 3.3.1). The Subflow records what each segment
going out or coming in says about them; the options to add are the Connection's decision.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from mptun.core.mapping import MappingTable
from mptun.core.seqspace import after32, u32, unwrap32
from mptun.wire.tcpip import TCP_ACK, TCP_FIN

if TYPE_CHECKING:
    from mptun.core.connection import Connection


class SubflowKind(StrEnum):
    INITIAL = "initial"    # MP_CAPABLE: creates the connection (RFC 8684 3.1)
    JOIN = "join"          # MP_JOIN: adds a path to it (RFC 8684 3.2)


class SubflowState(StrEnum):
    """A subflow's life. An initial subflow goes SYN_SENT -> SYNACK_SEEN -> ESTABLISHED when its
    socket connects. A join goes SYN_SENT -> SYNACK_SEEN (the peer's HMAC checked) -> PRE_ESTABLISHED
    (our third ACK with HMAC sent) -> ESTABLISHED once the peer acknowledged that ACK (RFC 8684 3.2:
    only then may it carry data). CLOSED: the socket is closed; its last packets may still pass."""
    SYN_SENT = "syn_sent"
    SYNACK_SEEN = "synack_seen"
    PRE_ESTABLISHED = "pre_established"
    ESTABLISHED = "established"
    CLOSED = "closed"


class Subflow:
    def __init__(self, conn: Connection, path: int, local_port: int, address_id: int,
                 kind: SubflowKind = SubflowKind.INITIAL, *, remote_id: int = 0, nonce: int = 0,
                 backup: bool = False):
        self.conn = conn
        self.path = path
        self.local_port = local_port
        self.address_id = address_id   # of the path's local address (RFC 8684 3.2, 3.4)
        self.remote_id = remote_id     # of the peer's address it goes to (0: the destination's)
        self.kind = kind
        self.state = SubflowState.SYN_SENT
        self.sock_connected = False    # the kernel socket finished its handshake
        self.nonce = nonce             # MP_JOIN: our random number (RFC 8684 3.2)
        self.peer_nonce = 0
        self.join_hmac: bytes | None = None   # our third ACK's HMAC, once the peer's checked out
        self.peer_answered = False     # the peer's first segment after our third ACK arrived
        self.rst_reason = 0            # MP_TCPRST reason when mptun resets it (RFC 8684 3.6)
        self.third_ack_at = 0.0        # when our third ACK last went out (resent until answered)
        self.third_ack_rto = 0.2
        self.retiring = False          # being closed: read out first (its socket holds acknowledged bytes)
        self.close_reset = True
        self.backup = backup           # our priority for it: backup (MP_JOIN B bit, MP_PRIO)
        self.peer_backup = False       # the peer's (its SYN/ACK's B bit, its MP_PRIO)
        self.prio_pending = False      # an MP_PRIO for our role change must go out on it
        self.stale = False             # made no progress while another did: not scheduled
        self.progress_at = 0.0         # when the peer last acknowledged new bytes on it (or it was idle)
        self.acked_at = 0.0            # when the peer last acknowledged new bytes on it
        # From the kernel socket's TCP_INFO (the edge reports it): the scheduler's inputs.
        self.srtt = 0.0                # smoothed RTT, seconds (0: not known yet)
        self.rttvar = 0.0
        self.cwnd = 0                  # congestion window, segments
        self.in_flight = 0             # segments sent and not acknowledged
        self.notsent = 0               # bytes written to the socket and not yet sent
        self.mss = 1400
        self.dsn_cursor: int | None = None   # redundant scheduling: the next DSN this subflow carries
        self.eof = False               # the kernel socket returned EOF (the peer's FIN)
        self.write_blocked = False     # the kernel socket took less than offered: wait for writability
        self.our_isn: int | None = None
        self.peer_isn: int | None = None
        self.peer_wscale = 0
        self.our_wscale = 0            # from our SYN: scales the windows our kernel advertises
        self.rcv_wnd_edge: int | None = None   # right edge of our kernel's advertised window (ssn)
        self.our_maps = MappingTable()   # what the scheduler wrote: ssn -> dsn
        self.peer_maps = MappingTable()  # what the peer announced: ssn -> dsn
        self.our_csums: dict[int, int] = {}
        self.write_ssn = 1             # next ssn written into the kernel socket
        self.read_ssn = 1              # next ssn read out of the kernel socket
        self.kernel_ack_ssn = 1        # our kernel has received everything below this
        self.peer_ack_ssn = 1          # the peer's TCP ACK: it has everything below this
        self.advanced = False          # peer_ack_ssn moved since the connection last looked
        self.first_chunk_len = 0       # the chunk an MP_CAPABLE with data describes
        self.chunk: list | None = None  # [dsn, bytes, written] being written
        self.mpc_ack_sent = False
        # The latest outgoing segment: a crafted ACK copies its numbers.
        self.snd_nxt: int | None = None
        self.last_ack: int | None = None
        self.last_window = 0
        self.last_options = b""
        # Running DSS checksum of the peer mapping being read: (mapping start, sum, bytes)
        self.rx_csum: tuple[int, int, int] | None = None

    @property
    def established(self) -> bool:
        return self.state == SubflowState.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self.state == SubflowState.CLOSED

    @property
    def usable(self) -> bool:
        """May be given data now: established, open, and its socket not known to be full."""
        return self.state == SubflowState.ESTABLISHED and not self.write_blocked

    @property
    def working(self) -> bool:
        """Established and making progress (a backup carries data only while no regular one works)."""
        return self.state == SubflowState.ESTABLISHED and not self.stale and not self.retiring

    @property
    def cwnd_room(self) -> bool:
        """The congestion window has room (TCP_INFO not seen yet counts as room)."""
        return self.cwnd == 0 or self.in_flight < self.cwnd

    @property
    def outstanding(self) -> int:
        """Bytes written to the socket the peer has not acknowledged."""
        return self.write_ssn - self.peer_ack_ssn

    # ------------------------------------------------------------ segments of ours

    def seen_syn(self, seq: int, window: int, wscale: int) -> None:
        self.our_isn = seq
        self.snd_nxt = u32(seq + 1)
        self.our_wscale = wscale
        self.rcv_wnd_edge = 1 + window     # a SYN's window is never scaled (RFC 7323 2.2)

    def seen_out(self, seq: int, ack: int, flags: int, payload_len: int, window: int, options: bytes) -> None:
        """Our kernel's segment going out: the latest numbers (copied by crafted ACKs)."""
        end = u32(seq + payload_len + (1 if flags & TCP_FIN else 0))
        if self.snd_nxt is None or after32(end, self.snd_nxt):
            self.snd_nxt = end
        if flags & TCP_ACK:
            self.last_ack = ack
            self.last_window = window
            self.last_options = options

    def note_kernel_ack(self, ack: int) -> None:
        """Our kernel acknowledges the peer's bytes below ack: they are in its socket."""
        if self.peer_isn is None:
            return
        rel = unwrap32(self.kernel_ack_ssn, u32(ack - self.peer_isn))
        if rel > self.kernel_ack_ssn:
            self.kernel_ack_ssn = rel
        edge = rel + (self.last_window << self.our_wscale)
        if self.rcv_wnd_edge is None or edge > self.rcv_wnd_edge:
            self.rcv_wnd_edge = edge   # TCP does not shrink its window: the highest edge stands

    def out_offset(self, seq: int) -> int:
        """The ssn of the first payload byte of our segment at seq."""
        return unwrap32(self.write_ssn, u32(seq - self.our_isn))

    # ------------------------------------------------------------ segments of the peer's

    def seen_synack(self, seq: int, wscale: int) -> bool:
        """The peer's SYN/ACK; False if one was seen already (a retransmission: decided)."""
        if self.peer_isn is not None:
            return False
        self.peer_isn = seq
        self.peer_wscale = wscale
        if self.state == SubflowState.SYN_SENT:
            self.state = SubflowState.SYNACK_SEEN
        return True

    def note_peer_ack(self, ack: int, chunk_max: int) -> bool:
        """The peer's TCP ACK; False if it acknowledges bytes never sent (RFC 9293 3.10.7.4 /
        RFC 5961 5: our kernel drops such a segment, so nothing in it may be acted on)."""
        if self.our_isn is None:
            return True
        rel = unwrap32(self.peer_ack_ssn, u32(ack - self.our_isn))
        if rel > self.write_ssn + 1:     # +1: our FIN
            return False
        if rel > self.peer_ack_ssn:
            self.peer_ack_ssn = rel
            self.advanced = True
            self.our_maps.prune_below(rel)
            for s in [k for k in self.our_csums if k < rel - chunk_max]:
                del self.our_csums[s]
        return True

    def in_window(self, seq: int, payload_len: int) -> bool:
        """The peer's segment lies within what our kernel accepts: [its ACK point, + advertised window]."""
        if self.peer_isn is None or self.rcv_wnd_edge is None:
            return True
        rel = unwrap32(self.kernel_ack_ssn, u32(seq - self.peer_isn))
        return rel + payload_len >= self.kernel_ack_ssn and rel <= self.rcv_wnd_edge

    def in_offset(self, seq: int) -> int:
        """The ssn of the first payload byte of the peer's segment at seq."""
        return unwrap32(self.read_ssn, u32(seq - self.peer_isn))

    # ------------------------------------------------------------ lifecycle (called by the Connection)

    def connected(self) -> bool:
        """The kernel socket connected. An initial subflow is established; a join waits until the
        peer has acknowledged its third ACK (RFC 8684 3.2). True if it became established now."""
        self.sock_connected = True
        if self.state == SubflowState.CLOSED:
            return False
        if self.kind == SubflowKind.INITIAL:
            self.state = SubflowState.ESTABLISHED
            return True
        return self._join_ready()

    def third_ack_sent(self, now: float) -> None:
        if self.state == SubflowState.SYNACK_SEEN:
            self.state = SubflowState.PRE_ESTABLISHED
            self.third_ack_at = now

    def join_acked(self) -> bool:
        """The peer's segment after our third ACK on a join (it has our HMAC): True if the subflow
        became established now (its socket may report connected before or after this)."""
        if self.state != SubflowState.PRE_ESTABLISHED:
            return False
        self.peer_answered = True
        return self._join_ready()

    def _join_ready(self) -> bool:
        if self.state == SubflowState.PRE_ESTABLISHED and self.peer_answered and self.sock_connected:
            self.state = SubflowState.ESTABLISHED
            return True
        return False

    def info(self, srtt: float, rttvar: float, cwnd: int, in_flight: int, notsent: int, mss: int) -> None:
        self.srtt, self.rttvar, self.cwnd, self.in_flight, self.notsent = srtt, rttvar, cwnd, in_flight, notsent
        if mss:
            self.mss = mss

    def close(self) -> None:
        self.state = SubflowState.CLOSED

    def describe(self) -> dict:
        return {"path": self.path, "port": self.local_port, "kind": str(self.kind), "state": str(self.state),
                "address_id": self.address_id, "remote_id": self.remote_id, "backup": self.backup,
                "peer_backup": self.peer_backup, "stale": self.stale, "srtt_ms": round(self.srtt * 1000, 2),
                "cwnd": self.cwnd, "established": self.established, "closed": self.closed,
                "bytes_out": self.write_ssn - 1, "bytes_in": self.read_ssn - 1}
