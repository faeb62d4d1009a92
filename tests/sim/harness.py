"""A sans-IO stage for mptun.core: a fake clock, a model of our kernel's subflow socket, and a scripted
MPTCP peer, with every segment between them in the test's hands (drop, reorder, duplicate it).

Segments are the fields the datapath hands core (seq, ack, flags, payload, window, options). What
core sees is exactly what the datapath would give it: each of our kernel's segments passes
`Connection.outgoing` on its way out (and carries the options core returns), each peer segment
passes `Connection.incoming` before our kernel model gets it. The kernel model is the part of
TCP core relies on: in-order delivery with an out-of-order queue, cumulative ACKs, segments cut
at MSS and never across a chunk written with MSG_EOR, retransmissions of the same bytes.

`Sim` is one subflow. `MpSim` is one connection over several paths (a FullMesh path manager over a
PathTable): core's OpenSubflow and CloseSubflow events are carried out as the edge does, each
subflow a `Leg` with its own kernel model and its own end at the peer (`PeerJoin`: the MP_JOIN
handshake with real, or forged, HMACs); the peer's data level is shared by its subflows.
"""

from __future__ import annotations

from dataclasses import dataclass

from mptun import impl
from mptun.core import pm as _pm
from mptun.core import scheduler as _sched
from mptun.core.connection import Connection
from mptun.core.events import CloseSubflow, ControlSegment, OpenSubflow
from mptun.core.mib import Counters
from mptun.core.pm import FullMesh, PathState, PathTable
from mptun.core.subflow import Subflow
from mptun.wire import crypto
from mptun.wire import mptcp as w
from mptun.wire.tcpip import TCP_ACK, TCP_RST, TCP_SYN, Timestamps, WindowScale

mo = impl.load("mptcpopt")

M32 = (1 << 32) - 1
OUR_KEY = 0x0123456789ABCDEF
PEER_KEY = 0xFEDCBA9876543210
PEER_IDSN = crypto.key_idsn(PEER_KEY)
OUR_IDSN = crypto.key_idsn(OUR_KEY)
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
        self.acked = 0                 # bytes of `written` the peer's TCP acknowledged
        self.sent_segments: list[Segment] = []   # every data segment's first transmission
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
        newly = (seg.ack - (self.isn + 1 + self.acked)) & M32
        if seg.flags & TCP_ACK and newly < 1 << 31:
            self.acked += newly
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
            self.accept(data, n)
            self.conn.written(sf, n)
            taken += n
            if limit is not None and taken >= limit:
                break
        return taken

    def accept(self, data, n: int) -> None:
        """The socket takes n bytes of a write of data with MSG_EOR (all of it: a chunk boundary)."""
        self.written += bytes(data[:n])
        if n == len(data):
            self.boundaries.append(len(self.written))

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
            self.sent_segments.append(seg)
            self.snd_nxt = (self.snd_nxt + end - self.sent_upto) & M32
            self.sent_upto = end
        return out

    def retransmit(self, seg: Segment) -> Segment | None:
        """The same bytes again (a retransmission timeout): core must map them as before."""
        return self.out(seg.seq, seg.flags, seg.payload)

    def read_to_core(self) -> int:
        """Core reads what the socket holds in order, as the edge would when it is readable."""
        n = 0
        while self.unread and self.conn.subflow_room(self.sf) > 0:
            take = bytes(self.unread[:self.conn.subflow_room(self.sf)])
            del self.unread[:len(take)]
            self.conn.subflow_data(self.sf, take)
            n += len(take)
        return n


