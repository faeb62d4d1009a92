"""Multipath core driven as the datapath drives it: MP_JOIN handshakes with a scripted RFC 8684 peer
(its HMACs computed, or forged), data both ways over two subflows whose segments reorder against
each other, paths that go and come back, backup roles, stalled subflows, the peer's ADD_ADDR and
REMOVE_ADDR, and the reassembly ring's bound. Fake clock, seeded randomness."""

import random
from collections import deque
from ipaddress import IPv4Address

import pytest

from mptun.core.events import Closed, CloseSubflow, OpenSubflow, RefuseApp
from mptun.core.pm import PathState
from mptun.core.states import ConnState
from mptun.core.subflow import SubflowState
from mptun.wire import crypto
from mptun.wire import mptcp as w
from mptun.wire.tcpip import TCP_ACK, TCP_RST

from tests.sim.harness import MSS, OUR_IDSN, OUR_KEY, PEER_IDSN, PEER_KEY, MpSim, Segment, parse

ROUNDS_MAX = 400


def has(o: dict, subtype: w.Subtype) -> bool:
    return bool(o["suboptions"] & (1 << subtype))


def opened(sim: MpSim, since: int = 0) -> list[OpenSubflow]:
    return [e for e in sim.events[since:] if isinstance(e, OpenSubflow)]


def joined(paths=2, **kw) -> MpSim:
    """Connected, and every join the path manager wanted is established."""
    sim = MpSim(paths, **kw)
    sim.connect()
    for leg in sim.legs[1:]:
        sim.join(leg)
    return sim


def data_ack_of(seg) -> int | None:
    if seg is None:
        return None
    o = parse(seg.options)
    if has(o, w.Subtype.DSS) and o["dss_flags"] & w.DSS_DATA_ACK:
        return o["data_ack"]
    return None


def peer_got_right_bytes(sim: MpSim, data: bytes) -> int:
    """Every byte the peer holds is at the DSN our stream has it at; returns how many it holds."""
    n = 0
    for dsn, piece in sim.peer.received.items():
        at = dsn - (OUR_IDSN + 1)
        assert piece == data[at:at + len(piece)], f"the peer holds wrong bytes at stream offset {at}"
        n += len(piece)
    return n


class Wire:
    """Each leg's direction of the network: a delay in rounds (so one path's segments arrive after
    later DSNs sent on the other) and a switch that black-holes it."""

    def __init__(self, delays: dict[int, int] | None = None):
        self.delays = delays or {}
        self.queues: dict[int, deque] = {}
        self.dead: set[int] = set()
        self.round = 0

    def send(self, i: int, seg) -> None:
        if seg is not None and i not in self.dead:
            self.queues.setdefault(i, deque()).append((self.round + self.delays.get(i, 0), seg))

    def due(self, i: int) -> list:
        q = self.queues.get(i, deque())
        out = []
        while q and q[0][0] <= self.round:
            out.append(q.popleft()[1])
        return out

    def kill(self, i: int) -> None:
        self.dead.add(i)
        self.queues.pop(i, None)


def upload_rounds(sim: MpSim, data: bytes, *, up: Wire | None = None, down: Wire | None = None,
                  room: dict[int, int] | None = None, pos: int = 0, until=None, rounds: int = ROUNDS_MAX,
                  step: float = 0.01) -> int:
    """App bytes in, the edge writes them, our kernels send, the peer takes what arrives on each leg
    and answers on that leg with its TCP ACK and DATA_ACK. Stops when the peer has all of data (or
    when until(sim) says so); returns how much of data the app has handed over."""
    up, down = up or Wire(), down or Wire()
    for _ in range(rounds):
        if pos < len(data):
            n = min(sim.conn.app_room(), len(data) - pos)
            sim.conn.app_data(data[pos:pos + n])
            pos += n
        sim.write(room)
        for i, leg in enumerate(sim.legs):
            for seg in sim.transmit(leg):
                up.send(i, seg)
        for i, leg in enumerate(sim.legs):
            got = up.due(i)
            for seg in got:
                leg.peer.take(seg)
            if got:
                down.send(i, leg.peer.ack(data_ack=sim.peer.data_ack()))
        for i, leg in enumerate(sim.legs):
            for seg in down.due(i):
                sim.deliver(seg, leg)
        up.round += 1
        down.round += 1
        sim.poll(sim.clock.advance(step))
        if until is not None and until(sim):
            return pos
        if pos == len(data) and sim.conn.snd_una == OUR_IDSN + 1 + len(data):
            assert sim.peer.stream(OUR_IDSN + 1) == data
            return pos
    pytest.fail(f"upload not done after {rounds} rounds: the peer has "
                f"{len(sim.peer.stream(OUR_IDSN + 1))} of {len(data)} bytes")


def two_path_upload(seed: int, size: int = 600_000, have: int = 100_000, room: dict[int, int] | None = None):
    """Two subflows (roundrobin, so both carry), an upload of size random bytes under way: the peer
    holds `have` of them. (sim, first leg, second leg, data, the network, bytes handed over)."""
    sim = joined(scheduler="roundrobin")
    data = random.Random(seed).randbytes(size)
    up, pos = upload_partway(sim, data, have, room or {0: 20_000, 1: 20_000})
    return sim, sim.legs[0], sim.legs[1], data, up, pos


