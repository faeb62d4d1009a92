"""The edge's event loop: one deadline per key in a heap, fds watched for what they wait for, handler
bugs counted, not fatal, signals waking it. Time is only ordered here, never measured."""

import signal
import socket
import time

from mptun.core.mib import Counters
from mptun.io.loop import READ, WRITE, EventLoop, Timers


def test_timers_fire_in_deadline_order_and_a_key_keeps_only_its_latest_deadline():
    t = Timers()
    fired = []
    t.set("a", 3.0, lambda now: fired.append("a"))
    t.set("b", 1.0, lambda now: fired.append("b"))
    t.set("a", 2.0, lambda now: fired.append("a2"))     # re-armed earlier: the 3.0 entry is stale
    t.set("c", 1.5, lambda now: fired.append("c"))
    t.set("c", None, lambda now: fired.append("never"))  # cancelled
    assert t.next_deadline() == 1.0
    for cb in t.pop_due(2.5):
        cb(2.5)
    assert fired == ["b", "a2"]
    assert t.next_deadline() is None and t.pop_due(10.0) == []


def test_watch_modify_forget_and_a_failing_handler_is_counted():
    counters = Counters()
    loop = EventLoop(counters)
    a, b = socket.socketpair()
    seen = []
    loop.watch(a.fileno(), READ, lambda ev: seen.append(ev))
    b.send(b"x")
    loop.run_once()
    assert seen == [READ]
    loop.watch(a.fileno(), READ | WRITE, lambda ev: (_ for _ in ()).throw(RuntimeError("bug")))
    loop.run_once()
    assert counters["internal_errors"] == 1
    loop.forget(a.fileno())
    loop.run_once()
    assert counters["internal_errors"] == 1
    a.close()
    b.close()


def test_a_paused_fd_is_not_watched_until_its_pause_ends():
    loop = EventLoop(Counters())
    a, b = socket.socketpair()
    seen = []
    handler = lambda ev: seen.append(ev)   # noqa: E731
    loop.watch(a.fileno(), READ, handler)
    b.send(b"x")
    loop.pause(a.fileno(), 0.05, handler)
    loop.run_once()
    assert seen == []
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        loop.run_once()
    assert seen == [READ]
    a.close()
    b.close()


def test_a_signal_wakes_the_loop_and_its_handler_can_stop_it():
    loop = EventLoop(Counters())
    loop.wake_on_signals()
    woken = []
    drain = loop._drain_wakeup
    loop.watch(loop._wakeup[0].fileno(), READ, lambda ev: (woken.append(ev), drain()))
    old = signal.signal(signal.SIGALRM, lambda *a: loop.stop())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)     # arrives while the loop waits in epoll
        loop.run()
        assert loop.stopping and woken == [READ], "the signal did not wake the loop"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        signal.set_wakeup_fd(-1)
