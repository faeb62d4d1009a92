"""A sans-IO stage for mptun.core: a fake clock, a model of our kernel's subflow socket, and a scripted
MPTCP peer, with every segment between them in the test's hands (drop, reorder, duplicate it).

Segments are the fields the datapath hands core (seq, ack, flags, payload, window, options). What
core sees is exactly what the datapath would give it: each of our kernel's segments passes
`Connection.outgoing` on its way out (and carries the options core returns), each peer segment
passes `Connection.incoming` before our kernel model gets it. The kernel model is the part of
TCP core relies on: in-order delivery with an out-of-order queue, cumulative ACKs, segments cut
at MSS and never across a chunk written with MSG_EOR, retransmissions of the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mptun import impl
from mptun.core.connection import Connection
from mptun.core.events import ControlSegment
from mptun.core.mib import Counters
from mptun.core.subflow import Subflow
from mptun.wire import crypto
from mptun.wire import mptcp as w
from mptun.wire.tcpip import TCP_ACK, TCP_SYN, Timestamps, WindowScale

mo = impl.load("mptcpopt")

M32 = (1 << 32) - 1
OUR_KEY = 0x0123456789ABCDEF
PEER_KEY = 0xFEDCBA9876543210
PEER_IDSN = crypto.key_idsn(PEER_KEY)
MSS = 1400
WSCALE = 7
# Our kernel's receive window: ample, so the sim is about MPTCP, not TCP flow control.
OUR_WINDOW = 4000          # << 7 = 512000 bytes


def parse(area: bytes) -> dict:
    return mo.parse_options(bytes(area) + b"\x01" * (-len(area) % 4))


def options(*opts) -> dict:
    return parse(b"".join(o.emit() for o in opts))


@dataclass
class Segment:
    """One TCP segment between our kernel and the peer (sequence numbers as on the wire)."""
    seq: int
    ack: int
    flags: int
    payload: bytes = b""
    window: int = OUR_WINDOW
    options: bytes = b""         # the whole options area (ours: what core made of it)

    @property
    def opts(self) -> dict:
        return parse(self.options)


@dataclass
class Clock:
    now: float = 0.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class OurKernel:
    """Our side's kernel TCP socket of one subflow, as far as core can tell."""

    def __init__(self, conn: Connection, sf: Subflow, isn: int, clock: Clock):
        self.conn, self.sf, self.clock = conn, sf, clock
        self.isn = isn
        self.snd_nxt = (isn + 1) & M32
        self.rcv_nxt = 0
        self.peer_isn = 0
        self.written = bytearray()     # everything core wrote, with chunk boundaries
        self.boundaries: list[int] = []
        self.sent_upto = 0             # bytes of `written` segmented so far
        self.unread = bytearray()      # in order, waiting for core to read
        self.ooo: dict[int, bytes] = {}  # received payloads not yet in order, by sequence number
        self.ts = 1

    def _tsopt(self) -> bytes:
        self.ts += 1
        return b"\x01\x01" + Timestamps(self.ts, 7).emit()

    def out(self, seq: int, flags: int, payload: bytes = b"") -> Segment | None:
        """Our kernel sends a segment: core adds its options; None if core drops it."""
        base = self._tsopt()
        extra = self.conn.outgoing(self.sf, seq, self.rcv_nxt, flags, len(payload), OUR_WINDOW, base)
        if extra is None:
            return None
        return Segment(seq, self.rcv_nxt, flags, payload, OUR_WINDOW, base + extra)

    def syn(self) -> Segment:
        opts = WindowScale(WSCALE).emit() + b"\x01"
        extra = self.conn.outgoing(self.sf, self.isn, 0, TCP_SYN, 0, 64240, opts)
        return Segment(self.isn, 0, TCP_SYN, b"", 64240, opts + extra)

    def receive(self, seg: Segment) -> Segment | None:
        """A peer segment core let through: the kernel takes it (in order or queued) and ACKs."""
        if seg.flags & TCP_SYN:
            self.peer_isn = seg.seq
            self.rcv_nxt = (seg.seq + 1) & M32
            return self.out(self.snd_nxt, TCP_ACK)      # the third ACK
        if not seg.payload:
            return None
        self.ooo.setdefault(seg.seq, seg.payload)
        progress = True
        while progress:
            progress = False
            for start, data in list(self.ooo.items()):
                rel = ((start - self.rcv_nxt + (1 << 31)) & M32) - (1 << 31)
                if rel + len(data) <= 0:
                    del self.ooo[start]          # old: a duplicate of what the socket has
                elif rel <= 0:
                    take = data[-rel:]
                    self.unread += take
                    self.rcv_nxt = (self.rcv_nxt + len(take)) & M32
                    del self.ooo[start]
                    progress = True
        return self.out(self.snd_nxt, TCP_ACK)

    def write_from_core(self, limit: int | None = None) -> int:
        """The socket has room for `limit` bytes (None: any amount): core writes what it wants into it
        (each chunk with MSG_EOR), as the edge does when the socket is writable; returns bytes taken."""
        self.conn.subflow_writable(self.sf)
        taken = 0
        while (got := self.conn.next_write()) is not None:
            sf, data = got
            assert sf is self.sf
            n = len(data) if limit is None else min(len(data), limit - taken)
            self.written += bytes(data[:n])
            self.conn.written(sf, n)
            taken += n
            if n == len(data):
                self.boundaries.append(len(self.written))
            if limit is not None and taken >= limit:
                break
        return taken

    def segments(self) -> list[Segment]:
        """New data segments: MSS-sized, never across a chunk boundary (MSG_EOR)."""
        out = []
        while self.sent_upto < len(self.written):
            end = min(len(self.written), self.sent_upto + MSS)
            for b in self.boundaries:
                if self.sent_upto < b < end:
                    end = b
                    break
            seg = self.out(self.snd_nxt, TCP_ACK, bytes(self.written[self.sent_upto:end]))
            assert seg is not None, "core refused a first transmission"
            out.append(seg)
            self.snd_nxt = (self.snd_nxt + end - self.sent_upto) & M32
            self.sent_upto = end
        return out

    def retransmit(self, seg: Segment) -> Segment | None:
        """The same bytes again (a retransmission timeout): core must map them as before."""
        return self.out(seg.seq, seg.flags, seg.payload)

    def read_to_core(self) -> int:
        """Core reads what the socket holds in order, as the edge would when it is readable."""
        n = 0
        while self.unread and self.conn.subflow_room() > 0:
            take = bytes(self.unread[:self.conn.subflow_room()])
            del self.unread[:len(take)]
            self.conn.subflow_data(self.sf, take)
            n += len(take)
        return n