def upload_partway(sim: MpSim, data: bytes, have: int, room: dict[int, int]) -> tuple[Wire, int]:
    """An upload over a network the caller may then cut, run until the peer holds `have` bytes in
    order: (that network, how much of data the app has handed over)."""
    up = Wire()
    pos = upload_rounds(sim, data, up=up, room=room, until=lambda s: len(s.peer.stream(OUR_IDSN + 1)) > have)
    return up, pos


def fill_ring_then_overflow(sim: MpSim, data: bytes, ring: int, first, second) -> int:
    """The peer sends data[:ring] on `first` (read into the ring, which the app leaves full), then
    the rest on `second`, whose socket keeps it (acknowledged, beyond the ring). Returns the highest
    DATA_ACK our ACKs carried."""
    highest = PEER_IDSN + 1
    for leg, lo, hi in ((first, 0, ring), (second, ring, len(data))):
        for pos in range(lo, hi, MSS):
            ack = sim.deliver(leg.peer.data(data[pos:min(pos + MSS, hi)], data_ack=OUR_IDSN + 1), leg)
            highest = max(highest, data_ack_of(ack) or 0)
        if leg is first:
            first.kernel.read_to_core()
    return highest


# ---------------------------------------------------------------- the join handshake (RFC 8684 3.2)

@pytest.mark.parametrize("fourth_first", [False, True], ids=["connected-then-fourth-ack", "fourth-ack-then-connected"])
def test_a_join_carries_data_only_once_the_peer_acknowledged_its_third_ack(fourth_first):
    sim = MpSim(2)
    sim.connect()
    assert OpenSubflow(1, 0, None, None) in sim.events      # MPTCP now: a join on the second path
    join = sim.legs[1]
    assert join.sf.state == SubflowState.SYN_SENT
    third = sim.synack(join)
    syn = join.peer.syn_options                              # the peer checked the token already
    assert (syn["join_address_id"], syn["join_backup"], syn["join_nonce"]) == (2, False, join.sf.nonce)
    assert has(third.opts, w.Subtype.MP_JOIN) and third.opts["join_form"] == w.JoinForm.ACK
    assert join.sf.state == SubflowState.PRE_ESTABLISHED
    data = bytes(range(256)) * 800
    sim.conn.app_data(data)
    fourth = join.peer.fourth_ack(third)                     # the peer checked our 160-bit HMAC
    if fourth_first:
        sim.deliver(fourth, join)
    else:
        sim.socket_connected(join)
    assert not join.sf.established
    # The initial subflow's socket is full: the join still gets nothing before it is established.
    assert sim.write(room={0: 3000}) == {0: 3000, 1: 0}
    assert sim.counters["subflows_joined"] == 0
    if fourth_first:
        sim.socket_connected(join)
    else:
        sim.deliver(fourth, join)
    assert join.sf.established and sim.counters["subflows_joined"] == 1
    assert sim.write(room={0: 0})[1] > 0
    for leg in sim.legs:
        for seg in sim.transmit(leg):
            leg.peer.take(seg)
    assert sim.peer.stream(OUR_IDSN + 1) == data[:3000]
    assert peer_got_right_bytes(sim, data) > 3000


def test_a_lost_third_ack_goes_out_again_when_the_peer_repeats_its_synack():
    sim = MpSim(2)
    sim.connect()
    join = sim.legs[1]
    syn = join.kernel.syn()
    sa = join.peer.synack(syn)
    assert sim.conn.incoming(join.sf, sa.seq, sa.ack, sa.flags, 0, sa.window, parse(sa.options))
    join.kernel.receive(sa)                                  # the third ACK is lost
    sim.socket_connected(join)
    assert sim.conn.incoming(join.sf, sa.seq, sa.ack, sa.flags, 0, sa.window, parse(sa.options))
    again = join.kernel.receive(sa)                          # the peer's SYN/ACK again: our kernel re-ACKs
    sim.deliver(join.peer.fourth_ack(again), join)
    assert join.sf.established and sim.counters["join_hmac_failures"] == 0


def test_a_lost_fourth_ack_does_not_leave_the_join_waiting_forever():
    """RFC 8684 3.2: the third ACK is the only one of the handshake without its own retransmission
    (it is a pure ACK); it is repeated until the fourth ACK arrives. During an upload the peer has
    nothing else to send on the join, so without that the join never carries data."""
    sim = MpSim(2)
    sim.connect()
    join = sim.legs[1]
    t0 = sim.clock.now
    third = sim.synack(join)
    sim.socket_connected(join)
    assert third is not None                                 # ... and the fourth ACK is lost
    for k in range(1, 51):
        sim.poll(t0 + 0.1 * k)
        repeats = [c for c in sim.controls if c.subflow is join.sf and has(parse(c.options), w.Subtype.MP_JOIN)]
        if repeats:
            break
    else:
        pytest.fail(f"5 s after a lost fourth ACK: no third ACK repeated; timer {sim.conn.get_timer()}, "
                    f"join {join.sf.state}")
    again = repeats[0]
    o = parse(again.options)
    assert o["join_form"] == w.JoinForm.ACK
    assert bytes(o["join_hmac"]) == crypto.join_ack_hmac(OUR_KEY, PEER_KEY, join.sf.nonce, join.peer.nonce)


def test_the_peers_data_as_its_first_segment_after_the_third_ack_establishes_the_join():
    """Linux may answer the third ACK with data at once: that segment is the fourth ACK."""
    sim = MpSim(2)
    sim.connect()
    join = sim.legs[1]
    third = sim.synack(join)
    join.peer.fourth_ack(third)                              # checked by the peer, but not sent:
    first = b"data on the new subflow"
    sim.deliver(join.peer.data(first, data_ack=OUR_IDSN + 1), join)
    assert not join.sf.established                           # the socket has not said connected yet
    sim.socket_connected(join)
    assert join.sf.established and sim.counters["subflows_joined"] == 1
    assert sim.app_reads() == first


