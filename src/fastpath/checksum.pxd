# cython: language_level=3
"""Internet checksum primitives (RFC 1071, RFC 1624, RFC 8684 section 3.3) for the datapath loops.

Values are the integer a big-endian 16-bit field holds (what `int.from_bytes(field, "big")`
reads). A "sum" is folded but not inverted (1..0xffff for any input that is not all zero,
0 only for all-zero input); a "checksum" is the inverted sum that goes on the wire.

An inline header (docs/datapath.md, "Build notes"): everything is `cdef inline ... noexcept
nogil`, cimported by the short name (`from checksum cimport csum_sum`); a module that cimports
it compiles its own copy and imports nothing at run time. checksum.pyx wraps these for Python.
"""

from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define MPTUN_CSUM_LITTLE_ENDIAN 0
    #else
    #define MPTUN_CSUM_LITTLE_ENDIAN 1
    #endif
    """
    const int MPTUN_CSUM_LITTLE_ENDIAN


cdef inline uint16_t _bswap16(uint16_t x) noexcept nogil:
    return <uint16_t>((x >> 8) | (x << 8))


cdef inline uint16_t csum_fold(uint64_t acc) noexcept nogil:
    """Fold a 64-bit accumulation of 16-bit words to 16 bits with end-around carry; not inverted."""
    # Four folds cover any 64-bit value: 64 -> 33 -> 17 -> 16 bits, then one last carry.
    acc = (acc & 0xffffffffULL) + (acc >> 32)
    acc = (acc & 0xffffULL) + (acc >> 16)
    acc = (acc & 0xffffULL) + (acc >> 16)
    acc = (acc & 0xffffULL) + (acc >> 16)
    return <uint16_t>acc


cdef inline uint64_t _native_acc(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # Native-order loads summed as 32-bit halves into 64-bit accumulators: no carry chain,
    # and 2^32 additions before overflow. Byte order is fixed once at the end (the sum of
    # byte-swapped words is the byte-swapped sum, RFC 1071 section 2(B)).
    cdef uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, w0, w1, w2, w3
    cdef uint32_t h
    cdef uint16_t s
    while n >= 32:
        memcpy(&w0, p, 8)
        memcpy(&w1, p + 8, 8)
        memcpy(&w2, p + 16, 8)
        memcpy(&w3, p + 24, 8)
        a0 += (w0 & 0xffffffffULL) + (w0 >> 32)
        a1 += (w1 & 0xffffffffULL) + (w1 >> 32)
        a2 += (w2 & 0xffffffffULL) + (w2 >> 32)
        a3 += (w3 & 0xffffffffULL) + (w3 >> 32)
        p += 32
        n -= 32
    while n >= 8:
        memcpy(&w0, p, 8)
        a0 += (w0 & 0xffffffffULL) + (w0 >> 32)
        p += 8
        n -= 8
    if n >= 4:
        memcpy(&h, p, 4)
        a1 += h
        p += 4
        n -= 4
    if n >= 2:
        memcpy(&s, p, 2)
        a2 += s
        p += 2
        n -= 2
    if n:
        # A lone last byte is the high byte of a zero-padded big-endian word.
        if MPTUN_CSUM_LITTLE_ENDIAN:
            a3 += p[0]
        else:
            a3 += (<uint64_t>p[0]) << 8
    # Each accumulator is below 2^63, so fold them pairwise to stay clear of overflow.
    return <uint64_t>csum_fold(a0 + a1) + csum_fold(a2 + a3)


cdef inline uint16_t csum_sum(const unsigned char* p, Py_ssize_t n, uint32_t init) noexcept nogil:
    """Folded sum of n bytes as big-endian words (odd tail zero-padded) plus init, a previous
    sum: chaining this way is exact when the earlier bytes had even length (else csum_sum_at)."""
    cdef uint16_t s = csum_fold(_native_acc(p, n))
    if MPTUN_CSUM_LITTLE_ENDIAN:
        s = _bswap16(s)
    return csum_fold(<uint64_t>s + init)


cdef inline uint16_t csum_sum_at(const unsigned char* p, Py_ssize_t n, Py_ssize_t offset, uint32_t init) noexcept nogil:
    """As csum_sum for bytes at byte `offset` of a longer stream: an odd offset swaps the bytes
    of this part's sum (RFC 1071 section 2(B)), so multi-segment sums chain at any length."""
    cdef uint16_t s = csum_sum(p, n, 0)
    if offset & 1:
        s = _bswap16(s)
    return csum_fold(<uint64_t>s + init)