class PeerSubflow:
    """One subflow of the scripted RFC 8684 peer (the passive opener): its TCP numbers. The data
    level (its next DSN, our bytes by DSN as its mappings say) belongs to the Peer and is shared by
    all its subflows."""

    def __init__(self, level: Peer, isn: int):
        self.level = level
        self.isn = isn                 # the initial subflow's wraps during a transfer: unwrapping is exercised
        self.snd_nxt = 0
        self.rcv_nxt = 0
        self.our_isn = 0

    def data(self, payload: bytes, *, data_ack: int | None, map_dsn: int | None = None, map_ssn: int | None = None,
             map_len: int | None = None, data_fin: bool = False, window: int = 2000) -> Segment:
        """The peer's next data segment, with a DSS mapping (by default exactly this payload)."""
        ssn = (self.snd_nxt - self.isn) & M32
        level = self.level
        dss = w.Dss(data_ack=data_ack, dsn=level.dsn if map_dsn is None else map_dsn,
                    subflow_seq=ssn if map_ssn is None else map_ssn,
                    data_len=len(payload) + (1 if data_fin else 0) if map_len is None else map_len,
                    data_fin=data_fin)
        seg = Segment(self.snd_nxt, self.rcv_nxt, TCP_ACK, payload, window, dss.emit())
        self.snd_nxt = (self.snd_nxt + len(payload)) & M32
        if map_dsn is None:
            level.dsn += len(payload)
        return seg

    def ack(self, *, data_ack: int | None, window: int = 2000, data_fin_dsn: int | None = None,
            extra: bytes = b"", flags: int = TCP_ACK) -> Segment:
        """A pure ACK with a DATA_ACK (and maybe a bare DATA_FIN: subflow sequence 0, length 1), and
        any further options (ADD_ADDR, REMOVE_ADDR, MP_PRIO, MP_TCPRST) the script adds."""
        if data_fin_dsn is not None:
            dss = w.Dss(data_ack=data_ack, dsn=data_fin_dsn, subflow_seq=0, data_len=1, data_fin=True)
        else:
            dss = w.Dss(data_ack=data_ack)
        return Segment(self.snd_nxt, self.rcv_nxt, flags, b"", window, dss.emit() + extra)

    def take(self, seg: Segment) -> None:
        """Our segment reaches the peer: its MPTCP records our bytes by DSN, as our mapping says."""
        if not seg.payload:
            return
        o = seg.opts
        ssn = (seg.seq - self.our_isn) & M32          # relative: the first data byte is 1
        if o["suboptions"] & (1 << w.Subtype.DSS) and o["dss_flags"] & w.DSS_MAPPING:
            self.level.received.setdefault(o["dsn"] + (ssn - o["subflow_seq"]), seg.payload)
        elif o["suboptions"] & (1 << w.Subtype.MP_CAPABLE) and o["mpc_form"] == w.MpcForm.ACK_DATA:
            self.level.received.setdefault(crypto.key_idsn(OUR_KEY) + ssn, seg.payload)
        else:
            raise AssertionError(f"our data segment at ssn {ssn} carries no mapping")
        if seg.seq == self.rcv_nxt:
            self.rcv_nxt = (self.rcv_nxt + len(seg.payload)) & M32


class Peer(PeerSubflow):
    """The scripted peer: its initial (MP_CAPABLE) subflow and its data level."""

    def __init__(self, isn: int = 0xFFFFF000, key: int = PEER_KEY):
        super().__init__(self, isn)
        self.key = key
        self.dsn = crypto.key_idsn(key) + 1
        self.received: dict[int, bytes] = {}

    def synack(self, our_syn: Segment, *, mp_capable: bool = True, flags: int = w.MPC_HMAC_SHA256,
               window: int = 65535) -> Segment:
        self.our_isn = our_syn.seq
        self.snd_nxt = (self.isn + 1) & M32
        self.rcv_nxt = (our_syn.seq + 1) & M32
        opts = [WindowScale(WSCALE)] + ([w.MpCapable.synack(self.key, flags)] if mp_capable else [])
        return Segment(self.isn, self.rcv_nxt, TCP_SYN | TCP_ACK, b"", window, b"".join(o.emit() for o in opts))

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

    def data_ack(self) -> int:
        """The DATA_ACK the peer's MPTCP sends: the end of our stream as it holds it in order."""
        return OUR_IDSN + 1 + len(self.stream(OUR_IDSN + 1))


