"""Each scheduler's choice, given what the subflows' TCP_INFO says (`Subflow.info`), and the send
path's part around it: backups, reinjection, redundant cursors. Subflows here are established
ones with a send path of their own; no peer is needed for a choice."""

import pytest

from mptun.core import scheduler as sched
from mptun.core.mib import Counters
from mptun.core.send import CHUNK_MAX, SendPath
from mptun.core.subflow import Subflow, SubflowKind, SubflowState

START = 1000
MSS = 1400


def subflow(srtt: float, *, cwnd: int = 10, in_flight: int = 0, notsent: int = 0, rttvar: float | None = None,
            path: int = 0, backup: bool = False) -> Subflow:
    sf = Subflow(None, path, 61440 + path, path + 1, SubflowKind.JOIN, backup=backup)
    sf.state = SubflowState.ESTABLISHED
    sf.info(srtt, srtt / 4 if rttvar is None else rttvar, cwnd, in_flight, notsent, MSS)
    return sf


def send_path(name: str, queued: int, window: int = 1 << 30) -> SendPath:
    send = SendPath(START, 64 << 20, sched.create(name), Counters())
    send.start(False, window)
    send.append(bytes(queued))
    return send


def pick(send: SendPath, *subs: Subflow) -> Subflow | None:
    return send.scheduler.pick(send, list(subs), list(subs))


def drain(send: SendPath, subs: list[Subflow], max_writes: int = 10_000) -> list[tuple[Subflow, int, int]]:
    """Every chunk next_write hands out, written whole and sent at once by the kernel (TCP_INFO
    then says nothing is queued unsent): (subflow, dsn, length)."""
    out = []
    for _ in range(max_writes):
        got = send.next_write(subs, False)
        if got is None:
            return out
        sf, data = got
        dsn = sf.chunk[0]
        send.written(sf, len(data))
        sf.info(sf.srtt, sf.rttvar, sf.cwnd, sf.in_flight, 0, sf.mss)
        out.append((sf, dsn, len(data)))
    pytest.fail("next_write never ran dry")


# ---------------------------------------------------------------- the registry

def test_the_registry_names_every_scheduler_and_lowrtt_is_the_default():
    assert set(sched.SCHEDULERS) == {"lowrtt", "roundrobin", "redundant", "blest", "first"}
    assert sched.DEFAULT == "lowrtt"
    for name in sched.SCHEDULERS:
        assert sched.create(name).name == name
    assert sched.create("roundrobin") is not sched.create("roundrobin"), "one scheduler's state per connection"
    with pytest.raises(ValueError, match="blest.*first.*lowrtt.*redundant.*roundrobin"):
        sched.create("fastest")


# ---------------------------------------------------------------- lowrtt (the default)

def test_lowrtt_picks_the_lowest_rtt_among_subflows_with_congestion_window_room():
    send = send_path("lowrtt", 100_000)
    slow, fast_full, mid = subflow(0.050), subflow(0.010, cwnd=10, in_flight=10), subflow(0.030)
    assert pick(send, slow, fast_full, mid) is mid
    fast_full.info(0.010, 0.002, 10, 9, 0, MSS)                # an ACK opened its window
    assert pick(send, slow, fast_full, mid) is fast_full


def test_lowrtt_without_any_window_room_takes_the_lowest_rtt_so_the_kernel_sends_at_the_next_ack():
    send = send_path("lowrtt", 100_000)
    a, b = subflow(0.040, in_flight=10), subflow(0.015, in_flight=12, cwnd=12)
    assert pick(send, a, b) is b


def test_lowrtt_leaves_out_subflows_with_much_queued_unsent_and_then_waits():
    send = send_path("lowrtt", 100_000)
    fast, slow = subflow(0.010, notsent=sched.READY_NOTSENT), subflow(0.060)
    assert pick(send, fast, slow) is slow
    slow.info(0.060, 0.015, 10, 0, sched.READY_NOTSENT, MSS)
    assert pick(send, fast, slow) is None, "data committed to a socket that holds plenty unsent already"


def test_lowrtt_with_one_working_subflow_fills_it():
    send = send_path("lowrtt", 100_000)
    only = subflow(0.050, in_flight=10, notsent=10 * sched.READY_NOTSENT)
    assert send.scheduler.pick(send, [only], [only]) is only
    assert send.scheduler.pick(send, [], [only]) is None


# ---------------------------------------------------------------- roundrobin, first

def test_roundrobin_alternates_between_the_subflows_that_can_take_a_chunk():
    send = send_path("roundrobin", 10 * CHUNK_MAX)
    a, b = subflow(0.010), subflow(0.090)
    chunks = drain(send, [a, b])
    order = [sf for sf, _, _ in chunks]
    assert len(order) == 10 and order.count(a) == order.count(b) == 5
    assert all(x is not y for x, y in zip(order, order[1:])), "two chunks in a row on one subflow"


def test_first_fills_the_first_usable_subflow():
    send = send_path("first", 100_000)
    a, b = subflow(0.090), subflow(0.010)
    assert pick(send, a, b) is a
    a.write_blocked = True
    assert send.next_write([a, b], False)[0] is b


