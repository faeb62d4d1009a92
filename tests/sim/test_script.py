"""Core read as a script between our kernel and a scripted peer, on a fake clock (smoltcp style):
"at t the peer sends X; mptun must answer Y". Loss, reordering and duplicates are the script's."""

import pytest

from mptun.core.connection import ConnState, Mode
from mptun.core.events import Closed, OpenSubflow, ReleaseAppSyn
from mptun.wire import crypto
from mptun.wire import mptcp as w

from tests.sim.harness import OUR_KEY, PEER_IDSN, PEER_KEY, Sim, parse

OUR_IDSN = crypto.key_idsn(OUR_KEY)


def dss_of(seg) -> dict:
    """The parsed options of one of our segments (or a ControlSegment), which must carry a DSS."""
    o = seg.opts if hasattr(seg, "opts") else parse(seg.options)
    assert o["suboptions"] & (1 << w.Subtype.DSS), f"no DSS on {seg}"
    return o


# ---------------------------------------------------------------- the handshake

def test_mp_capable_handshake_then_the_first_data_carries_both_keys():
    sim = Sim()
    assert sim.events == [OpenSubflow(path=0)]    # the app's SYN: the initial subflow on the first path
    # t=0: our kernel's SYN must carry MP_CAPABLE v1 with H (RFC 8684 3.1)
    syn = sim.kernel.syn()
    assert syn.opts["mpc_form"] == w.MpcForm.SYN and syn.opts["mpc_version"] == 1
    assert syn.opts["mpc_flags"] == w.MPC_HMAC_SHA256
    # t=10 ms: the peer's SYN/ACK carries its key; our third ACK must echo both keys
    sim.clock.advance(0.010)
    sa = sim.peer.synack(syn)
    assert sim.conn.incoming(sim.sf, sa.seq, sa.ack, sa.flags, 0, sa.window, parse(sa.options))
    assert sim.kernel.receive(sa).opts["mpc_form"] == w.MpcForm.ACK
    assert sim.conn.incoming(sim.sf, sa.seq, sa.ack, sa.flags, 0, sa.window, parse(sa.options))   # a duplicate
    assert sim.conn.mode == Mode.MPTCP and sim.conn.peer_key == PEER_KEY
    sim.conn.subflow_connected(sim.sf, sim.clock.now)
    assert sim.conn.events() == [ReleaseAppSyn()]
    assert sim.conn.state == ConnState.ESTABLISHED
    # t=11 ms: the app's request goes out as MP_CAPABLE with data: keys and the data-level length
    sim.conn.on_app_accepted()
    sim.conn.app_data(b"GET / HTTP/1.1\r\n\r\n")
    sim.kernel.write_from_core()
    (first,) = sim.kernel.segments()
    o = first.opts
    assert o["mpc_form"] == w.MpcForm.ACK_DATA and o["mpc_data_len"] == 18
    assert (o["mpc_sender_key"], o["mpc_receiver_key"]) == (OUR_KEY, PEER_KEY)
    sim.peer.take(first)
    assert sim.peer.stream(OUR_IDSN + 1) == b"GET / HTTP/1.1\r\n\r\n"
    # t=30 ms: the peer's first DSS acknowledges it; from then on every segment carries DSS
    reply = sim.peer.data(b"HTTP/1.1 200 OK\r\n", data_ack=OUR_IDSN + 19)
    ack = sim.deliver(reply)
    assert dss_of(ack)["data_ack"] == PEER_IDSN + 1 + 17
    assert sim.conn.snd_una == OUR_IDSN + 19
    assert sim.app_reads() == b"HTTP/1.1 200 OK\r\n"


def test_a_synack_without_mp_capable_falls_back_and_nothing_is_added_or_stripped():
    sim = Sim()
    sim.handshake(mp_capable=False)
    assert sim.conn.mode == Mode.FALLBACK and sim.counters["fallback_no_mp_capable"] == 1
    sim.conn.app_data(b"x" * 3000)
    sim.kernel.write_from_core()
    segs = sim.kernel.segments()
    assert [len(s.payload) for s in segs] == [1400, 1400, 200]
    assert all(s.opts["mptcp_count"] == 0 for s in segs)


