# cython: language_level=3
"""Wrap-safe sequence arithmetic: 32-bit TCP subflow sequence numbers and 64-bit MPTCP DSNs.

An inline header (docs/datapath.md, "Build notes"): `from seq cimport diff64_c` from another
datapath module to use these as inline C (no Python objects, no GIL, no runtime import). The
Python wrappers of the same names without `_c` live in seq.pyx and, as a pure-Python twin, in
mptun/pure/seq.py.
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t


# Serial-number arithmetic as in Linux's before()/after() (include/net/tcp.h) and
# before64()/after64() (net/mptcp/protocol.h): a is before b when the signed distance
# b - a is positive. Two values exactly half the space apart are "before" each other in
# both directions; callers keep live windows well under half the space.

cdef inline int32_t diff32_c(uint32_t a, uint32_t b) noexcept nogil:
    """Signed distance a - b in the 32-bit sequence space."""
    return <int32_t>(a - b)


cdef inline bint before32_c(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) < 0


cdef inline bint after32_c(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(b - a) < 0


cdef inline bint between32_c(uint32_t seq, uint32_t low, uint32_t high) noexcept nogil:
    """low <= seq <= high, both ends inclusive, on the circle starting at low (Linux between())."""
    return <uint32_t>(high - low) >= <uint32_t>(seq - low)


cdef inline int64_t diff64_c(uint64_t a, uint64_t b) noexcept nogil:
    """Signed distance a - b in the 64-bit data sequence space."""
    return <int64_t>(a - b)


cdef inline bint before64_c(uint64_t a, uint64_t b) noexcept nogil:
    return <int64_t>(a - b) < 0


cdef inline bint after64_c(uint64_t a, uint64_t b) noexcept nogil:
    return <int64_t>(b - a) < 0


cdef inline bint between64_c(uint64_t seq, uint64_t low, uint64_t high) noexcept nogil:
    """low <= seq <= high, both ends inclusive, on the circle starting at low."""
    return <uint64_t>(high - low) >= <uint64_t>(seq - low)


cdef inline uint64_t expand_dsn32_c(uint64_t expected, uint32_t low32) noexcept nogil:
    """The 64-bit DSN whose low 32 bits are low32 and that lies nearest to expected.

    RFC 8684 3.3.1 lets a DSS carry a 4-byte DSN or DATA_ACK; the receiver infers the
    upper 32 bits. Like Linux's mptcp_expand_seq(), this picks the candidate within half
    the 32-bit space of expected, wrapping modulo 2^64; a distance of exactly 2^31 is
    taken as behind expected (Linux breaks that tie either way depending on the values).
    """
    return expected + <uint64_t><int64_t>(<int32_t>(low32 - <uint32_t>expected))
