# cython: language_level=3
"""DSN reassembly for the receive hot path: bytes placed by 64-bit DSN, read back in order.

The module pxd of mptun._fast.assembler: cimport it by that name,
`from mptun._fast.assembler cimport DsnAssembler, dsn_assembler_insert` (docs/datapath.md,
"Build notes"), never as `assembler` (the module would then import a module of that name).

A DsnAssemblerState is a C struct driven through the inline `dsn_assembler_*` functions below,
with no Python objects and without the GIL. The cdef class DsnAssembler owns one (`.state`) and
is what Python and the compiled per-packet loop share: Python creates it (the API of the pure
twin mptun/pure/assembler.py, in assembler.pyx), the loop reaches its state and its inline
`*_c` methods directly, without Python calls. A module may also embed a bare DsnAssemblerState.

Contract:
- Data lives in a ring of `capacity` bytes covering DSNs [read_dsn, read_dsn + capacity);
  memory is that ring plus `max_ranges` out-of-order range records, fixed at init.
- Bytes below next_dsn (already received in order, or already read) are discarded, and so
  are bytes already held out of order: the first copy of a byte is never overwritten.
  Linux's zero-window probes carry the byte at snd_una but map it to DSN snd_una - 1
  (docs/datapath.md, "Bytes that arrive twice"); overwriting would corrupt the stream.
- Bytes at or beyond read_dsn + capacity are refused: the peer overran the window it was
  given (RFC 8684 3.3.4: one connection-level window, counted from the DATA_ACK; Linux
  drops such data too, counter NoDSSInWindow).
- When a new disjoint range would need more than max_ranges records, the highest range is
  evicted if the new one lies below it (as Linux prunes its out-of-order queue from the
  top: lower data unblocks the reader sooner); otherwise the new range is refused. Either
  way only out-of-order data is lost, which the peer still holds (it is not DATA_ACKed).
- Every discarded byte is counted, by reason; nothing here fails on bad input.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove

# seq.pxd is an inline header: cimported by its short name.
from seq cimport diff64_c


ctypedef struct DsnRange:
    uint64_t start  # DSN of the first byte held
    uint64_t end    # DSN one past the last byte held

ctypedef struct DsnAssemblerState:
    unsigned char* ring
    DsnRange* ranges            # out of order, above next_dsn: ascending, disjoint, never touching
    Py_ssize_t capacity
    Py_ssize_t max_ranges
    Py_ssize_t range_count
    Py_ssize_t read_pos         # ring index of read_dsn
    uint64_t read_dsn           # first byte the reader has not taken yet
    uint64_t next_dsn           # end of the in-order prefix: what DATA_ACK acknowledges
    uint64_t duplicate_bytes    # below next_dsn: already received in order or already read
    uint64_t overlap_bytes      # already held out of order
    uint64_t beyond_window_bytes
    uint64_t evicted_bytes      # held out of order, dropped to make room for a lower range
    uint64_t range_limit_bytes  # refused: would have needed a range record beyond max_ranges


cdef inline int dsn_assembler_init(DsnAssemblerState* a, uint64_t start_dsn,
                                   Py_ssize_t capacity, Py_ssize_t max_ranges) noexcept nogil:
    """Set up an empty assembler expecting start_dsn next. 0 on success, -1 if out of memory.

    capacity must be in 1..2^40, so that offset sums in insert cannot overflow, and
    max_ranges in 0..2^20; the caller checks both (DsnAssembler does).
    """
    a.ring = <unsigned char*>malloc(<size_t>capacity)
    # malloc(0) may return NULL; one spare record keeps the pointer valid.
    a.ranges = <DsnRange*>malloc(<size_t>(max_ranges + 1) * sizeof(DsnRange))
    if a.ring == NULL or a.ranges == NULL:
        free(a.ring)
        free(a.ranges)
        a.ring = NULL
        a.ranges = NULL
        return -1
    a.capacity = capacity
    a.max_ranges = max_ranges
    a.range_count = 0
    a.read_pos = 0
    a.read_dsn = start_dsn
    a.next_dsn = start_dsn
    a.duplicate_bytes = 0
    a.overlap_bytes = 0
    a.beyond_window_bytes = 0
    a.evicted_bytes = 0
    a.range_limit_bytes = 0
    return 0


cdef inline void dsn_assembler_free(DsnAssemblerState* a) noexcept nogil:
    free(a.ring)
    free(a.ranges)
    a.ring = NULL
    a.ranges = NULL


cdef inline Py_ssize_t dsn_assembler_readable(const DsnAssemblerState* a) noexcept nogil:
    """In-order bytes waiting for the reader."""
    return <Py_ssize_t>(a.next_dsn - a.read_dsn)


cdef inline Py_ssize_t dsn_assembler_window(const DsnAssemblerState* a) noexcept nogil:
    """Free space counted from next_dsn: what may be advertised beside DATA_ACK = next_dsn."""
    return a.capacity - <Py_ssize_t>(a.next_dsn - a.read_dsn)


cdef inline void _dsn_assembler_ring_write(DsnAssemblerState* a, Py_ssize_t offset,
                                           const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t pos = a.read_pos + offset
    cdef Py_ssize_t first
    if pos >= a.capacity:
        pos -= a.capacity
    first = a.capacity - pos
    if n <= first:
        memcpy(a.ring + pos, p, <size_t>n)
    else:
        memcpy(a.ring + pos, p, <size_t>first)
        memcpy(a.ring, p + first, <size_t>(n - first))


cdef inline Py_ssize_t dsn_assembler_insert(DsnAssemblerState* a, uint64_t dsn,
                                            const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Place n bytes that the peer mapped at dsn. Returns how many were new and stored."""
    cdef Py_ssize_t held = <Py_ssize_t>(a.next_dsn - a.read_dsn)
    cdef int64_t rel
    cdef Py_ssize_t start, end, first_touch, last_touch, k, cursor, rs, re, lo, hi
    cdef Py_ssize_t new_start, new_end, removed
    cdef Py_ssize_t accepted = 0
    if n <= 0:
        return 0
    rel = diff64_c(dsn, a.read_dsn)
    if rel >= a.capacity:
        a.beyond_window_bytes += <uint64_t>n
        return 0
    # rel < capacity <= 2^40 and n is a buffer length, so rel + n cannot overflow.
    if rel + n <= held:
        a.duplicate_bytes += <uint64_t>n
        return 0
    start = <Py_ssize_t>rel
    end = <Py_ssize_t>rel + n
    if start < held:
        a.duplicate_bytes += <uint64_t>(held - start)
        p += held - start
        start = held
    if end > a.capacity:
        a.beyond_window_bytes += <uint64_t>(end - a.capacity)
        end = a.capacity
    # [start, end) is non-empty, at or above next_dsn, inside the window. The ranges that
    # overlap or touch it are first_touch..last_touch (none when first_touch > last_touch).
    first_touch = 0
    while (first_touch < a.range_count and
           <Py_ssize_t>(a.ranges[first_touch].end - a.read_dsn) < start):
        first_touch += 1
    last_touch = first_touch - 1
    while (last_touch + 1 < a.range_count and
           <Py_ssize_t>(a.ranges[last_touch + 1].start - a.read_dsn) <= end):
        last_touch += 1

    if first_touch > last_touch and start != held:
        # A new disjoint range: it needs a record of its own.
        if a.range_count >= a.max_ranges:
            if first_touch < a.range_count:
                k = a.range_count - 1
                a.evicted_bytes += a.ranges[k].end - a.ranges[k].start
                a.range_count -= 1
            else:
                a.range_limit_bytes += <uint64_t>(end - start)
                return 0

    # Copy only the holes; bytes already held keep their first copy.
    cursor = start
    for k in range(first_touch, last_touch + 1):
        rs = <Py_ssize_t>(a.ranges[k].start - a.read_dsn)
        re = <Py_ssize_t>(a.ranges[k].end - a.read_dsn)
        if rs > cursor:
            _dsn_assembler_ring_write(a, cursor, p + (cursor - start), rs - cursor)
            accepted += rs - cursor
            cursor = rs
        hi = re if re < end else end
        if hi > cursor:
            a.overlap_bytes += <uint64_t>(hi - cursor)
            cursor = hi
    if cursor < end:
        _dsn_assembler_ring_write(a, cursor, p + (cursor - start), end - cursor)
        accepted += end - cursor

    if first_touch > last_touch:
        if start == held:
            # Ranges never touch next_dsn, and none touches [start, end): nothing to absorb.
            a.next_dsn = a.read_dsn + <uint64_t>end
            return accepted
        memmove(&a.ranges[first_touch + 1], &a.ranges[first_touch],
                <size_t>(a.range_count - first_touch) * sizeof(DsnRange))
        a.ranges[first_touch].start = a.read_dsn + <uint64_t>start
        a.ranges[first_touch].end = a.read_dsn + <uint64_t>end
        a.range_count += 1
        return accepted

    lo = <Py_ssize_t>(a.ranges[first_touch].start - a.read_dsn)
    hi = <Py_ssize_t>(a.ranges[last_touch].end - a.read_dsn)
    new_start = start if start < lo else lo
    new_end = end if end > hi else hi
    removed = last_touch - first_touch
    if removed:
        memmove(&a.ranges[first_touch + 1], &a.ranges[last_touch + 1],
                <size_t>(a.range_count - last_touch - 1) * sizeof(DsnRange))
        a.range_count -= removed
    if new_start == held:
        # Only the lowest range can reach next_dsn; it joins the in-order prefix.
        a.next_dsn = a.read_dsn + <uint64_t>new_end
        memmove(&a.ranges[0], &a.ranges[1], <size_t>(a.range_count - 1) * sizeof(DsnRange))
        a.range_count -= 1
    else:
        a.ranges[first_touch].start = a.read_dsn + <uint64_t>new_start
        a.ranges[first_touch].end = a.read_dsn + <uint64_t>new_end
    return accepted


