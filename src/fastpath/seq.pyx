# cython: language_level=3
"""Python entry points to the wrap-safe sequence arithmetic of seq.pxd (same API as mptun.pure.seq).

Other datapath modules cimport the inline `*_c` functions from seq.pxd instead; these
wrappers exist for the Python layers and the tests. Out-of-range integers raise
OverflowError (a programmer error: sequence numbers are always reduced modulo 2^32/2^64).
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

# seq.pxd is an inline header, not this module's own pxd (docs/datapath.md, "Build notes"):
# its names are cimported like any other's, and need no runtime import.
from seq cimport (
    after32_c, after64_c, before32_c, before64_c, between32_c, between64_c,
    diff32_c, diff64_c, expand_dsn32_c,
)

SEQ32_MOD = 1 << 32
DSN_MOD = 1 << 64


cpdef int32_t diff32(uint32_t a, uint32_t b) noexcept:
    """Signed distance a - b in the 32-bit sequence space, in [-2^31, 2^31)."""
    return diff32_c(a, b)


cpdef bint before32(uint32_t a, uint32_t b) noexcept:
    return before32_c(a, b)


cpdef bint after32(uint32_t a, uint32_t b) noexcept:
    return after32_c(a, b)


cpdef bint between32(uint32_t seq, uint32_t low, uint32_t high) noexcept:
    """low <= seq <= high (both inclusive) in the 32-bit sequence space."""
    return between32_c(seq, low, high)


cpdef int64_t diff64(uint64_t a, uint64_t b) noexcept:
    """Signed distance a - b in the 64-bit DSN space, in [-2^63, 2^63)."""
    return diff64_c(a, b)


cpdef bint before64(uint64_t a, uint64_t b) noexcept:
    return before64_c(a, b)


cpdef bint after64(uint64_t a, uint64_t b) noexcept:
    return after64_c(a, b)


cpdef bint between64(uint64_t seq, uint64_t low, uint64_t high) noexcept:
    """low <= seq <= high (both inclusive) in the 64-bit DSN space."""
    return between64_c(seq, low, high)


cpdef uint64_t expand_dsn32(uint64_t expected, uint32_t low32) noexcept:
    """The 64-bit DSN with these low 32 bits nearest to expected (RFC 8684 3.3.1 4-byte DSN)."""
    return expand_dsn32_c(expected, low32)