# ---------------------------------------------------------------- redundant

def test_redundant_puts_every_chunk_on_every_working_subflow():
    send = send_path("redundant", 5 * CHUNK_MAX + 123)
    a, b = subflow(0.010), subflow(0.080)
    chunks = drain(send, [a, b])
    for sf in (a, b):
        covered = sorted((dsn, dsn + n) for s, dsn, n in chunks if s is sf)
        at = START
        for lo, hi in covered:
            assert lo == at, "a gap, or a byte twice on one subflow"
            at = hi
        assert at == START + 5 * CHUNK_MAX + 123
    # Both subflows mapped every byte once: all of it is written, and the DATA_FIN may follow.
    assert send.all_written([a, b])


def test_redundant_leaves_backups_alone_while_a_regular_subflow_works():
    send = send_path("redundant", 3 * CHUNK_MAX)
    a, b, backup = subflow(0.010), subflow(0.030, path=1), subflow(0.005, path=2, backup=True)
    chunks = drain(send, [a, b, backup])
    assert {sf for sf, _, _ in chunks} == {a, b}


# ---------------------------------------------------------------- blest (ECF)

def test_blest_takes_the_fast_subflow_when_its_window_has_room():
    send = send_path("blest", 50_000)
    fast, slow = subflow(0.010), subflow(0.200)
    assert pick(send, fast, slow) is fast


def test_blest_waits_for_the_fast_subflow_when_the_slow_one_would_deliver_later():
    # Fast: 10 ms, its window full; slow: 200 ms, free. 50 KB to send: about 4 fast round trips
    # (40 ms) against one slow one (200 ms): wait for the fast path.
    send = send_path("blest", 50_000)
    fast, slow = subflow(0.010, in_flight=10), subflow(0.200)
    assert pick(send, fast, slow) is fast, "queued behind the fast path's window"
    fast.write_blocked = True
    assert send.scheduler.pick(send, [slow], [fast, slow]) is None, "sent on the slow path instead of waiting"


def test_blest_waits_for_the_fast_subflow_even_for_a_small_send():
    # 2 KB: the fast path delivers it within ~15 ms (its window opens within one 10 ms RTT); the
    # slow one takes at least half of its 200 ms RTT, whatever the amount.
    send = send_path("blest", 2000)
    fast, slow = subflow(0.010, in_flight=10), subflow(0.200)
    fast.write_blocked = True
    assert send.scheduler.pick(send, [slow], [fast, slow]) is None, \
        "2 KB sent on the 200 ms path while the 10 ms one frees up within 10 ms"


def test_blest_uses_the_slow_subflow_when_there_is_more_than_the_fast_one_can_carry_in_time():
    send = send_path("blest", 4_000_000)
    fast, slow = subflow(0.010, in_flight=10), subflow(0.200)
    fast.write_blocked = True
    assert send.scheduler.pick(send, [slow], [fast, slow]) is slow


# ---------------------------------------------------------------- the send path around the scheduler

def test_backups_carry_data_only_while_no_regular_subflow_works():
    send = send_path("lowrtt", 3 * CHUNK_MAX)
    regular, backup = subflow(0.100), subflow(0.005, path=1, backup=True)
    assert {sf for sf, _, _ in drain(send, [regular, backup])} == {regular}
    send.append(bytes(CHUNK_MAX))
    regular.stale = True                                     # stalled: not working
    assert {sf for sf, _, _ in drain(send, [regular, backup])} == {backup}


def test_what_a_dead_subflow_carried_unacknowledged_goes_out_again_first_on_the_others():
    send = send_path("roundrobin", 4 * CHUNK_MAX)
    a, b = subflow(0.010), subflow(0.010, path=1)
    chunks = drain(send, [a, b])
    on_b = sorted((dsn, n) for sf, dsn, n in chunks if sf is b)
    b.close()
    assert send.reinject_from(b, closing=True) == sum(n for _, n in on_b)
    send.append(bytes(1000))
    again = drain(send, [a, b])
    assert [(dsn, n) for _, dsn, n in again[:len(on_b)]] == on_b and all(sf is a for sf, _, _ in again)
    assert again[-1][1:] == (START + 4 * CHUNK_MAX, 1000)
    assert send.counters["reinjected_bytes"] == sum(n for _, n in on_b)


def test_reinjection_skips_what_the_peer_data_acked_meanwhile():
    send = send_path("roundrobin", 2 * CHUNK_MAX)
    a, b = subflow(0.010), subflow(0.010, path=1)
    chunks = drain(send, [a, b])
    (b_dsn, b_len), = [(dsn, n) for sf, dsn, n in chunks if sf is b]
    b.close()
    send.reinject_from(b, closing=True)
    assert send.data_ack(b_dsn + 1000, 1 << 20)
    again = drain(send, [a, b])
    assert [(dsn, n) for _, dsn, n in again] == [(b_dsn + 1000, b_len - 1000)]