@dataclass
class Peer:
    """A scripted RFC 8684 peer (the passive opener): its TCP numbers and its data stream by DSN."""
    isn: int = 0xFFFFF000          # wraps during a transfer: sequence unwrapping is exercised
    key: int = PEER_KEY
    snd_nxt: int = 0
    rcv_nxt: int = 0
    dsn: int = PEER_IDSN + 1
    received: dict[int, bytes] = field(default_factory=dict)   # our data by DSN, as its mappings say
    our_isn: int = 0

    def synack(self, our_syn: Segment, *, mp_capable: bool = True, flags: int = w.MPC_HMAC_SHA256,
               window: int = 65535) -> Segment:
        self.our_isn = our_syn.seq
        self.snd_nxt = (self.isn + 1) & M32
        self.rcv_nxt = (our_syn.seq + 1) & M32
        opts = [WindowScale(WSCALE)] + ([w.MpCapable.synack(self.key, flags)] if mp_capable else [])
        return Segment(self.isn, self.rcv_nxt, TCP_SYN | TCP_ACK, b"", window, b"".join(o.emit() for o in opts))

    def data(self, payload: bytes, *, data_ack: int | None, map_dsn: int | None = None, map_ssn: int | None = None,
             map_len: int | None = None, data_fin: bool = False, window: int = 2000) -> Segment:
        """The peer's next data segment, with a DSS mapping (by default exactly this payload)."""
        ssn = (self.snd_nxt - self.isn) & M32
        dss = w.Dss(data_ack=data_ack, dsn=self.dsn if map_dsn is None else map_dsn,
                    subflow_seq=ssn if map_ssn is None else map_ssn,
                    data_len=len(payload) + (1 if data_fin else 0) if map_len is None else map_len,
                    data_fin=data_fin)
        seg = Segment(self.snd_nxt, self.rcv_nxt, TCP_ACK, payload, window, dss.emit())
        self.snd_nxt = (self.snd_nxt + len(payload)) & M32
        if map_dsn is None:
            self.dsn += len(payload)
        return seg

    def ack(self, *, data_ack: int | None, window: int = 2000, data_fin_dsn: int | None = None) -> Segment:
        """A pure ACK with a DATA_ACK (and maybe a bare DATA_FIN: subflow sequence 0, length 1)."""
        if data_fin_dsn is not None:
            dss = w.Dss(data_ack=data_ack, dsn=data_fin_dsn, subflow_seq=0, data_len=1, data_fin=True)
        else:
            dss = w.Dss(data_ack=data_ack)
        return Segment(self.snd_nxt, self.rcv_nxt, TCP_ACK, b"", window, dss.emit())

    def take(self, seg: Segment) -> None:
        """Our segment reaches the peer: its MPTCP records our bytes by DSN, as our mapping says."""
        if not seg.payload:
            return
        o = seg.opts
        ssn = (seg.seq - self.our_isn) & M32          # relative: the first data byte is 1
        if o["suboptions"] & (1 << w.Subtype.DSS) and o["dss_flags"] & w.DSS_MAPPING:
            self.received.setdefault(o["dsn"] + (ssn - o["subflow_seq"]), seg.payload)
        elif o["suboptions"] & (1 << w.Subtype.MP_CAPABLE) and o["mpc_form"] == w.MpcForm.ACK_DATA:
            self.received.setdefault(crypto.key_idsn(OUR_KEY) + ssn, seg.payload)
        else:
            raise AssertionError(f"our data segment at ssn {ssn} carries no mapping")
        if seg.seq == self.rcv_nxt:
            self.rcv_nxt = (self.rcv_nxt + len(seg.payload)) & M32

    def stream(self, start: int) -> bytes:
        """Our data as the peer reassembled it by DSN from start on (up to the first hole)."""
        out = bytearray()
        at = start
        while True:
            piece = next((p[at - d:] for d, p in self.received.items() if d <= at < d + len(p)), None)
            if not piece:
                return bytes(out)
            out += piece
            at += len(piece)