# ---------------------------------------------------------------- download: loss, reordering, duplicates

def test_a_lost_segment_holds_the_data_ack_until_its_retransmission_arrives():
    sim = Sim()
    sim.handshake()
    data = bytes(range(256)) * 20            # 5120 bytes in four segments, one mapping each
    segs = [sim.peer.data(data[i:i + 1400], data_ack=OUR_IDSN + 1) for i in range(0, len(data), 1400)]
    # segment 1 is lost on the way; 2 and 3 arrive (our kernel queues them out of order)
    acks = [sim.deliver(segs[0]), sim.deliver(segs[2]), sim.deliver(segs[3])]
    assert [dss_of(a)["data_ack"] for a in acks] == [PEER_IDSN + 1 + 1400] * 3
    assert sim.app_reads() == data[:1400]
    # the peer retransmits segment 1: the hole closes and the DATA_ACK covers everything at once
    ack = sim.deliver(segs[1])
    assert dss_of(ack)["data_ack"] == PEER_IDSN + 1 + len(data)
    assert sim.app_reads() == data[1400:]


def test_reordered_segments_with_one_large_mapping_are_placed_by_dsn():
    """Linux maps a whole send (up to 64 KB) on every segment of it; arrival order must not matter."""
    sim = Sim()
    sim.handshake()
    data = bytes(range(251)) * 40            # 10040 bytes, one mapping over eight segments
    dsn0, ssn0 = PEER_IDSN + 1, 1
    segs = []
    for i in range(0, len(data), 1400):
        segs.append(sim.peer.data(data[i:i + 1400], data_ack=OUR_IDSN + 1, map_dsn=dsn0, map_ssn=ssn0,
                                  map_len=len(data)))
    for k in [3, 0, 7, 1, 5, 2, 6, 4]:
        sim.deliver(segs[k])
    assert sim.app_reads() == data
    assert sim.counters["dss_conflicts"] == 0


def test_duplicated_segments_give_no_duplicate_bytes_and_no_data_ack_beyond_what_arrived():
    sim = Sim()
    sim.handshake()
    a = sim.peer.data(b"a" * 1000, data_ack=OUR_IDSN + 1)
    b = sim.peer.data(b"b" * 1000, data_ack=OUR_IDSN + 1)
    ack1 = sim.deliver(a)
    ack2 = sim.deliver(a)                    # the network duplicated it
    assert dss_of(ack1)["data_ack"] == dss_of(ack2)["data_ack"] == PEER_IDSN + 1001
    sim.deliver(b)
    sim.deliver(b)
    assert sim.app_reads() == b"a" * 1000 + b"b" * 1000
    assert sim.app_reads() == b""


def test_the_peers_reinjection_of_read_data_on_another_mapping_is_discarded():
    """After a path dies the peer resends everything above the DATA_ACK (no data-level SACK);
    bytes already held are kept as first received, never overwritten."""
    sim = Sim()
    sim.handshake()
    sim.deliver(sim.peer.data(b"first copy", data_ack=OUR_IDSN + 1))
    assert sim.app_reads() == b"first copy"
    again = sim.peer.data(b"XXXXXXXXXX", data_ack=OUR_IDSN + 1, map_dsn=PEER_IDSN + 1)   # same DSNs
    sim.deliver(again)
    sim.deliver(sim.peer.data(b" and more", data_ack=OUR_IDSN + 1, map_dsn=PEER_IDSN + 11))
    assert sim.app_reads() == b" and more"


# ---------------------------------------------------------------- upload: retransmissions, reordered DATA_ACKs