# ---------------------------------------------------------------- joins the peer's SYN/ACK fails

@pytest.mark.parametrize("forge", ["wrong-hmac", "no-mp-join"])
def test_a_synack_that_fails_its_check_resets_the_join_with_mp_tcprst_and_it_is_retried_with_backoff(forge):
    sim = MpSim(2)
    sim.connect()
    reason = {"wrong-hmac": "join_hmac_failures", "no-mp-join": "join_without_mp_join"}[forge]
    for attempt, wait in enumerate([1.0, 2.0, 4.0]):
        join = sim.legs[-1]
        assert (join.path, join.opened_by.remote_id) == (1, 0) and join.sf.state == SubflowState.SYN_SENT
        sim.poll(sim.clock.advance(0.05))                     # the SYN/ACK, a round trip later
        t = sim.clock.now
        before = len(sim.events)
        if forge == "wrong-hmac":
            right = crypto.join_synack_hmac(PEER_KEY, OUR_KEY, join.peer.nonce, join.sf.nonce)
            third = sim.synack(join, truncated_hmac=right ^ 1)
        else:
            third = sim.synack(join, mp_join=False)
        assert third is None, "the SYN/ACK reached our kernel"
        new = sim.events[before:]
        (rst,) = [e for e in sim.controls if e.subflow is join.sf]
        o = parse(rst.options)
        assert rst.flags == TCP_RST and rst.seq == (join.kernel.isn + 1) and rst.ack == 0
        assert has(o, w.Subtype.MP_TCPRST) and o["tcprst_reason"] == 1        # RFC 8684 3.6: MPTCP error
        assert CloseSubflow(join.sf, reset=False) in new and join.closed
        assert join.sf.state == SubflowState.CLOSED
        assert sim.counters[reason] == attempt + 1 and sim.counters["subflows_joined"] == 0
        # Retried later, with backoff: the timer says when; nothing before.
        assert sim.conn.get_timer() == pytest.approx(t + wait)
        n = len(sim.legs)
        sim.poll(t + wait - 0.01)
        assert len(sim.legs) == n
        sim.poll(t + wait)
        assert len(sim.legs) == n + 1 and sim.legs[-1].path == 1
    # Meanwhile no data was given to a join: it all went on the initial subflow.
    data = random.Random(7).randbytes(200_000)
    upload_rounds(sim, data)
    assert all(leg.sf.write_ssn == 1 for leg in sim.legs[1:])
    sim.join(sim.legs[-1])
    assert sim.counters["subflows_joined"] == 1


def test_a_join_the_peer_refuses_at_its_syn_is_retried_once_with_backoff_and_the_app_never_hears_of_it():
    sim = MpSim(2)
    sim.connect()
    join = sim.legs[1]
    syn = join.kernel.syn()
    t = sim.clock.now
    # The peer answers the join's SYN with a RST (Linux: no such token, or over its limit); the
    # datapath passes it to our kernel, whose connect fails.
    rst = Segment(0, (syn.seq + 1) & 0xFFFFFFFF, TCP_RST | TCP_ACK, b"", 0, b"")
    sim.deliver(rst, join)
    sim.conn.subflow_connect_failed(join.sf, "refused", "ECONNREFUSED")
    sim.poll()
    assert sim.counters["join_failures"] == 1
    assert [e for e in sim.events if isinstance(e, CloseSubflow)] == [CloseSubflow(join.sf, reset=False)]
    assert sim.conn.get_timer() == pytest.approx(t + 1.0)
    assert sim.conn.state == ConnState.ESTABLISHED and sim.conn.error is None
    assert not [e for e in sim.events if isinstance(e, (RefuseApp, Closed))]


def test_a_join_the_peer_resets_before_the_fourth_ack_is_closed_and_retried_with_backoff():
    """Linux can refuse a join at the third ACK (e.g. over its subflow limit): a RST with MP_TCPRST.
    The edge does not watch a join's socket before it is established, so only the datapath (core's
    `incoming`) sees that RST."""
    sim = MpSim(2)
    sim.connect()
    join = sim.legs[1]
    third = sim.synack(join)
    sim.socket_connected(join)
    assert third is not None
    rst = Segment(join.peer.snd_nxt, join.peer.rcv_nxt, TCP_RST | TCP_ACK, b"", 0, w.MpTcpRst(reason=6).emit())
    t = sim.clock.now
    sim.deliver(rst, join)
    if join.sf.established and not join.sf.closed:
        # Now the edge watches the socket: its read fails (ECONNRESET).
        sim.conn.subflow_reset(join.sf)
        sim.poll()
    assert sim.counters["subflows_joined"] == 0, "the peer's RST was taken for the fourth ACK"
    assert any(isinstance(e, CloseSubflow) and e.subflow is join.sf for e in sim.events), \
        f"the reset join is still {join.sf.state}"
    n = len(sim.legs)
    sim.poll(t + 0.5)
    assert len(sim.legs) == n, "re-opened at once: a peer that refuses joins would get one per round trip"
    assert sim.conn.get_timer() is not None


# ---------------------------------------------------------------- data both ways over two subflows