cdef inline Py_ssize_t dsn_assembler_peek(const DsnAssemblerState* a,
                                          const unsigned char** p) noexcept nogil:
    """Point *p at the next in-order bytes in the ring; returns how many are contiguous there.

    For zero-copy sends (e.g. straight from the ring into the app's socket), followed by
    dsn_assembler_consume. A second peek returns the wrapped-around rest, if any.
    """
    cdef Py_ssize_t held = <Py_ssize_t>(a.next_dsn - a.read_dsn)
    cdef Py_ssize_t contiguous = a.capacity - a.read_pos
    p[0] = a.ring + a.read_pos
    return held if held < contiguous else contiguous


cdef inline Py_ssize_t dsn_assembler_consume(DsnAssemblerState* a, Py_ssize_t n) noexcept nogil:
    """Release n in-order bytes (clamped to what is readable); returns how many were released."""
    cdef Py_ssize_t held = <Py_ssize_t>(a.next_dsn - a.read_dsn)
    if n > held:
        n = held
    if n <= 0:
        return 0
    a.read_pos += n
    if a.read_pos >= a.capacity:
        a.read_pos -= a.capacity
    a.read_dsn += <uint64_t>n
    return n


cdef inline Py_ssize_t dsn_assembler_read(DsnAssemblerState* a, unsigned char* out,
                                          Py_ssize_t max_len) noexcept nogil:
    """Copy up to max_len in-order bytes to out and release them; returns how many."""
    cdef Py_ssize_t held = <Py_ssize_t>(a.next_dsn - a.read_dsn)
    cdef Py_ssize_t n = max_len if max_len < held else held
    cdef Py_ssize_t first
    if n <= 0:
        return 0
    first = a.capacity - a.read_pos
    if n <= first:
        memcpy(out, a.ring + a.read_pos, <size_t>n)
    else:
        memcpy(out, a.ring + a.read_pos, <size_t>first)
        memcpy(out + first, a.ring, <size_t>(n - first))
    return dsn_assembler_consume(a, n)