def test_retransmissions_carry_the_same_mapping_and_old_data_acks_do_not_go_backwards():
    sim = Sim()
    sim.handshake()
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1))          # the peer's first DSS: plain DSS from now on
    data = bytes(range(200)) * 50                             # 10000 bytes
    sim.conn.app_data(data)
    sim.kernel.write_from_core()
    segs = sim.kernel.segments()
    first = {(s.seq, dss_of(s)["dsn"], dss_of(s)["subflow_seq"], dss_of(s)["data_len"]) for s in segs}
    # segment 2 is lost; the kernel retransmits it: the same mapping
    again = sim.kernel.retransmit(segs[2])
    assert (again.seq, dss_of(again)["dsn"], dss_of(again)["subflow_seq"], dss_of(again)["data_len"]) in first
    for s in segs[:2] + segs[3:] + [again]:
        sim.peer.take(s)
    assert sim.peer.stream(OUR_IDSN + 1) == data
    # DATA_ACKs arrive out of order: the newer first, then an older one
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1 + 8000))
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1 + 3000))
    assert sim.conn.snd_una == OUR_IDSN + 1 + 8000
    assert len(sim.conn.send.buf) == 2000


def test_the_data_level_window_never_shrinks_when_window_updates_are_reordered():
    sim = Sim()
    sim.handshake(window=100)        # SYN/ACK window: 100 bytes, unscaled
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1, window=10))       # 10 << 7 = 1280
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1, window=4))        # older, smaller: ignored
    sim.conn.app_data(bytes(5000))
    assert sim.kernel.write_from_core() == 1280     # RFC 8684 3.3.4: DATA_ACK + window, no more


# ---------------------------------------------------------------- closing

def test_our_data_fin_is_retransmitted_with_backoff_until_data_acked_lost_acks_included():
    sim = Sim()
    sim.handshake()
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1))
    sim.conn.app_data(b"bye")
    sim.kernel.write_from_core()
    (seg,) = sim.kernel.segments()
    sim.peer.take(seg)
    sim.conn.on_app_eof()
    (fin,) = sim.poll(0.0)
    o = dss_of(fin)
    assert o["dss_flags"] & w.DSS_DATA_FIN and (o["dsn"], o["subflow_seq"], o["data_len"]) == (OUR_IDSN + 4, 0, 1)
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 4))                  # the data, not the DATA_FIN
    assert sim.poll(0.1) == []
    assert len(sim.poll(0.2)) == 1                                     # 200 ms after all data was acked
    assert sim.poll(0.5) == [] and len(sim.poll(0.61)) == 1          # then 400 ms
    # the DATA_ACK of the DATA_FIN arrives twice (duplicated); the app leg already got its FIN
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 5, data_fin_dsn=PEER_IDSN + 1))
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 5, data_fin_dsn=PEER_IDSN + 1))
    assert sim.conn.send.fin_acked
    assert sim.conn.app_fin_due()
    sim.conn.app_fin_delivered()
    sim.poll(0.7)
    assert Closed(reset=False, reason=None) in sim.events and sim.conn.state == ConnState.CLOSED


def test_the_peers_data_fin_overtaking_its_last_data_reaches_the_app_after_the_data():
    sim = Sim()
    sim.handshake()
    last = sim.peer.data(b"tail", data_ack=OUR_IDSN + 1)
    fin = sim.peer.ack(data_ack=OUR_IDSN + 1, data_fin_dsn=PEER_IDSN + 5)
    sim.deliver(fin)                                                   # reordered: the DATA_FIN first
    assert not sim.conn.app_fin_due()
    ack = sim.deliver(last)
    assert dss_of(ack)["data_ack"] == PEER_IDSN + 5                    # the data, not yet the DATA_FIN
    assert sim.app_reads() == b"tail"
    assert sim.conn.app_fin_due()


def test_the_peers_data_fin_is_data_acked_only_once_the_app_has_read_up_to_it():
    """Linux sends DATA_FIN on a pure ACK; our kernel never ACKs a pure ACK, so mptun must, with
    a crafted ACK: once the app has every byte before it and its FIN. Until then the peer's
    connection stays open, so an app that exits with data unread can still abort it."""
    sim = Sim()
    sim.handshake()
    sim.deliver(sim.peer.data(b"tail", data_ack=OUR_IDSN + 1))
    assert sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1, data_fin_dsn=PEER_IDSN + 5)) is None
    assert sim.controls == []
    assert sim.poll(1.0) == []                        # the app has not read "tail" yet
    assert sim.app_reads() == b"tail" and sim.conn.app_fin_due()
    sim.conn.app_fin_delivered()                      # the edge shut the app's leg: its FIN
    (ack,) = sim.poll(1.1)
    assert dss_of(ack)["data_ack"] == PEER_IDSN + 6
    assert ack.seq == sim.kernel.snd_nxt and ack.ack == sim.kernel.rcv_nxt    # copies the kernel's numbers
    assert sim.poll(1.2) == []                        # once