@pytest.mark.parametrize("scheduler", ["lowrtt", "roundrobin", "blest", "redundant"])
@pytest.mark.parametrize("seed", range(3))
def test_upload_over_two_subflows_is_intact_when_their_segments_reorder(scheduler, seed):
    rng = random.Random(seed)
    sim = joined(scheduler=scheduler)
    sim.legs[0].srtt, sim.legs[1].srtt = 0.020, 0.080
    data = rng.randbytes(rng.randrange(300_000, 600_000))
    # The second path is slower: what it carries arrives after later DSNs sent on the first.
    upload_rounds(sim, data, up=Wire({1: rng.randrange(1, 4)}), down=Wire({1: rng.randrange(0, 3)}),
                  room={0: 20_000, 1: 20_000})
    assert sim.conn.snd_una == OUR_IDSN + 1 + len(data)
    if scheduler != "blest":
        assert all(leg.sf.write_ssn > 1 for leg in sim.legs), "a subflow carried nothing"
    assert sim.conn.error is None


@pytest.mark.parametrize("seed", range(4))
def test_download_over_two_subflows_is_intact_and_data_acked_only_up_to_the_first_hole(seed):
    rng = random.Random(100 + seed)
    sim = joined()
    a, b = sim.legs
    data = rng.randbytes(rng.randrange(100_000, 300_000))
    # The peer spreads its stream over both subflows, one mapping per segment.
    flights = {0: [], 1: []}
    pos = 0
    while pos < len(data):
        n = min(rng.randrange(1, MSS + 1), len(data) - pos)
        i = rng.randrange(2)
        flights[i].append((PEER_IDSN + 1 + pos, n, sim.legs[i].peer.data(data[pos:pos + n], data_ack=OUR_IDSN + 1)))
        pos += n
    # Each subflow in order (TCP), the two interleaved at random: a subflow runs ahead of the other.
    arrived = []
    got = bytearray()
    highest = PEER_IDSN + 1
    while flights[0] or flights[1]:
        i = rng.choice([k for k in (0, 1) if flights[k]])
        dsn, n, seg = flights[i].pop(0)
        ack = sim.deliver(seg, sim.legs[i])
        arrived.append((dsn, dsn + n))
        arrived.sort()
        prefix = PEER_IDSN + 1
        for lo, hi in arrived:
            if lo > prefix:
                break
            prefix = max(prefix, hi)
        da = data_ack_of(ack)
        assert da is not None and highest <= da <= prefix, "DATA_ACK beyond the first hole, or backwards"
        highest = da
        if rng.random() < 0.3:
            got += sim.app_reads()
    got += sim.app_reads()
    assert bytes(got) == data
    assert highest == PEER_IDSN + 1 + len(data)
    assert sim.counters["duplicate_data"] == 0 and sim.conn.error is None


def test_redundant_data_from_the_peer_is_delivered_once_and_the_copies_counted():
    sim = joined()
    a, b = sim.legs
    data = random.Random(3).randbytes(50_000)
    for pos in range(0, len(data), MSS):
        piece = data[pos:pos + MSS]
        dsn = PEER_IDSN + 1 + pos
        first, second = (a, b) if pos % (2 * MSS) else (b, a)
        sim.deliver(first.peer.data(piece, data_ack=OUR_IDSN + 1, map_dsn=dsn), first)
        sim.deliver(second.peer.data(piece, data_ack=OUR_IDSN + 1, map_dsn=dsn), second)
    assert sim.app_reads() == data
    assert sim.counters["duplicate_data"] == len(data)


# ---------------------------------------------------------------- a path goes, and comes back

def test_a_path_that_goes_sends_remove_addr_on_the_other_closes_its_subflow_and_reinjects():
    sim, a, b, data, up, pos = two_path_upload(11, 500_000)
    # Path 1 dies: what it carries from now on never arrives.
    up.kill(1)
    sim.write(room={0: 20_000, 1: 20_000})
    lost_in_flight = sim.transmit(b)
    assert lost_in_flight, "the dying subflow carried nothing at the time"
    controls = sim.path_down(1)
    removes = [c for c in controls if has(parse(c.options), w.Subtype.REMOVE_ADDR)]
    assert len(removes) == 1 and removes[0].subflow is a.sf
    assert parse(removes[0].options)["remove_ids"] == bytes([b.sf.address_id]) == b"\x02"
    assert CloseSubflow(b.sf, reset=True) in sim.events and b.closed
    assert sim.counters["subflows_path_down"] == 1 and sim.counters["remove_addr_sent"] == 1
    rst = b.rst.opts                                        # our kernel's RST as the socket closes
    assert has(rst, w.Subtype.MP_TCPRST)
    assert not has(rst, w.Subtype.MP_FASTCLOSE), "the whole connection was closed, not one subflow"
    upload_rounds(sim, data, up=up, pos=pos, room={0: 20_000})
    assert sim.counters["reinjected_bytes"] > 0
    assert sim.conn.snd_una == OUR_IDSN + 1 + len(data) and sim.conn.error is None


def test_what_the_dying_subflow_received_is_read_out_before_it_closes():
    sim = joined()
    a, b = sim.legs
    first = b"on the path that goes " * 100
    ack = sim.deliver(b.peer.data(first, data_ack=OUR_IDSN + 1), b)       # our kernel ACKs it...
    assert data_ack_of(ack) == PEER_IDSN + 1 + len(first)                 # ... and so does DATA_ACK
    sim.path_down(1)                                                       # before the app read it
    rest = b"and the rest over the other" * 100
    sim.deliver(a.peer.data(rest, data_ack=OUR_IDSN + 1), a)
    assert sim.app_reads() == first + rest


