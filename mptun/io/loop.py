"""EventLoop: epoll over file descriptors plus a timer heap fed by core's deadlines; nothing else.

`watch(fd, events, handler)` sets what one fd is watched for: READ, WRITE, and ERROR (stay
registered with no interest, to hear of a RST: epoll always reports errors and hangups); 0: not at
all. Handlers get the ready events, ERROR included. `call_at(key, when, callback)` keeps one
deadline per key (None cancels it): a connection re-arms its key with `Connection.get_timer()` after
every input, so no tick scans every connection. A handler's exception is logged and counted.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import signal
import socket
import time
from collections.abc import Callable, Hashable

from mptun.core.mib import Counters

log = logging.getLogger("mptun")

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
ERROR = select.EPOLLERR           # asked for: registered even without READ or WRITE; reported: ERR or HUP
_HANGUP = select.EPOLLERR | select.EPOLLHUP
# The longest the loop sleeps without a deadline (signals wake it at once: wake_on_signals).
MAX_WAIT = 1.0


class Timers:
    """One live deadline per key; superseded heap entries are skipped when they surface."""

    def __init__(self):
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[float, Callable[[float], None]]] = {}
        self._seq = itertools.count()

    def set(self, key: Hashable, when: float | None, callback: Callable[[float], None]) -> None:
        if when is None:
            self._live.pop(key, None)
            return
        old = self._live.get(key)
        self._live[key] = (when, callback)
        if old is None or old[0] != when:
            heapq.heappush(self._heap, (when, next(self._seq), key))

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, key = heap[0]
            live = self._live.get(key)
            if live is not None and live[0] == when:
                return when
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[Callable[[float], None]]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            live = self._live.get(key)
            if live is not None and live[0] == when:
                del self._live[key]
                due.append(live[1])
        return due


class EventLoop:
    def __init__(self, counters: Counters):
        self.counters = counters
        self._ep = select.epoll()
        self._watched: dict[int, tuple[int, Callable[[int], None]]] = {}
        self._paused: dict[int, tuple[int, Callable[[int], None]]] = {}
        self.timers = Timers()
        self.stopping = False
        self.after_io: Callable[[], None] = lambda: None

    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        if fd in self._paused:
            self._paused[fd] = (events, handler)
            return
        old = self._watched.get(fd)
        if events == 0:
            if old is not None:
                self._ep.unregister(fd)
                del self._watched[fd]
            return
        mask = events & (READ | WRITE)
        if old is None:
            self._ep.register(fd, mask)
        elif old[0] != events:
            self._ep.modify(fd, mask)
        self._watched[fd] = (events, handler)

    def forget(self, fd: int) -> None:
        """The fd is about to be closed: stop watching it."""
        self._paused.pop(fd, None)
        if self._watched.pop(fd, None) is not None:
            self._ep.unregister(fd)

    def pause(self, fd: int, seconds: float, handler: Callable[[int], None]) -> None:
        """Stop watching fd for a while (accept() failing at the fd limit would otherwise spin)."""
        if fd in self._paused:
            return
        events = self._watched.get(fd, (0, handler))[0]
        self.watch(fd, 0, handler)
        self._paused[fd] = (events, handler)
        self.call_at(("resume", fd), time.monotonic() + seconds, lambda now: self._resume(fd))

    def _resume(self, fd: int) -> None:
        events, handler = self._paused.pop(fd, (0, None))
        if handler is not None:
            self.watch(fd, events, handler)

    def call_at(self, key: Hashable, when: float | None, callback: Callable[[float], None]) -> None:
        self.timers.set(key, when, callback)

    def cancel(self, *keys: Hashable) -> None:
        for key in keys:
            self.timers.set(key, None, _noop)

    def stop(self) -> None:
        self.stopping = True

    def wake_on_signals(self) -> None:
        """A signal's handler (which may call stop) runs, then the loop wakes up and sees it at once."""
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wakeup = (r, w)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self.watch(r.fileno(), READ, lambda ev: self._drain_wakeup())

    def _drain_wakeup(self) -> None:
        try:
            while self._wakeup[0].recv(512):
                pass
        except BlockingIOError:
            pass

    def run(self) -> None:
        while not self.stopping:
            self.run_once()

    def run_once(self) -> None:
        deadline = self.timers.next_deadline()
        wait = MAX_WAIT if deadline is None else min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
        for fd, ev in self._ep.poll(wait):
            watched = self._watched.get(fd)
            if watched is None:
                continue        # forgotten by an earlier handler of this round
            if ev & _HANGUP:
                # As selectors does: an error or hangup makes the fd ready for what it waits for
                # (the read or write then says what happened), and ERROR says it happened.
                ev = (ev & ~_HANGUP) | ERROR | (watched[0] & (READ | WRITE))
            self._guarded(watched[1], ev)
        self._guarded(self.after_io)
        if self.timers.next_deadline() is not None:
            now = time.monotonic()
            for callback in self.timers.pop_due(now):
                self._guarded(callback, now)

    def _guarded(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("in the event loop")
            self.counters["internal_errors"] += 1


def _noop(now: float) -> None:
    pass