def test_a_data_fin_that_is_never_acknowledged_gives_up_and_resets():
    sim = Sim()
    sim.handshake()
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1))
    sim.conn.on_app_eof()
    sent = 0
    t = 0.0
    while sim.conn.state != ConnState.ABORTED and t < 120:
        sent += len(sim.poll(t))
        t += 0.1
    assert sim.conn.error == "data_fin_timeouts"
    assert sent == 12 and Closed(reset=True, reason="data_fin_timeouts") in sim.events


@pytest.mark.parametrize("checksums", [False, True])
def test_mp_fastclose_from_the_peer_resets_and_a_reset_of_ours_carries_its_key(checksums):
    sim = Sim(checksums=checksums)
    sim.handshake()
    sim.conn.app_reset(sim.clock.now)
    rst = sim.kernel.out(sim.kernel.snd_nxt, 0x04 | 0x10)
    assert rst.opts["fastclose_receiver_key"] == PEER_KEY       # RFC 8684 3.5
    assert Closed(reset=True, reason="resets_from_app") in sim.drain_events()


# ---------------------------------------------------------------- the app aborts (RFC 8684 3.5)

def test_an_app_reset_with_nothing_pending_is_an_mp_fastclose_at_once():
    sim = Sim()
    sim.handshake()
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1))
    sim.conn.app_reset(sim.clock.now)
    assert Closed(reset=True, reason="resets_from_app") in sim.drain_events()


def test_what_the_app_wrote_before_its_reset_goes_out_first_then_mp_fastclose():
    sim = Sim()
    sim.handshake()
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1))
    sim.conn.app_data(b"last words" * 100)
    sim.conn.app_reset(sim.clock.now)              # read off the app's leg just before its RST
    assert not any(isinstance(e, Closed) for e in sim.drain_events())
    assert not sim.conn.wants_app_read()
    sim.kernel.write_from_core()                   # the edge still writes what core holds
    sim.poll()
    assert not any(isinstance(e, Closed) for e in sim.events), "MP_FASTCLOSE before the bytes went out"
    segs = sim.kernel.segments()                   # our kernel transmits them
    for s in segs:
        sim.peer.take(s)
    assert sim.peer.stream(OUR_IDSN + 1) == b"last words" * 100
    sim.poll(sim.clock.advance(0.001))
    assert Closed(reset=True, reason="resets_from_app") in sim.events
    rst = sim.kernel.out(sim.kernel.snd_nxt, 0x04 | 0x10)
    assert rst.opts["fastclose_receiver_key"] == PEER_KEY


def test_after_the_apps_reset_nothing_more_is_data_acked():
    sim = Sim()
    sim.handshake()
    sim.deliver(sim.peer.data(b"read", data_ack=OUR_IDSN + 1))
    sim.conn.app_data(b"x" * 5000)
    sim.conn.app_reset(sim.clock.now)
    ack = sim.deliver(sim.peer.data(b"never read by anyone", data_ack=OUR_IDSN + 1))
    assert dss_of(ack)["data_ack"] == PEER_IDSN + 1 + 4      # the app can no longer read the rest


def test_the_flush_before_mp_fastclose_is_bounded_when_the_window_is_closed():
    sim = Sim()
    sim.handshake(window=0)
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1, window=0))
    sim.conn.app_data(b"stuck" * 100)
    sim.conn.app_reset(0.0)
    assert sim.kernel.write_from_core() == 0                 # nothing fits the peer's window
    sim.poll(0.4)
    assert not any(isinstance(e, Closed) for e in sim.events)
    assert sim.conn.get_timer() == pytest.approx(0.5)
    sim.poll(0.5)
    assert Closed(reset=True, reason="resets_from_app") in sim.events