def test_a_path_that_comes_back_gets_a_join_again_at_once_and_carries_data():
    rng = random.Random(12)
    sim = joined(scheduler="roundrobin")
    before = len(sim.events)
    sim.path_down(1)
    sim.poll(sim.clock.now + 5.0)
    assert opened(sim, before) == [], "a join on a path that is down"
    sim.path_up(1)
    assert [e.path for e in opened(sim, before)] == [1], "no join at once on the path that came back"
    back = sim.legs[-1]
    sim.join(back)
    data = rng.randbytes(200_000)
    upload_rounds(sim, data, room={0: 20_000, 2: 20_000})
    assert back.sf.write_ssn > 1


def test_a_path_that_comes_back_is_joined_again_even_while_its_old_subflow_is_still_being_read_out():
    """The app reads slowly, so the old subflow's socket still holds bytes our kernel acknowledged
    when its path goes (they are read out before it closes). The path comes back meanwhile: it
    gets a new join, and it must not wait for the old socket forever."""
    ring = 8192
    sim = joined(recv_buffer=ring)
    a, b = sim.legs
    data = random.Random(24).randbytes(ring + 4000)
    fill_ring_then_overflow(sim, data, ring, a, b)
    sim.path_down(1)
    before = len(sim.events)
    sim.poll(sim.clock.advance(0.1))
    sim.path_up(1)
    got = bytearray()
    for _ in range(10):
        sim.poll(sim.clock.advance(0.1))
        got += sim.app_reads()
    assert bytes(got) == data
    assert [e.path for e in opened(sim, before)] == [1], "the path that came back was never joined again"


def test_a_path_that_comes_back_skips_the_backoff_of_an_earlier_failed_join():
    sim = MpSim(2)
    sim.connect()
    join = sim.legs[1]
    sim.synack(join, mp_join=False)                          # refused: retry in 1 s
    t = sim.clock.now
    sim.path_down(1)
    before = len(sim.events)
    sim.poll(t + 0.1)
    sim.path_up(1)
    assert [e.path for e in opened(sim, before)] == [1]


def test_the_connection_survives_the_initial_subflows_path_and_closes_cleanly_over_the_join():
    rng = random.Random(13)
    sim, a, b, data, up, pos = two_path_upload(13, 300_000, 50_000)
    up.kill(0)
    controls = sim.path_down(0)
    (remove,) = [c for c in controls if has(parse(c.options), w.Subtype.REMOVE_ADDR)]
    assert remove.subflow is b.sf and parse(remove.options)["remove_ids"] == b"\x00"
    assert a.closed and a.sf.closed
    upload_rounds(sim, data, up=up, pos=pos, room={1: 20_000})
    # Path 0 comes back: a join from it at once (its address ID is not 0 again: that one was removed).
    before = len(sim.events)
    sim.path_up(0)
    assert [(e.path, e.remote_id) for e in opened(sim, before)] == [(0, 0)]
    back = sim.legs[-1]
    sim.join(back)
    assert back.peer.syn_options["join_address_id"] not in (0, b.sf.address_id)
    # The peer's stream comes over the join too; both DATA_FINs; the connection ends cleanly.
    reply = rng.randbytes(30_000)
    for i in range(0, len(reply), MSS):
        sim.deliver(b.peer.data(reply[i:i + MSS], data_ack=sim.peer.data_ack()), b)
    assert sim.app_reads() == reply
    sim.conn.on_app_eof()
    fins = [c for c in sim.poll() if parse(c.options)["dss_flags"] & w.DSS_DATA_FIN]
    assert fins and all(c.subflow is b.sf for c in fins)
    sim.deliver(b.peer.ack(data_ack=OUR_IDSN + 2 + len(data), data_fin_dsn=PEER_IDSN + 1 + len(reply)), b)
    assert sim.conn.app_fin_due()
    sim.conn.app_fin_delivered()
    sim.poll(sim.clock.advance(0.01))
    assert sim.conn.state == ConnState.CLOSED and sim.conn.error is None


def test_control_segments_go_on_a_live_subflow_not_on_one_whose_path_went():
    """The initial subflow's path goes while its socket still holds bytes the app has not made
    room for (it is read out before it closes). Our DATA_FIN meanwhile must go where it arrives."""
    ring = 8192
    sim = joined(recv_buffer=ring)
    a, b = sim.legs
    data = random.Random(25).randbytes(ring + 3000)
    fill_ring_then_overflow(sim, data, ring, b, a)
    sim.path_down(0)
    sim.conn.on_app_eof()
    fins = [c for c in sim.poll(sim.clock.advance(0.01)) if parse(c.options)["dss_flags"] & w.DSS_DATA_FIN]
    assert fins, "no DATA_FIN"
    assert all(c.subflow is b.sf for c in fins), "our DATA_FIN went out on the path that is gone"


# ---------------------------------------------------------------- roles: backup and regular