class Sim:
    """One connection with one subflow: our core, our kernel model, the scripted peer, a fake clock."""

    def __init__(self, *, checksums: bool = False, our_isn: int = 1_000_000):
        self.clock = Clock()
        self.counters = Counters()
        self.conn = Connection(1, OUR_KEY, self.clock.now, self.counters, checksums=checksums)
        self.conn.start(self.clock.now)
        self.sf = self.conn.subflow_opened(0, 61440)
        self.kernel = OurKernel(self.conn, self.sf, our_isn, self.clock)
        self.peer = Peer()
        self.events: list = []
        self.controls: list[ControlSegment] = []   # every pure ACK core sent itself, in order
        self.drain_events()

    def handshake(self, **synack) -> Segment:
        """SYN, the peer's SYN/ACK, our third ACK; the socket connects and the app's leg is accepted."""
        syn = self.kernel.syn()
        sa = self.peer.synack(syn, **synack)
        assert self.conn.incoming(self.sf, sa.seq, sa.ack, sa.flags, 0, sa.window, parse(sa.options))
        third = self.kernel.receive(sa)
        self.conn.subflow_connected(self.sf, self.clock.now)
        self.conn.on_app_accepted()
        self.drain_events()
        return third

    def deliver(self, seg: Segment) -> Segment | None:
        """A peer segment reaches us: core first (as the datapath), then our kernel, which ACKs;
        then core is polled, as the edge services a connection after each datapath batch."""
        if not self.conn.incoming(self.sf, seg.seq, seg.ack, seg.flags, len(seg.payload), seg.window,
                                  parse(seg.options)):
            self.poll()
            return None
        ack = self.kernel.receive(seg)
        self.poll()
        return ack

    def drain_events(self) -> list:
        got = self.conn.events()
        self.events.extend(got)
        self.controls.extend(e for e in got if isinstance(e, ControlSegment))
        return got

    def poll(self, at: float | None = None) -> list[ControlSegment]:
        """Time passes to `at`; core acts; the pure ACKs it sent itself now."""
        if at is not None:
            self.clock.now = at
        self.conn.poll(self.clock.now)
        return [e for e in self.drain_events() if isinstance(e, ControlSegment)]

    def app_reads(self) -> bytes:
        self.kernel.read_to_core()
        return self.conn.take_for_app(1 << 30)