cdef class DsnAssembler:
    """The Python-visible owner of one DsnAssemblerState (methods and properties in assembler.pyx).

    Compiled callers use `.state` with the dsn_assembler_* functions, or these inline methods:
    direct C calls, no Python objects, callable without the GIL.
    """

    cdef DsnAssemblerState state

    cdef inline Py_ssize_t insert_c(self, uint64_t dsn, const unsigned char* p, Py_ssize_t n) noexcept nogil:
        """dsn_assembler_insert on this assembler: how many of the n bytes were new and stored."""
        return dsn_assembler_insert(&self.state, dsn, p, n)

    cdef inline Py_ssize_t readable_c(self) noexcept nogil:
        return dsn_assembler_readable(&self.state)

    cdef inline Py_ssize_t window_c(self) noexcept nogil:
        return dsn_assembler_window(&self.state)

    cdef inline Py_ssize_t peek_c(self, const unsigned char** p) noexcept nogil:
        return dsn_assembler_peek(&self.state, p)

    cdef inline Py_ssize_t consume_c(self, Py_ssize_t n) noexcept nogil:
        return dsn_assembler_consume(&self.state, n)

    cdef inline Py_ssize_t read_c(self, unsigned char* out, Py_ssize_t max_len) noexcept nogil:
        return dsn_assembler_read(&self.state, out, max_len)