def test_a_backup_path_carries_nothing_while_the_regular_one_works_and_everything_when_it_goes():
    rng = random.Random(14)
    sim = MpSim([PathState(), PathState(backup=True)])
    sim.connect()
    backup = sim.legs[1]
    third = sim.synack(backup)
    assert backup.peer.syn_options["join_backup"]            # the B bit of the MP_JOIN SYN
    sim.socket_connected(backup)
    sim.deliver(backup.peer.fourth_ack(third), backup)
    data = rng.randbytes(400_000)
    up = Wire()
    # The regular subflow's socket is full most of the time: still nothing for the backup.
    pos = upload_rounds(sim, data, up=up, room={0: 10_000},
                        until=lambda s: len(s.peer.stream(OUR_IDSN + 1)) > 150_000)
    assert backup.sf.write_ssn == 1
    up.kill(0)
    sim.path_down(0)
    upload_rounds(sim, data, up=up, pos=pos)
    assert backup.sf.write_ssn > 1


def test_a_role_change_sends_mp_prio_on_that_paths_subflows_and_the_scheduler_follows_it():
    rng = random.Random(15)
    sim = joined(scheduler="roundrobin")
    a, b = sim.legs
    controls = sim.set_role(1, True)
    prios = [c for c in controls if has(parse(c.options), w.Subtype.MP_PRIO)]
    assert [(c.subflow, parse(c.options)["prio_backup"]) for c in prios] == [(b.sf, True)]
    assert sim.counters["mp_prio_sent"] == 1
    data = rng.randbytes(200_000)
    upload_rounds(sim, data, room={0: 10_000, 1: 10_000})
    assert b.sf.write_ssn == 1
    controls = sim.set_role(1, False)
    prios = [c for c in controls if has(parse(c.options), w.Subtype.MP_PRIO)]
    assert [(c.subflow, parse(c.options)["prio_backup"]) for c in prios] == [(b.sf, False)]
    more = rng.randbytes(200_000)
    upload_rounds(sim, data + more, pos=len(data), room={0: 10_000, 1: 10_000})
    assert b.sf.write_ssn > 1


def test_an_initial_subflow_on_a_backup_path_tells_the_peer_with_mp_prio():
    """MP_CAPABLE has no B bit: when the only usable path at the start is a backup, the initial
    subflow goes there, and only MP_PRIO can tell the peer not to send on it once a regular path
    has joined (the peer's scheduler would otherwise use the backup for the download)."""
    sim = MpSim([PathState(backup=True), PathState(usable=False)])
    sim.connect()
    initial = sim.legs[0]
    assert initial.path == 0 and initial.sf.backup
    sim.path_up(1)
    sim.join(sim.legs[-1])
    sim.poll(sim.clock.advance(0.01))
    prios = [c for c in sim.controls if c.subflow is initial.sf and has(parse(c.options), w.Subtype.MP_PRIO)]
    assert prios and parse(prios[-1].options)["prio_backup"], "the peer was never told the initial subflow is a backup"


def test_the_peers_backup_flag_and_mp_prio_are_honoured():
    rng = random.Random(16)
    sim = MpSim(2, scheduler="roundrobin")
    sim.connect()
    b = sim.legs[1]
    sim.join(b, backup=True)                                 # the B bit of the peer's SYN/ACK
    assert b.sf.peer_backup
    data = rng.randbytes(150_000)
    upload_rounds(sim, data, room={0: 10_000, 1: 10_000})
    assert b.sf.write_ssn == 1
    sim.deliver(b.peer.ack(data_ack=sim.peer.data_ack(), extra=w.MpPrio(False).emit()), b)
    assert not b.sf.peer_backup
    more = rng.randbytes(150_000)
    upload_rounds(sim, data + more, pos=len(data), room={0: 10_000, 1: 10_000})
    assert b.sf.write_ssn > 1


# ---------------------------------------------------------------- stalled subflows

def test_a_subflow_without_progress_while_the_other_progresses_is_stalled_reinjected_and_recovers():
    sim, a, b, data, up, pos = two_path_upload(17)
    # Path 1 black-holes silently (no link event): b's segments and ACKs vanish.
    up.kill(1)
    t0 = sim.clock.now
    pos = upload_rounds(sim, data, up=up, pos=pos, room={0: 20_000, 1: 20_000}, until=lambda s: b.sf.stale)
    assert sim.counters["subflows_stalled"] == 1
    assert sim.clock.now - t0 <= 0.25 + 0.05, "not detected within max(0.25 s, 4 RTT)"
    stuck_at = b.sf.write_ssn
    pos = upload_rounds(sim, data, up=up, pos=pos, room={0: 20_000, 1: 20_000},
                        until=lambda s: len(s.peer.stream(OUR_IDSN + 1)) > 400_000)
    assert sim.counters["reinjected_bytes"] > 0
    assert b.sf.write_ssn == stuck_at, "a stalled subflow was given more data"
    # The path heals: our kernel retransmits what b carried, the peer acknowledges it.
    up.dead.clear()
    for seg in list(b.kernel.sent_segments):
        again = b.kernel.retransmit(seg)
        if again is not None:
            b.peer.take(again)
    sim.deliver(b.peer.ack(data_ack=sim.peer.data_ack()), b)
    assert not b.sf.stale and sim.counters["subflows_recovered"] == 1
    upload_rounds(sim, data, up=up, pos=pos, room={0: 20_000, 1: 20_000})
    assert b.sf.write_ssn > stuck_at, "the recovered subflow was not scheduled again"