class PeerJoin(PeerSubflow):
    """An MP_JOIN subflow of the peer's (RFC 8684 3.2): it checks our SYN's token, answers with its
    nonce and the truncated HMAC (correct, or what a test forges), checks our third ACK's HMAC and
    answers it with the fourth ACK."""

    def __init__(self, level: Peer, isn: int, nonce: int, address_id: int = 0):
        super().__init__(level, isn)
        self.nonce = nonce
        self.address_id = address_id
        self.syn_options: dict | None = None   # our SYN's MP_JOIN
        self.joined = False                    # our third ACK's HMAC checked out

    def synack(self, our_syn: Segment, *, truncated_hmac: int | None = None, mp_join: bool = True,
               backup: bool = False, window: int = 65535) -> Segment:
        o = our_syn.opts
        assert o["suboptions"] & (1 << w.Subtype.MP_JOIN) and o["join_form"] == w.JoinForm.SYN, \
            "our join's SYN carries no MP_JOIN"
        assert o["join_token"] == crypto.key_token(self.level.key), "MP_JOIN SYN with another connection's token"
        self.syn_options = o
        self.our_isn = our_syn.seq
        self.snd_nxt = (self.isn + 1) & M32
        self.rcv_nxt = (our_syn.seq + 1) & M32
        if truncated_hmac is None:
            truncated_hmac = crypto.join_synack_hmac(self.level.key, OUR_KEY, self.nonce, o["join_nonce"])
        opts = [WindowScale(WSCALE)]
        if mp_join:
            opts.append(w.MpJoin.synack(self.address_id, truncated_hmac, self.nonce, backup))
        return Segment(self.isn, self.rcv_nxt, TCP_SYN | TCP_ACK, b"", window, b"".join(x.emit() for x in opts))

    def fourth_ack(self, third: Segment) -> Segment:
        """Our third ACK reaches the peer: its 160-bit HMAC must prove we know both keys; the
        answer is the fourth ACK (a pure ACK with the peer's DATA_ACK)."""
        o = third.opts
        assert o["suboptions"] & (1 << w.Subtype.MP_JOIN) and o["join_form"] == w.JoinForm.ACK, \
            "our third ACK carries no MP_JOIN"
        want = crypto.join_ack_hmac(OUR_KEY, self.level.key, self.syn_options["join_nonce"], self.nonce)
        assert bytes(o["join_hmac"]) == want, "our third ACK's HMAC is wrong"
        self.joined = True
        return self.ack(data_ack=self.level.data_ack())


class Sim:
    """One connection with one subflow: our core, our kernel model, the scripted peer, a fake clock."""

    def __init__(self, *, checksums: bool = False, our_isn: int = 1_000_000, **conn_options):
        self.clock = Clock()
        self.counters = Counters()
        self.conn = Connection(1, OUR_KEY, self.clock.now, self.counters, checksums=checksums, **conn_options)
        self.conn.start(self.clock.now)
        self.events: list = self.conn.events()
        self.controls: list[ControlSegment] = []   # every pure ACK core sent itself, in order
        first = next(e for e in self.events if isinstance(e, OpenSubflow))
        self.sf = self.conn.subflow_opened(first.path, 61440)
        self.kernel = OurKernel(self.conn, self.sf, our_isn, self.clock)
        self.peer = Peer()
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
        return self._deliver(self.sf, self.kernel, seg)

    def _deliver(self, sf: Subflow, kernel: OurKernel | None, seg: Segment) -> Segment | None:
        if not self.conn.incoming(sf, seg.seq, seg.ack, seg.flags, len(seg.payload), seg.window, parse(seg.options)):
            self.poll()
            return None
        ack = kernel.receive(seg) if kernel is not None else None
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


# ---------------------------------------------------------------- several subflows

