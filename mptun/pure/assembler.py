"""DsnAssembler: bytes placed by 64-bit DSN into a bounded ring, read back as the in-order stream.

Pure-Python twin of mptun._fast.assembler (the algorithm is src/fastpath/assembler.pxd,
whose docstring states the contract): same API, same results, same counters.
"""

MAX_CAPACITY = 1 << 40
MAX_RANGES_LIMIT = 1 << 20
DEFAULT_MAX_RANGES = 64

_DSN_MOD = 1 << 64
_MASK64 = _DSN_MOD - 1
_HALF64 = 1 << 63


def _u64(value: int) -> int:
    # Mirrors Cython's conversion to uint64_t, so both twins fail alike on a caller's bug.
    if not 0 <= value <= _MASK64:
        raise OverflowError(f"{value} is not an unsigned 64-bit DSN")
    return value


def _diff64(a: int, b: int) -> int:
    d = (a - b) & _MASK64
    return d - _DSN_MOD if d >= _HALF64 else d


class DsnAssembler:
    """Reassembles the data stream from bytes mapped at 64-bit DSNs, in a ring of capacity bytes."""

    __slots__ = (
        "_ring", "_ranges", "_capacity", "_max_ranges", "_read_pos", "_read_dsn", "_next_dsn",
        "_duplicate_bytes", "_overlap_bytes", "_beyond_window_bytes", "_evicted_bytes",
        "_range_limit_bytes",
    )

    def __init__(self, start_dsn: int, capacity: int, max_ranges: int = DEFAULT_MAX_RANGES):
        _u64(start_dsn)
        if not 0 < capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..{MAX_CAPACITY}, not {capacity}")
        if not 0 <= max_ranges <= MAX_RANGES_LIMIT:
            raise ValueError(f"max_ranges must be in 0..{MAX_RANGES_LIMIT}, not {max_ranges}")
        self._ring = bytearray(capacity)
        # Out of order, above next_dsn: [start, end) DSN pairs, ascending, never touching.
        self._ranges: list[list[int]] = []
        self._capacity = capacity
        self._max_ranges = max_ranges
        self._read_pos = 0
        self._read_dsn = start_dsn
        self._next_dsn = start_dsn
        self._duplicate_bytes = 0
        self._overlap_bytes = 0
        self._beyond_window_bytes = 0
        self._evicted_bytes = 0
        self._range_limit_bytes = 0

    def _offset(self, dsn: int) -> int:
        return (dsn - self._read_dsn) & _MASK64

    def _ring_write(self, offset: int, data: memoryview) -> None:
        pos = self._read_pos + offset
        if pos >= self._capacity:
            pos -= self._capacity
        first = self._capacity - pos
        n = len(data)
        if n <= first:
            self._ring[pos:pos + n] = data
        else:
            self._ring[pos:] = data[:first]
            self._ring[:n - first] = data[first:]

    def insert(self, dsn: int, data) -> int:
        """Place data mapped at dsn; returns how many of its bytes were new and stored."""
        _u64(dsn)
        view = memoryview(data).cast("B")
        n = len(view)
        if n == 0:
            return 0
        held = (self._next_dsn - self._read_dsn) & _MASK64
        rel = _diff64(dsn, self._read_dsn)
        if rel >= self._capacity:
            self._beyond_window_bytes += n
            return 0
        if rel + n <= held:
            # Already received in order or read: the first copy stays (zero-window probes).
            self._duplicate_bytes += n
            return 0
        start, end = rel, rel + n
        if start < held:
            self._duplicate_bytes += held - start
            view = view[held - start:]
            start = held
        if end > self._capacity:
            self._beyond_window_bytes += end - self._capacity
            end = self._capacity
        ranges = self._ranges
        first_touch = 0
        while first_touch < len(ranges) and self._offset(ranges[first_touch][1]) < start:
            first_touch += 1
        last_touch = first_touch - 1
        while last_touch + 1 < len(ranges) and self._offset(ranges[last_touch + 1][0]) <= end:
            last_touch += 1

        if first_touch > last_touch and start != held and len(ranges) >= self._max_ranges:
            if first_touch < len(ranges):
                evicted = ranges.pop()
                self._evicted_bytes += (evicted[1] - evicted[0]) & _MASK64
            else:
                self._range_limit_bytes += end - start
                return 0

        accepted = 0
        cursor = start
        for k in range(first_touch, last_touch + 1):
            rs, re = self._offset(ranges[k][0]), self._offset(ranges[k][1])
            if rs > cursor:
                self._ring_write(cursor, view[cursor - start:rs - start])
                accepted += rs - cursor
                cursor = rs
            hi = min(re, end)
            if hi > cursor:
                self._overlap_bytes += hi - cursor
                cursor = hi
        if cursor < end:
            self._ring_write(cursor, view[cursor - start:end - start])
            accepted += end - cursor

        if first_touch > last_touch:
            if start == held:
                self._next_dsn = (self._read_dsn + end) & _MASK64
            else:
                ranges.insert(first_touch, [(self._read_dsn + start) & _MASK64,
                                            (self._read_dsn + end) & _MASK64])
            return accepted

        new_start = min(start, self._offset(ranges[first_touch][0]))
        new_end = max(end, self._offset(ranges[last_touch][1]))
        del ranges[first_touch + 1:last_touch + 1]
        if new_start == held:
            self._next_dsn = (self._read_dsn + new_end) & _MASK64
            del ranges[0]
        else:
            ranges[first_touch] = [(self._read_dsn + new_start) & _MASK64,
                                   (self._read_dsn + new_end) & _MASK64]
        return accepted

    def readable(self) -> int:
        """In-order bytes waiting to be read."""
        return (self._next_dsn - self._read_dsn) & _MASK64

    def window(self) -> int:
        """Free space counted from next_dsn (the window to advertise with DATA_ACK = next_dsn)."""
        return self._capacity - self.readable()

    def _take(self, n: int) -> bytes:
        first = self._capacity - self._read_pos
        if n <= first:
            out = bytes(self._ring[self._read_pos:self._read_pos + n])
        else:
            out = bytes(self._ring[self._read_pos:]) + bytes(self._ring[:n - first])
        self._read_pos += n
        if self._read_pos >= self._capacity:
            self._read_pos -= self._capacity
        self._read_dsn = (self._read_dsn + n) & _MASK64
        return out

    def read(self, max_len: int) -> bytes:
        """Up to max_len bytes of the in-order stream, removed from the assembler."""
        if max_len < 0:
            raise ValueError(f"max_len must not be negative, not {max_len}")
        return self._take(min(max_len, self.readable()))

    def read_into(self, buffer) -> int:
        """Fill buffer with in-order bytes; returns how many were copied (and removed)."""
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise ValueError("buffer source array is read-only")
        n = min(len(view), self.readable())
        view[:n] = self._take(n)
        return n

    def ranges(self) -> list:
        """The out-of-order ranges held above next_dsn, as ascending (start_dsn, end_dsn) pairs."""
        return [(start, end) for start, end in self._ranges]

    @property
    def read_dsn(self) -> int:
        """DSN of the next byte read() returns: the window is [read_dsn, read_dsn + capacity)."""
        return self._read_dsn

    @property
    def next_dsn(self) -> int:
        """End of the contiguous in-order data: the DSN to DATA_ACK."""
        return self._next_dsn

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_ranges(self) -> int:
        return self._max_ranges

    @property
    def duplicate_bytes(self) -> int:
        """Bytes discarded because they lay below next_dsn (received in order, or read)."""
        return self._duplicate_bytes

    @property
    def overlap_bytes(self) -> int:
        """Bytes discarded because the same DSNs were already held out of order."""
        return self._overlap_bytes

    @property
    def beyond_window_bytes(self) -> int:
        """Bytes refused because they lay at or beyond read_dsn + capacity."""
        return self._beyond_window_bytes

    @property
    def evicted_bytes(self) -> int:
        """Out-of-order bytes dropped to make room for a lower range."""
        return self._evicted_bytes

    @property
    def range_limit_bytes(self) -> int:
        """Bytes refused because they needed a range record beyond max_ranges."""
        return self._range_limit_bytes

    def __repr__(self):
        return (f"DsnAssembler(read_dsn={self._read_dsn}, next_dsn={self._next_dsn}, "
                f"capacity={self._capacity}, ranges={self.ranges()})")