def test_a_stalled_subflow_carries_on_when_the_other_path_goes():
    """b stalled (so it is not scheduled); then a's path goes. b is all there is: it must be used
    again, or the connection's data is stranded for good."""
    sim, a, b, data, up, pos = two_path_upload(18)
    up.kill(1)
    pos = upload_rounds(sim, data, up=up, pos=pos, room={0: 20_000, 1: 20_000}, until=lambda s: b.sf.stale)
    up.dead.clear()                                          # b's path heals ...
    up.kill(0)
    sim.path_down(0)                                         # ... as a's goes
    for seg in list(b.kernel.sent_segments):
        again = b.kernel.retransmit(seg)
        if again is not None:
            b.peer.take(again)
    sim.deliver(b.peer.ack(data_ack=sim.peer.data_ack()), b)
    upload_rounds(sim, data, up=up, pos=pos, room={1: 20_000}, rounds=200)


def test_a_subflow_that_stalls_with_a_chunk_half_written_keeps_its_mappings_whole():
    """The socket of a stalling subflow is full: its current chunk is half in it. That chunk's
    mapping is on the wire already; the rest of the chunk must follow it on that subflow (or the
    next chunk's mapping would overlap it)."""
    sim, a, b, data, up, pos = two_path_upload(19)
    up.kill(1)
    pos = upload_rounds(sim, data, up=up, pos=pos, room={0: 20_000, 1: 1000}, until=lambda s: b.sf.stale)
    assert not b.kernel.boundaries or b.kernel.boundaries[-1] != len(b.kernel.written), \
        "setup: b's last chunk is whole"
    up.dead.clear()
    for seg in list(b.kernel.sent_segments):
        again = b.kernel.retransmit(seg)
        if again is not None:
            b.peer.take(again)
    sim.deliver(b.peer.ack(data_ack=sim.peer.data_ack()), b)
    upload_rounds(sim, data, up=up, pos=pos, room={0: 20_000, 1: 20_000})
    assert sim.counters["segments_unmapped"] == 0 and sim.counters["segments_across_mappings"] == 0


def test_the_timer_never_asks_for_a_poll_in_the_past_while_both_subflows_are_silent():
    """Both paths black-hole (no link event, the kernel's RTOs back off for minutes): the stall
    check has nothing to decide; its deadline must not stay in the past (the event loop would spin)."""
    sim, a, b, data, up, pos = two_path_upload(20)
    up.kill(0)
    up.kill(1)
    sim.conn.app_data(bytes(50_000))
    sim.write(room={0: 20_000, 1: 20_000})
    for leg in (a, b):
        assert sim.transmit(leg), "a subflow had nothing outstanding"    # ... and it is all lost
    for k in range(1, 21):
        now = sim.clock.now + 0.1
        sim.poll(now)
        timer = sim.conn.get_timer()
        assert timer is None or timer > now, f"after poll({now:.2f}) the timer says {timer:.2f}"


def test_a_join_retry_does_not_keep_the_timer_in_the_past_once_the_connection_is_closing():
    sim = MpSim(2)
    sim.connect()
    sim.synack(sim.legs[1], mp_join=False)                   # refused: retry in 1 s
    sim.deliver(sim.peer.data(b"bye", data_ack=OUR_IDSN + 1))
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1, data_fin_dsn=PEER_IDSN + 4))
    assert sim.app_reads() == b"bye" and sim.conn.app_fin_due()
    sim.conn.app_fin_delivered()
    sim.conn.on_app_eof()                                    # both directions done; our DATA_FIN unacked
    for k in range(1, 31):
        now = sim.clock.now + 0.1
        sim.poll(now)
        timer = sim.conn.get_timer()
        assert timer is None or timer > now, f"after poll({now:.2f}) the timer says {timer:.2f}"


# ---------------------------------------------------------------- the peer's addresses (RFC 8684 3.4)

PEER_ADDR2 = IPv4Address("198.18.7.2")


def add_addr(address_id=5, addr=PEER_ADDR2, port=None, hmac=None) -> bytes:
    if hmac is None:
        hmac = crypto.add_addr_hmac(PEER_KEY, OUR_KEY, address_id, addr.packed, port)
    return w.AddAddr(address_id, addr, port, truncated_hmac=hmac).emit()


@pytest.mark.parametrize("port", [None, 8443])
def test_an_add_addr_with_a_good_hmac_is_echoed_and_joined_from_every_usable_path(port):
    sim = joined()
    a, b = sim.legs
    before = len(sim.events)
    sim.deliver(b.peer.ack(data_ack=OUR_IDSN + 1, extra=add_addr(port=port)), b)
    echoes = [c for c in sim.controls if has(parse(c.options), w.Subtype.ADD_ADDR)]
    assert len(echoes) == 1 and echoes[0].subflow is b.sf
    o = parse(echoes[0].options)
    assert o["add_addr_echo"] and o["add_addr_id"] == 5 and o["add_addr_address"] == PEER_ADDR2.packed
    assert o["add_addr_has_port"] == (port is not None) and (port is None or o["add_addr_port"] == port)
    assert sorted(opened(sim, before), key=lambda e: e.path) == [
        OpenSubflow(0, 5, PEER_ADDR2.packed, port), OpenSubflow(1, 5, PEER_ADDR2.packed, port)]
    assert sim.counters["add_addr_from_peer"] == 1
    for leg in sim.legs[2:]:
        sim.join(leg)
        assert leg.sf.remote_id == 5
    # The peer repeats it (it did not see our echo): echoed again, nothing more opened.
    before = len(sim.events)
    sim.deliver(a.peer.ack(data_ack=OUR_IDSN + 1, extra=add_addr(port=port)), a)
    assert opened(sim, before) == [] and sim.counters["add_addr_from_peer"] == 1
    assert len([c for c in sim.controls if has(parse(c.options), w.Subtype.ADD_ADDR)]) == 2