@dataclass
class Leg:
    """One subflow as the sim sees it: core's Subflow, our kernel's socket, the peer's end; what
    its TCP_INFO says (the scheduler's inputs); whether the edge closed its socket, and the RST our
    kernel sent then (closed with reset)."""
    sf: Subflow
    kernel: OurKernel
    peer: PeerSubflow
    opened_by: OpenSubflow
    srtt: float = 0.020
    cwnd: int = 10_000
    closed: bool = False
    rst: Segment | None = None

    @property
    def path(self) -> int:
        return self.sf.path


class MpSim(Sim):
    """One connection over several paths: a FullMesh path manager over a PathTable, each subflow a
    Leg. Core's events are carried out as the edge does: OpenSubflow makes a socket
    (`subflow_opened`; its SYN waits for the script), CloseSubflow reads the socket out and closes
    it (with reset, our kernel's RST passes core on its way out). `write` is the edge's
    `_write_subflows`: TCP_INFO of each subflow first, then every chunk core hands out."""

    def __init__(self, paths: int | list[PathState] = 2, *, scheduler: str = _sched.DEFAULT,
                 max_subflows: int = _pm.MAX_SUBFLOWS, **conn_options):
        self.table = PathTable([PathState() for _ in range(paths)] if isinstance(paths, int) else paths)
        self.legs: list[Leg] = []
        super().__init__(path_manager=FullMesh(self.table, max_subflows), scheduler=_sched.create(scheduler),
                         **conn_options)
        first = next(e for e in self.events if isinstance(e, OpenSubflow))
        self.legs.append(Leg(self.sf, self.kernel, self.peer, first))

    # ------------------------------------------------------------ the edge's side

    def drain_events(self) -> list:
        got = super().drain_events()
        for ev in got:
            if isinstance(ev, OpenSubflow):
                self._open(ev)
            elif isinstance(ev, CloseSubflow):
                self._close(ev)
        return got

    def _open(self, ev: OpenSubflow) -> None:
        k = len(self.legs)
        sf = self.conn.subflow_opened(ev.path, 61440 + k, ev.remote_id)
        kernel = OurKernel(self.conn, sf, (1_000_000 + k * 0x1000_0000) & M32, self.clock)
        peer = PeerJoin(self.peer, (0x7FFF_F000 + k * 0x0100_0000) & M32, nonce=0xA5A5_0000 + k,
                        address_id=ev.remote_id)
        self.legs.append(Leg(sf, kernel, peer, ev))

    def _close(self, ev: CloseSubflow) -> None:
        leg = self.leg_of(ev.subflow)
        if leg.closed:
            return
        if leg.sf.sock_connected:
            leg.kernel.read_to_core()          # subflowio.read_out: what our kernel acknowledged
            if ev.reset:
                leg.rst = leg.kernel.out(leg.kernel.snd_nxt, TCP_RST | TCP_ACK)
        leg.closed = True

    def leg_of(self, sf: Subflow) -> Leg:
        return next(leg for leg in self.legs if leg.sf is sf)

    def live(self, path: int | None = None) -> list[Leg]:
        """The legs whose sockets are open (on `path`)."""
        return [leg for leg in self.legs if not leg.closed and (path is None or leg.path == path)]

    def report_info(self) -> None:
        """TCP_INFO of each established subflow, as subflowio.report_info (only with several sockets)."""
        if len(self.live()) < 2:
            return
        for leg in self.live():
            if leg.sf.established:
                k = leg.kernel
                in_flight = -(-(k.sent_upto - k.acked) // MSS)
                self.conn.subflow_info(leg.sf, leg.srtt, leg.srtt / 4, leg.cwnd, in_flight,
                                       len(k.written) - k.sent_upto, MSS)

    def write(self, room: dict[int, int] | None = None) -> dict[int, int]:
        """The edge writes what core hands out; room: bytes each leg's socket takes now (by leg
        index; legs not named take any amount). Returns the bytes each leg took."""
        self.report_info()
        left = {i: (None if room is None else room.get(i)) for i in range(len(self.legs))}
        for i, leg in enumerate(self.legs):
            if not leg.closed and leg.sf.established and left[i] != 0:
                self.conn.subflow_writable(leg.sf)
        taken = {i: 0 for i in range(len(self.legs))}
        for _ in range(100_000):
            got = self.conn.next_write()
            if got is None:
                break
            sf, data = got
            i = self.legs.index(self.leg_of(sf))
            assert not self.legs[i].closed, "core wrote to a closed subflow's socket"
            n = len(data) if left[i] is None else min(len(data), left[i])
            self.legs[i].kernel.accept(data, n)
            self.conn.written(sf, n)
            taken[i] += n
            if left[i] is not None:
                left[i] -= n
        else:
            raise AssertionError("next_write never ran dry")
        return taken

    def transmit(self, leg: Leg) -> list[Segment]:
        """What leg's kernel sends of what was written to it."""
        return [] if leg.closed else leg.kernel.segments()

    def deliver(self, seg: Segment, leg: Leg | None = None) -> Segment | None:
        """A peer segment on leg (default: the initial subflow); a closed leg's socket is gone, so
        only core sees it (the datapath still knows the subflow while its last packets pass)."""
        leg = leg or self.legs[0]
        return self._deliver(leg.sf, None if leg.closed else leg.kernel, seg)

    def app_reads(self) -> bytes:
        """The edge reads every established subflow it watches for reading, then the app reads."""
        for leg in self.live():
            if leg.sf.established and self.conn.wants_subflow_read(leg.sf):
                leg.kernel.read_to_core()
        return self.conn.take_for_app(1 << 30)

    # ------------------------------------------------------------ scripted steps

    def connect(self) -> None:
        """The initial subflow's handshake and the peer's first DSS; the joins the path manager wants
        get their sockets (their SYNs wait for the script)."""
        self.handshake()
        self.deliver(self.peer.ack(data_ack=OUR_IDSN + 1))

    def synack(self, leg: Leg, **synack) -> Segment | None:
        """leg's SYN (which must carry MP_JOIN), the peer's SYN/ACK; our third ACK if core let the
        SYN/ACK through to our kernel, None if it refused it."""
        syn = leg.kernel.syn()
        sa = leg.peer.synack(syn, **synack)
        if not self.conn.incoming(leg.sf, sa.seq, sa.ack, sa.flags, 0, sa.window, parse(sa.options)):
            self.poll()
            return None
        third = leg.kernel.receive(sa)
        self.poll()
        return third

    def socket_connected(self, leg: Leg) -> None:
        self.conn.subflow_connected(leg.sf, self.clock.now)
        self.poll()

    def join(self, leg: Leg, *, fourth_first: bool = False, **synack) -> None:
        """The whole join handshake: SYN, SYN/ACK, third ACK, the socket connected and the fourth ACK
        (in either order)."""
        third = self.synack(leg, **synack)
        assert third is not None, "core refused the SYN/ACK"
        if not fourth_first:
            self.socket_connected(leg)
        self.deliver(leg.peer.fourth_ack(third), leg)
        if fourth_first:
            self.socket_connected(leg)
        assert leg.sf.established

    def path_down(self, path: int) -> list[ControlSegment]:
        """The interface goes (netlink): the table says so, the edge reads the path's subflows out,
        tells the connection and services it (connio.path_changed)."""
        self.table.set_usable(path, False)
        for leg in self.live(path):
            if leg.sf.sock_connected and not leg.sf.closed:
                leg.kernel.read_to_core()
        return self._path_changed(path)

    def path_up(self, path: int) -> list[ControlSegment]:
        self.table.set_usable(path, True)
        return self._path_changed(path)

    def set_role(self, path: int, backup: bool) -> list[ControlSegment]:
        """`mptun set IFACE backup|regular`."""
        self.table.set_backup(path, backup)
        return self._path_changed(path)

    def _path_changed(self, path: int) -> list[ControlSegment]:
        self.conn.path_changed(path, self.clock.now)
        before = len(self.controls)
        self.poll()
        return self.controls[before:]
