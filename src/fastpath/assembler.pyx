# cython: language_level=3
"""DsnAssembler: the Python face of the DSN reassembly in assembler.pxd (same API as mptun.pure.assembler).

Bytes are placed by their 64-bit DSN into a bounded ring and read back as the in-order
stream; next_dsn is the DATA_ACK basis. The class and its C state are declared in
assembler.pxd, so a compiled module that cimports mptun._fast.assembler reaches the same
object's state and inline methods directly; the methods here are for the Python layers.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t

# Everything in assembler.pxd (the class's C attributes too) is in scope: setup.py's include
# tree pairs this file, compiled as mptun._fast.assembler, with it.

MAX_CAPACITY = 1 << 40
MAX_RANGES_LIMIT = 1 << 20
DEFAULT_MAX_RANGES = 64


cdef class DsnAssembler:
    """Reassembles the data stream from bytes mapped at 64-bit DSNs, in a ring of capacity bytes."""

    def __cinit__(self, uint64_t start_dsn, Py_ssize_t capacity,
                  Py_ssize_t max_ranges=DEFAULT_MAX_RANGES):
        if not 0 < capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..{MAX_CAPACITY}, not {capacity}")
        if not 0 <= max_ranges <= MAX_RANGES_LIMIT:
            raise ValueError(f"max_ranges must be in 0..{MAX_RANGES_LIMIT}, not {max_ranges}")
        if dsn_assembler_init(&self.state, start_dsn, capacity, max_ranges) != 0:
            raise MemoryError()

    def __dealloc__(self):
        dsn_assembler_free(&self.state)

    def insert(self, uint64_t dsn, const unsigned char[::1] data not None) -> int:
        """Place data mapped at dsn; returns how many of its bytes were new and stored."""
        cdef Py_ssize_t n = data.shape[0]
        if n == 0:
            return 0
        with nogil:
            n = self.insert_c(dsn, &data[0], n)
        return n

    def readable(self) -> int:
        """In-order bytes waiting to be read."""
        return self.readable_c()

    def window(self) -> int:
        """Free space counted from next_dsn (the window to advertise with DATA_ACK = next_dsn)."""
        return self.window_c()

    def read(self, Py_ssize_t max_len) -> bytes:
        """Up to max_len bytes of the in-order stream, removed from the assembler."""
        if max_len < 0:
            raise ValueError(f"max_len must not be negative, not {max_len}")
        cdef Py_ssize_t n = self.readable_c()
        if max_len < n:
            n = max_len
        out = PyBytes_FromStringAndSize(NULL, n)
        if n:
            self.read_c(<unsigned char*>PyBytes_AS_STRING(out), n)
        return out

    def read_into(self, unsigned char[::1] buffer not None) -> int:
        """Fill buffer with in-order bytes; returns how many were copied (and removed)."""
        cdef Py_ssize_t n = buffer.shape[0]
        if n == 0:
            return 0
        with nogil:
            n = self.read_c(&buffer[0], n)
        return n

    def ranges(self) -> list:
        """The out-of-order ranges held above next_dsn, as ascending (start_dsn, end_dsn) pairs."""
        return [(self.state.ranges[k].start, self.state.ranges[k].end)
                for k in range(self.state.range_count)]

    @property
    def read_dsn(self) -> int:
        """DSN of the next byte read() returns: the window is [read_dsn, read_dsn + capacity)."""
        return self.state.read_dsn

    @property
    def next_dsn(self) -> int:
        """End of the contiguous in-order data: the DSN to DATA_ACK."""
        return self.state.next_dsn

    @property
    def capacity(self) -> int:
        return self.state.capacity

    @property
    def max_ranges(self) -> int:
        return self.state.max_ranges

    @property
    def duplicate_bytes(self) -> int:
        """Bytes discarded because they lay below next_dsn (received in order, or read)."""
        return self.state.duplicate_bytes

    @property
    def overlap_bytes(self) -> int:
        """Bytes discarded because the same DSNs were already held out of order."""
        return self.state.overlap_bytes

    @property
    def beyond_window_bytes(self) -> int:
        """Bytes refused because they lay at or beyond read_dsn + capacity."""
        return self.state.beyond_window_bytes

    @property
    def evicted_bytes(self) -> int:
        """Out-of-order bytes dropped to make room for a lower range."""
        return self.state.evicted_bytes

    @property
    def range_limit_bytes(self) -> int:
        """Bytes refused because they needed a range record beyond max_ranges."""
        return self.state.range_limit_bytes

    def __repr__(self):
        return (f"DsnAssembler(read_dsn={self.state.read_dsn}, next_dsn={self.state.next_dsn}, "
                f"capacity={self.state.capacity}, ranges={self.ranges()})")