cdef inline uint32_t _be16(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint16_t csum_ipv4_header(const unsigned char* ip, Py_ssize_t hlen) noexcept nogil:
    """The checksum to store in an IPv4 header of hlen bytes."""
    # Bytes 10-11 (the checksum field) are left out, as if zero.
    cdef uint16_t s = csum_sum(ip, 10, 0)
    if hlen > 12:
        s = csum_sum(ip + 12, hlen - 12, s)
    return <uint16_t>~s


cdef inline uint16_t csum_pseudo_v4(const unsigned char* src, const unsigned char* dst, uint32_t l4_len) noexcept nogil:
    """Folded, non-inverted pseudo-header sum: what a CHECKSUM_PARTIAL (NEEDS_CSUM) packet
    carries in its TCP checksum field (the kernel's ~csum_tcpudp_magic())."""
    # RFC 9293 section 3.1: source, destination, zero + protocol 6, TCP length.
    cdef uint64_t acc = _be16(src) + _be16(src + 2) + _be16(dst) + _be16(dst + 2)
    acc += 6 + (l4_len >> 16) + (l4_len & 0xffff)
    return csum_fold(acc)


cdef inline uint16_t csum_pseudo_v6(const unsigned char* src, const unsigned char* dst, uint32_t l4_len) noexcept nogil:
    """As csum_pseudo_v4, for IPv6 (~csum_ipv6_magic())."""
    # RFC 8200 section 8.1: source, destination, 32-bit upper-layer length, next header 6.
    cdef uint64_t acc = 6 + (l4_len >> 16) + (l4_len & 0xffff)
    cdef int i
    for i in range(0, 16, 2):
        acc += _be16(src + i) + _be16(dst + i)
    return csum_fold(acc)


cdef inline uint16_t _tcp_body_sum(const unsigned char* tcp, Py_ssize_t n, uint16_t init) noexcept nogil:
    # The segment without its checksum field (bytes 16-17), which counts as zero.
    if n <= 16:
        return csum_sum(tcp, n, init)
    init = csum_sum(tcp, 16, init)
    if n > 18:
        init = csum_sum(tcp + 18, n - 18, init)
    return init


cdef inline uint16_t csum_tcp_v4(const unsigned char* src, const unsigned char* dst, const unsigned char* tcp, Py_ssize_t n) noexcept nogil:
    """Full TCP checksum of an n-byte segment; its checksum field counts as zero."""
    return <uint16_t>~_tcp_body_sum(tcp, n, csum_pseudo_v4(src, dst, <uint32_t>n))


cdef inline uint16_t csum_tcp_v6(const unsigned char* src, const unsigned char* dst, const unsigned char* tcp, Py_ssize_t n) noexcept nogil:
    """Full TCP checksum of an n-byte segment; its checksum field counts as zero."""
    return <uint16_t>~_tcp_body_sum(tcp, n, csum_pseudo_v6(src, dst, <uint32_t>n))


cdef inline uint16_t csum_update16(uint16_t check, uint16_t old, uint16_t new) noexcept nogil:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'): a stored checksum after a 16-bit word changed."""
    # RFC 1624 eqn. 3; unlike eqn. 2 it never turns a valid checksum into 0xffff (-0), so the
    # result equals a full recomputation whenever the covered data is not all zero (RFC 1624 s. 3).
    return <uint16_t>~csum_fold(<uint64_t>(<uint16_t>~check) + (<uint16_t>~old) + new)


cdef inline uint16_t csum_update32(uint16_t check, uint32_t old, uint32_t new) noexcept nogil:
    """RFC 1624 eqn. 3 for an aligned 32-bit word."""
    cdef uint64_t acc = <uint16_t>~check
    acc += (<uint16_t>~(old >> 16)) + (<uint16_t>~(old & 0xffff))
    acc += (new >> 16) + (new & 0xffff)
    return <uint16_t>~csum_fold(acc)


cdef inline uint16_t csum_update_addr4(uint16_t check, const unsigned char* old, const unsigned char* new) noexcept nogil:
    """RFC 1624 eqn. 3 for a changed IPv4 address (4 bytes each, any alignment)."""
    cdef uint64_t acc = <uint16_t>~check
    acc += (<uint16_t>~_be16(old)) + (<uint16_t>~_be16(old + 2))
    acc += _be16(new) + _be16(new + 2)
    return <uint16_t>~csum_fold(acc)


cdef inline uint16_t csum_update_addr6(uint16_t check, const unsigned char* old, const unsigned char* new) noexcept nogil:
    """RFC 1624 eqn. 3 for a changed IPv6 address (16 bytes each, any alignment)."""
    cdef uint64_t acc = <uint16_t>~check
    cdef int i
    for i in range(0, 16, 2):
        acc += (<uint16_t>~_be16(old + i)) + _be16(new + i)
    return <uint16_t>~csum_fold(acc)


cdef inline uint16_t csum_update_sum(uint16_t check, uint16_t old_sum, uint16_t new_sum) noexcept nogil:
    """RFC 1624 eqn. 3 for a whole region, given the folded sums of its old and new contents."""
    return <uint16_t>~csum_fold(<uint64_t>(<uint16_t>~check) + (<uint16_t>~old_sum) + new_sum)


cdef inline uint16_t csum_dss(uint64_t dsn, uint32_t ssn, uint16_t data_len, uint16_t payload_sum) noexcept nogil:
    """RFC 8684 section 3.3 DSS checksum from the folded sum of the mapped payload."""
    # RFC 8684 section 3.3: pseudo-header of the 64-bit DSN (always 64 bits here, even when the
    # option carries 32), the relative subflow sequence number, the data-level length and a
    # zero 16-bit checksum word, followed by the payload; the result is inverted like TCP's.
    cdef uint64_t acc = payload_sum
    acc += (dsn >> 48) + ((dsn >> 32) & 0xffff) + ((dsn >> 16) & 0xffff) + (dsn & 0xffff)
    acc += (ssn >> 16) + (ssn & 0xffff)
    acc += data_len
    return <uint16_t>~csum_fold(acc)
