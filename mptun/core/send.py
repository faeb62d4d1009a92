"""SendPath: the data stream towards the peer: chunks to subflows, the shared window, our DATA_FIN, the persist timer.

The app's bytes wait in a SendBuffer by DSN until DATA_ACKed (the reinjection source). The
scheduler picks the subflow for each new chunk; a chunk is one DSS mapping (< 64 KB), cut only
within the peer's data-level window, which all subflows share and which counts from the DATA_ACK
(RFC 8684 3.3.4). After the app's FIN our bare DATA_FIN goes out and is retransmitted until
DATA_ACKed; while the peer's window is closed a persist timer probes it. After fallback the stream
is plain TCP: no mappings, no window of ours, the kernel socket is the only copy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from enum import Enum

from mptun import impl
from mptun.core.mib import Counters
from mptun.core.scheduler import Scheduler
from mptun.core.sendbuf import SendBuffer
from mptun.core.seqspace import M64, u32
from mptun.core.subflow import Subflow, SubflowKind

_ck = impl.load("checksum")

# Chunks: one mapping each, written with MSG_EOR. The data-level length is 16 bits
# (RFC 8684 3.3), so a chunk stays below 64 KB; large chunks make large segments.
CHUNK_MAX = 65000
# After fallback the kernel socket is the only copy that matters: larger writes, no mapping.
PLAIN_CHUNK = 256 * 1024
# A bare DATA_FIN is retransmitted until DATA_ACKed (RFC 8684 3.3.3), with backoff.
FIN_RTO_INITIAL = 0.2
FIN_RTO_MAX = 3.0
FIN_MAX_TRIES = 12
# The persist timer: while the peer's data-level window is closed, data waits and everything
# sent is acknowledged, the kernel has nothing queued and never probes; if the peer's one window
# update is lost, only a probe of ours makes it say its window again.
PERSIST_INITIAL = 0.2
PERSIST_MAX = 10.0


class FinVerdict(Enum):
    WAIT = 0
    SEND = 1
    GIVE_UP = 2


class SendPath:
    def __init__(self, start_dsn: int, limit: int, scheduler: Scheduler, counters: Counters):
        self.buf = SendBuffer(start_dsn, limit)
        self.scheduler = scheduler
        self.counters = counters
        self.plain = False                 # fallback: plain TCP
        self.checksums = False
        self.peer_wnd_end: int | None = None
        self.eof = False                   # the app sent FIN: DATA_FIN after the last byte
        self.fin_sent_at: float | None = None
        self.fin_rto = FIN_RTO_INITIAL
        self.fin_tries = 0
        self.fin_acked = False
        self.all_acked_at: float | None = None
        self.persist_at: float | None = None
        self.persist_rto = PERSIST_INITIAL
        self.reinject: deque[tuple[int, int]] = deque()   # DSN ranges [from, to) to send again

    # ------------------------------------------------------------ the peer's side

    def start(self, checksums: bool, synack_window: int) -> None:
        """MPTCP: the window of a SYN/ACK is never scaled (RFC 7323 2.2)."""
        self.checksums = checksums
        self.peer_wnd_end = self.buf.una + synack_window

    def start_plain(self) -> None:
        self.plain = True

    def data_ack(self, da: int, window_bytes: int) -> bool:
        """The peer's DATA_ACK and its receive window in bytes; False if it acknowledges data never sent."""
        limit = self.buf.nxt + (1 if self.fin_sent_at is not None else 0)
        if da > limit:
            return False
        self.buf.ack(da)
        if self.eof and da == self.buf.end + 1 and self.fin_sent_at is not None:
            self.fin_acked = True
        end = da + window_bytes
        if self.peer_wnd_end is None or end > self.peer_wnd_end:
            self.peer_wnd_end = end
        return True

    # ------------------------------------------------------------ the app's side

    def room(self) -> int:
        return self.buf.room()

    def append(self, data) -> None:
        assert not self.eof, "app data after the app's FIN"
        self.buf.append(data)

    # ------------------------------------------------------------ to the subflows

    def sendable(self) -> int:
        """New bytes that may go to a subflow now."""
        n = self.buf.unsent()
        if not self.plain and self.peer_wnd_end is not None:
            # RFC 8684 3.3.4: nothing beyond DATA_ACK + window (Linux drops it, NoDSSInWindow).
            n = min(n, self.peer_wnd_end - self.buf.nxt)
        return n

    def next_write(self, subflows: Sequence[Subflow], first_data: bool) -> tuple[Subflow, memoryview] | None:
        """A partly written chunk first (MSG_EOR keeps one mapping per chunk), then ranges to reinject,
        then new data, each on the subflow the scheduler picks. first_data: the peer has not spoken
        DSS yet (RFC 8684 3.1). Backups carry data only while no regular subflow works."""
        for sf in subflows:
            if sf.chunk is not None and sf.usable:
                return sf, memoryview(sf.chunk[1])[sf.chunk[2]:]
        if self.plain:
            if self.buf.unsent() <= 0:
                return None
            for sf in subflows:
                if sf.usable:
                    return sf, self._new_chunk(sf, first_data)
            return None
        working = [s for s in subflows if s.working and not (s.backup or s.peer_backup)]
        if not working:
            working = [s for s in subflows if s.working]
        candidates = [s for s in working if not s.write_blocked and s.chunk is None]
        if not candidates:
            return None
        while self.reinject:
            dsn, end = self.reinject[0]
            dsn = max(dsn, self.buf.una)
            if dsn >= end:
                self.reinject.popleft()
                continue
            sf = self.scheduler.pick(self, candidates, working)
            if sf is None:
                return None
            n = min(CHUNK_MAX, end - dsn)
            if dsn + n >= end:
                self.reinject.popleft()
            else:
                self.reinject[0] = (dsn + n, end)
            self.counters["reinjected_bytes"] += n
            return sf, self._chunk(sf, dsn, self.buf.take_at(dsn, n), first_data)
        if self.scheduler.redundant:
            return self._redundant(candidates, working, first_data)
        if self.sendable() <= 0:
            return None
        sf = self.scheduler.pick(self, candidates, working)
        if sf is None:
            return None
        return sf, self._new_chunk(sf, first_data)

    def _redundant(self, candidates: Sequence[Subflow], working: Sequence[Subflow],
                   first_data: bool) -> tuple[Subflow, memoryview] | None:
        """Each subflow carries the whole stream from its own cursor (never below the DATA_ACK)."""
        buf = self.buf
        limit = buf.end if self.peer_wnd_end is None else min(buf.end, self.peer_wnd_end)
        ready = [s for s in candidates if self._cursor(s) < limit]
        sf = self.scheduler.pick(self, ready, working) if ready else None
        if sf is None:
            return None
        dsn = self._cursor(sf)
        data = buf.take_at(dsn, min(CHUNK_MAX, limit - dsn))
        sf.dsn_cursor = dsn + len(data)
        return sf, self._chunk(sf, dsn, data, first_data)

    def _cursor(self, sf: Subflow) -> int:
        """Where redundant scheduling continues on sf: its next DSN, never below the DATA_ACK."""
        return self.buf.una if sf.dsn_cursor is None else max(sf.dsn_cursor, self.buf.una)

    def _new_chunk(self, sf: Subflow, first_data: bool) -> memoryview:
        if self.plain:
            dsn, data = self.buf.take_new(PLAIN_CHUNK)
            sf.chunk = [dsn, data, 0]
            return memoryview(data)
        dsn, data = self.buf.take_new(min(CHUNK_MAX, self.sendable()))
        return self._chunk(sf, dsn, data, first_data)

    def _chunk(self, sf: Subflow, dsn: int, data: bytes, first_data: bool) -> memoryview:
        """data (at dsn) becomes sf's next chunk: one mapping at the subflow's next offset."""
        n = len(data)
        ssn = sf.write_ssn
        added = sf.our_maps.add(ssn, dsn, n)
        assert added, "our mappings never overlap"
        if self.checksums:
            sf.our_csums[ssn] = _ck.dss_checksum(dsn & M64, u32(ssn), n, data)
        if ssn == 1 and first_data and sf.kind == SubflowKind.INITIAL:
            sf.first_chunk_len = n
        sf.chunk = [dsn, data, 0]
        return memoryview(data)

    def reinject_from(self, sf: Subflow, closing: bool = True) -> int:
        """Everything sf carried that the peer has not acknowledged goes out again on the others
        (sf died or stalled); returns the bytes queued. The data-level copy is in the buffer. A
        stalled subflow keeps its half-written chunk: it is finished there, so mappings stay whole."""
        una = self.buf.una
        queued = 0
        for _start, dsn, length in sf.our_maps:
            lo, hi = max(dsn, una), dsn + length
            if hi > lo:
                self.reinject.append((lo, hi))
                queued += hi - lo
        if closing:
            sf.chunk = None
        sf.dsn_cursor = None
        return queued

    def written(self, sf: Subflow, n: int) -> None:
        chunk = sf.chunk
        assert chunk is not None and 0 <= n <= len(chunk[1]) - chunk[2]
        left = len(chunk[1]) - chunk[2]
        chunk[2] += n
        sf.write_ssn += n
        sf.notsent += n
        if n < left:
            sf.write_blocked = True
        if chunk[2] == len(chunk[1]):
            if self.plain:
                self.buf.ack(chunk[0] + len(chunk[1]))
            sf.chunk = None

    def wants_write(self, sf: Subflow) -> bool:
        if not sf.write_blocked or sf.closed:
            return False
        if sf.chunk is not None or self.sendable() > 0 or self._reinject_pending():
            return True
        return self.scheduler.redundant and self._cursor(sf) < self.buf.end

    def _reinject_pending(self) -> bool:
        """Ranges wait to be sent again (those the peer has acknowledged meanwhile are dropped)."""
        q = self.reinject
        while q and q[0][1] <= self.buf.una:
            q.popleft()
        return bool(q)

    def all_written(self, subflows: Sequence[Subflow]) -> bool:
        """Every app byte is in a kernel socket (and so the FIN/DATA_FIN may follow)."""
        return self.buf.unsent() == 0 and not self._reinject_pending() and all(s.chunk is None for s in subflows)

    # ------------------------------------------------------------ our DATA_FIN, the persist timer

    def fin_verdict(self, now: float, subflows: Sequence[Subflow], peer_has_keys: bool) -> FinVerdict:
        """Whether our bare DATA_FIN goes out now. Sent once every app byte is in a kernel socket;
        retransmitted only once everything before it is DATA_ACKed (before that the peer cannot
        acknowledge it, and each crafted ACK is a duplicate ACK to its TCP); GIVE_UP after
        FIN_MAX_TRIES. peer_has_keys: the peer has the connection (it spoke DSS, or our third ACK
        with both keys is out)."""
        if not self.eof or self.fin_acked or not self.all_written(subflows):
            return FinVerdict.WAIT
        buf = self.buf
        if buf.una == buf.end and self.all_acked_at is None:
            self.all_acked_at = now
        due = self.fin_sent_at is None or (
            self.all_acked_at is not None and now >= max(self.fin_sent_at, self.all_acked_at) + self.fin_rto)
        if not due or not peer_has_keys:
            return FinVerdict.WAIT
        if self.fin_sent_at is not None:
            self.fin_rto = min(self.fin_rto * 2, FIN_RTO_MAX)
        self.fin_tries += 1
        if self.fin_tries > FIN_MAX_TRIES:
            return FinVerdict.GIVE_UP
        self.fin_sent_at = now
        return FinVerdict.SEND

    def probe_due(self, now: float, subflows: Sequence[Subflow]) -> bool:
        """The persist timer: True when a data-level window probe must go out now."""
        buf = self.buf
        closed_and_idle = (self.peer_wnd_end is not None and self.peer_wnd_end <= buf.nxt < buf.end
                           and buf.una == buf.nxt and all(s.chunk is None for s in subflows))
        if not closed_and_idle:
            self.persist_at = None
            self.persist_rto = PERSIST_INITIAL
            return False
        if self.persist_at is None:
            self.persist_at = now + self.persist_rto
            return False
        if now < self.persist_at:
            return False
        self.persist_rto = min(self.persist_rto * 2, PERSIST_MAX)
        self.persist_at = now + self.persist_rto
        return True

    def deadline(self) -> float | None:
        times = []
        if self.persist_at is not None:
            times.append(self.persist_at)
        if self.eof and not self.fin_acked and self.fin_sent_at is not None and self.buf.una >= self.buf.end:
            times.append(max(self.fin_sent_at, self.all_acked_at or 0.0) + self.fin_rto)
        return min(times) if times else None