def test_an_add_addr_is_joined_only_from_usable_paths_and_within_the_subflow_limit():
    sim = MpSim(3, max_subflows=4)
    sim.table.set_usable(2, False)
    sim.connect()
    sim.join(sim.legs[1])
    before = len(sim.events)
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1, extra=add_addr()))
    assert [(e.path, e.remote_id) for e in opened(sim, before)] == [(0, 5), (1, 5)]
    sim2 = MpSim(2, max_subflows=3)
    sim2.connect()
    sim2.join(sim2.legs[1])
    before = len(sim2.events)
    sim2.deliver(sim2.peer.ack(data_ack=OUR_IDSN + 1, extra=add_addr()))
    assert len(opened(sim2, before)) == 1


def test_an_add_addr_with_a_wrong_hmac_is_counted_and_ignored():
    sim = joined()
    before = len(sim.events)
    right = crypto.add_addr_hmac(PEER_KEY, OUR_KEY, 5, PEER_ADDR2.packed, None)
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1, extra=add_addr(hmac=right ^ (1 << 40))))
    assert sim.counters["add_addr_hmac_failures"] == 1 and sim.counters["add_addr_from_peer"] == 0
    assert opened(sim, before) == []
    assert not [c for c in sim.controls if has(parse(c.options), w.Subtype.ADD_ADDR)]
    assert sorted(sim.conn.mp.remotes) == [0]


def test_remove_addr_from_the_peer_closes_its_subflows_reinjects_and_they_are_not_reopened():
    rng = random.Random(21)
    sim = joined(scheduler="roundrobin")
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1, extra=add_addr()))
    to_five = sim.legs[2:]
    for leg in to_five:
        sim.join(leg)
    data = rng.randbytes(400_000)
    up = Wire()
    pos = upload_rounds(sim, data, up=up, until=lambda s: all(leg.sf.write_ssn > 1 for leg in to_five),
                        room={i: 10_000 for i in range(4)})
    for i in (2, 3):
        up.kill(i)                                           # the address is gone: what was in flight too
    sim.deliver(sim.peer.ack(data_ack=sim.peer.data_ack(), extra=w.RemoveAddr((5,)).emit()))
    for leg in to_five:
        assert CloseSubflow(leg.sf, reset=True) in sim.events and leg.closed
        assert has(leg.rst.opts, w.Subtype.MP_TCPRST)
    assert not sim.legs[0].closed and not sim.legs[1].closed
    assert sim.counters["subflows_removed_by_peer"] == 2 and sim.counters["remove_addr_from_peer"] == 1
    before = len(sim.events)
    upload_rounds(sim, data, up=up, pos=pos, room={0: 10_000, 1: 10_000})
    sim.poll(sim.clock.advance(60.0))
    assert [e for e in opened(sim, before) if e.remote_id == 5] == []


# ---------------------------------------------------------------- the reassembly ring's bound

def test_a_subflow_far_ahead_of_a_hole_is_read_only_as_far_as_the_ring_reaches():
    ring = 16_384
    sim = joined(recv_buffer=ring)
    a, b = sim.legs
    data = random.Random(22).randbytes(60_000)
    hole = a.peer.data(data[:MSS], data_ack=OUR_IDSN + 1)   # lost for now
    for pos in range(MSS, len(data), MSS):
        sim.deliver(b.peer.data(data[pos:pos + MSS], data_ack=OUR_IDSN + 1), b)
    assert sim.app_reads() == b""
    asm = sim.conn.recv.assembler
    assert b.sf.read_ssn - 1 == ring - MSS, "read more (or less) of the fast subflow than the ring holds"
    assert sim.conn.subflow_room(b.sf) == 0 and not sim.conn.wants_subflow_read(b.sf)
    assert asm.beyond_window_bytes == 0
    sim.deliver(hole, a)
    got = bytearray()
    for _ in range(20):
        got += sim.app_reads()
        if len(got) == len(data):
            break
    assert bytes(got) == data
    assert asm.beyond_window_bytes == 0 and sim.counters["duplicate_data"] == 0


def test_what_is_data_acked_is_never_lost_with_a_subflow_whose_socket_the_ring_could_not_drain():
    """The app reads slowly: the ring is full; the peer's next bytes wait in the other subflow's
    kernel socket (acknowledged by our kernel, not readable: beyond the ring). That path goes. What
    the peer saw DATA_ACKed it never sends again (RFC 8684 3.3.2), so everything DATA_ACKed must
    still reach the app."""
    ring = 8192
    sim = joined(recv_buffer=ring)
    a, b = sim.legs
    data = random.Random(23).randbytes(ring + 4000)
    highest = fill_ring_then_overflow(sim, data, ring, a, b)
    sim.path_down(1)
    for c in sim.controls:
        highest = max(highest, data_ack_of(c) or 0)
    got = bytearray(sim.app_reads())
    # The peer (as Linux after REMOVE_ADDR) sends again on a everything above the highest DATA_ACK.
    resend_from = highest - (PEER_IDSN + 1)
    for pos in range(resend_from, len(data), MSS):
        piece = data[pos:pos + MSS]
        sim.deliver(a.peer.data(piece, data_ack=OUR_IDSN + 1, map_dsn=PEER_IDSN + 1 + pos), a)
    got += sim.app_reads()
    assert len(got) == len(data), (f"the app got {len(got)} of {len(data)} bytes; "
                                   f"DATA_ACKed up to {resend_from}")
    assert bytes(got) == data
