"""Schedulers: which subflow gets the next chunk of the data stream. A protocol and a registry by name.

The send path asks `pick(send, candidates, working)` whenever data may go out (new data within the
peer's data-level window, or a range to reinject). `working` are the subflows allowed to carry data
now (established, making progress; backups only while no regular subflow works), `candidates` the
ones of them that can take a chunk at once (socket not full, no chunk half written), in the order
they were opened. Their `srtt`, `cwnd`, `in_flight`, `notsent` and `mss` come from the kernel
socket's TCP_INFO. The send path cuts the chunk (one DSS mapping, < 64 KB) and records it; data
stays in the send buffer until DATA_ACKed whichever subflow carried it.
`mptun up --scheduler NAME` chooses one; `lowrtt` is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mptun.core.send import SendPath
    from mptun.core.subflow import Subflow

# A subflow gets a new chunk only while its kernel socket holds less than this unsent: decisions are
# made late (when a path slows down, what is not yet in its socket can still go another way), and
# little data is stranded in a socket whose path dies.
READY_NOTSENT = 128 * 1024


class Scheduler(Protocol):
    name: str
    redundant: bool     # every chunk on every working subflow (the send path does the rest)

    def pick(self, send: SendPath, candidates: Sequence[Subflow], working: Sequence[Subflow]) -> Subflow | None:
        """The subflow for the next chunk, or None to send nothing now (a peer ACK wakes us again)."""


def _ready(s: Subflow) -> bool:
    return s.notsent < READY_NOTSENT


class LowestRtt:
    """Each chunk to the subflow that will deliver it first: the lowest smoothed RTT among those with
    congestion-window room (as Linux's default scheduler); when none has room, the lowest RTT among
    those whose socket has little queued, so the kernel can send the moment an ACK opens the window."""

    name = "lowrtt"
    redundant = False

    def pick(self, send: SendPath, candidates: Sequence[Subflow], working: Sequence[Subflow]) -> Subflow | None:
        if len(working) == 1:
            return candidates[0] if candidates else None    # one path: fill it
        best = None
        best_key = None
        for s in candidates:
            if not _ready(s):
                continue
            key = (not s.cwnd_room, s.srtt)
            if best_key is None or key < best_key:
                best, best_key = s, key
        return best


class RoundRobin:
    """Chunks in turn to each subflow that can take one."""

    name = "roundrobin"
    redundant = False

    def __init__(self):
        self._turn = 0

    def pick(self, send: SendPath, candidates: Sequence[Subflow], working: Sequence[Subflow]) -> Subflow | None:
        ready = [s for s in candidates if _ready(s)] if len(working) > 1 else list(candidates)
        if not ready:
            return None
        self._turn += 1
        return ready[self._turn % len(ready)]


class Redundant:
    """Every chunk on every working subflow: the lowest latency any path offers, and no gap at all
    when one dies (its copy is on the others already). Costs the bandwidth of all but one path."""

    name = "redundant"
    redundant = True

    def pick(self, send: SendPath, candidates: Sequence[Subflow], working: Sequence[Subflow]) -> Subflow | None:
        ready = [s for s in candidates if _ready(s)] if len(working) > 1 else list(candidates)
        return min(ready, key=lambda s: s.srtt) if ready else None


class Blest:
    """For paths with very different RTTs (ECF, Lim et al., CoNEXT 2017; the same aim as BLEST): the
    fastest subflow first; when its window is full, the slower one gets a chunk only if sending there
    finishes sooner than waiting for the fast one, so the slow path never holds back the fast one
    (head-of-line blocking at the receiver)."""

    name = "blest"
    redundant = False
    BETA = 0.25     # hysteresis: once waiting, keep waiting unless the slow path is clearly better

    def __init__(self):
        self._waiting = False

    def pick(self, send: SendPath, candidates: Sequence[Subflow], working: Sequence[Subflow]) -> Subflow | None:
        if len(working) == 1:
            return candidates[0] if candidates else None
        fast = min(working, key=lambda s: s.srtt)
        fast_ok = fast in candidates and _ready(fast)
        if fast_ok and fast.cwnd_room:
            self._waiting = False
            return fast
        slow = [s for s in candidates if s is not fast and _ready(s) and s.cwnd_room]
        if not slow:
            return fast if fast_ok else None
        s = min(slow, key=lambda x: x.srtt)
        rtt_f, rtt_s = max(fast.srtt, 1e-4), max(s.srtt, 1e-4)
        delta = max(fast.rttvar, s.rttvar)
        k = send.sendable() + fast.notsent
        n = 1 + k / (max(1, fast.cwnd) * fast.mss)
        beta = self.BETA if self._waiting else 0.0
        # The slow path delivers in no less than one of its RTTs, however little is sent.
        slow_time = max(1.0, k / (max(1, s.cwnd) * s.mss)) * rtt_s
        if n * rtt_f < (1 + beta) * (rtt_s + delta) and slow_time >= 2 * rtt_f + delta:
            self._waiting = True
            return fast if fast_ok else None
        self._waiting = False
        return s


class FirstUsable:
    """Fill the first usable subflow until its socket is full, then the next."""

    name = "first"
    redundant = False

    def pick(self, send: SendPath, candidates: Sequence[Subflow], working: Sequence[Subflow]) -> Subflow | None:
        return candidates[0] if candidates else None


SCHEDULERS: dict[str, Callable[[], Scheduler]] = {}


def register(name: str, factory: Callable[[], Scheduler]) -> None:
    assert name not in SCHEDULERS, f"scheduler {name!r} registered twice"
    SCHEDULERS[name] = factory


def create(name: str) -> Scheduler:
    """A new scheduler instance by name; ValueError names the known ones."""
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(sorted(SCHEDULERS))})") from None


DEFAULT = LowestRtt.name
for _cls in (LowestRtt, RoundRobin, Redundant, Blest, FirstUsable):
    register(_cls.name, _cls)
