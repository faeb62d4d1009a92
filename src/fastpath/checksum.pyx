# cython: language_level=3
"""Internet checksums for the datapath: RFC 1071 sums, IPv4/TCP checksums over both pseudo-headers,
the CHECKSUM_PARTIAL pseudo-header sum, RFC 1624 incremental updates and the RFC 8684 DSS checksum.

C callers cimport checksum.pxd (all `noexcept nogil`); the Python wrappers take bytes-like objects.
Values are big-endian field values as ints; sums are folded and not inverted, checksums inverted.
"""

from libc.stdint cimport uint16_t, uint32_t, uint64_t

# checksum.pxd is an inline header, not this module's own pxd (docs/datapath.md, "Build notes"):
# its names are cimported like any other's, and need no runtime import.
from checksum cimport (
    csum_dss, csum_fold, csum_ipv4_header, csum_pseudo_v4, csum_pseudo_v6, csum_sum, csum_sum_at,
    csum_tcp_v4, csum_tcp_v6, csum_update16, csum_update32, csum_update_addr4, csum_update_addr6,
    csum_update_sum,
)


# ---- Python wrappers -------------------------------------------------------------------------

cdef inline const unsigned char* _ptr(const unsigned char[::1] b) noexcept:
    return &b[0] if b.shape[0] else NULL


# The build turns bounds checks off and `python -O` strips asserts: every length the C code
# trusts is checked here, as the pure twin does, with a ValueError.
cdef inline int _need(const unsigned char[::1] b, Py_ssize_t n, str what) except -1:
    if b.shape[0] != n:
        raise ValueError(f"{what} must be {n} bytes, not {b.shape[0]}")
    return 0


cdef inline int _need_pair(const unsigned char[::1] a, const unsigned char[::1] b, Py_ssize_t n,
                           str what_a, str what_b) except -1:
    _need(a, n, what_a)
    _need(b, n, what_b)
    return 0


cdef inline int _need_segment(const unsigned char[::1] segment) except -1:
    if segment.shape[0] < 20:
        raise ValueError(f"a TCP segment is at least 20 bytes, not {segment.shape[0]}")
    return 0


def fold(acc):
    """Fold a non-negative int of up to 64 bits to 16 bits with end-around carry (not inverted)."""
    return csum_fold(<uint64_t>acc)


def ones_sum(const unsigned char[::1] data not None, uint32_t init=0, Py_ssize_t offset=0):
    """Folded ones-complement sum of data's big-endian words plus init; offset is data's byte
    position in a longer stream (only its parity matters)."""
    if offset < 0:
        raise ValueError(f"offset must not be negative, not {offset}")
    return csum_sum_at(_ptr(data), data.shape[0], offset, init)


def internet_checksum(const unsigned char[::1] data not None):
    """RFC 1071 checksum of data: the inverted folded sum."""
    return <uint16_t>~csum_sum(_ptr(data), data.shape[0], 0)


def ipv4_header_checksum(const unsigned char[::1] header not None):
    """Checksum for an IPv4 header (all of `header`; its checksum field counts as zero)."""
    if not 20 <= header.shape[0] <= 60 or header.shape[0] % 4:
        raise ValueError(f"an IPv4 header is 20..60 bytes in 4-byte words, not {header.shape[0]}")
    return csum_ipv4_header(&header[0], header.shape[0])


def pseudo_partial_v4(const unsigned char[::1] src not None, const unsigned char[::1] dst not None,
                      uint32_t l4_len):
    """Folded, non-inverted IPv4 pseudo-header sum: the TCP checksum field of a NEEDS_CSUM packet."""
    _need_pair(src, dst, 4, "src", "dst")
    return csum_pseudo_v4(&src[0], &dst[0], l4_len)


def pseudo_partial_v6(const unsigned char[::1] src not None, const unsigned char[::1] dst not None,
                      uint32_t l4_len):
    """Folded, non-inverted IPv6 pseudo-header sum: the TCP checksum field of a NEEDS_CSUM packet."""
    _need_pair(src, dst, 16, "src", "dst")
    return csum_pseudo_v6(&src[0], &dst[0], l4_len)


def tcp_checksum_v4(const unsigned char[::1] src not None, const unsigned char[::1] dst not None,
                    const unsigned char[::1] segment not None):
    """Full TCP checksum over the IPv4 pseudo-header and segment (its checksum field counts as zero)."""
    _need_pair(src, dst, 4, "src", "dst")
    _need_segment(segment)
    return csum_tcp_v4(&src[0], &dst[0], &segment[0], segment.shape[0])


def tcp_checksum_v6(const unsigned char[::1] src not None, const unsigned char[::1] dst not None,
                    const unsigned char[::1] segment not None):
    """Full TCP checksum over the IPv6 pseudo-header and segment (its checksum field counts as zero)."""
    _need_pair(src, dst, 16, "src", "dst")
    _need_segment(segment)
    return csum_tcp_v6(&src[0], &dst[0], &segment[0], segment.shape[0])


def update16(uint16_t check, uint16_t old, uint16_t new):
    """RFC 1624 eqn. 3: the checksum after a 16-bit word changed from old to new."""
    return csum_update16(check, old, new)


def update32(uint16_t check, uint32_t old, uint32_t new):
    """RFC 1624 eqn. 3 for an aligned 32-bit word (e.g. a sequence number)."""
    return csum_update32(check, old, new)


def update_addr4(uint16_t check, const unsigned char[::1] old not None, const unsigned char[::1] new not None):
    """RFC 1624 eqn. 3 for a changed IPv4 address (4 bytes each)."""
    _need_pair(old, new, 4, "old", "new")
    return csum_update_addr4(check, &old[0], &new[0])


def update_addr6(uint16_t check, const unsigned char[::1] old not None, const unsigned char[::1] new not None):
    """RFC 1624 eqn. 3 for a changed IPv6 address (16 bytes each)."""
    _need_pair(old, new, 16, "old", "new")
    return csum_update_addr6(check, &old[0], &new[0])


def update_sum(uint16_t check, uint16_t old_sum, uint16_t new_sum):
    """RFC 1624 eqn. 3 for a region whose folded sum changed from old_sum to new_sum."""
    return csum_update_sum(check, old_sum, new_sum)


def dss_checksum(uint64_t dsn, uint32_t ssn, uint16_t data_len, const unsigned char[::1] payload not None):
    """RFC 8684 section 3.3 DSS checksum of a mapping (64-bit DSN, relative subflow sequence
    number, data-level length) and its payload."""
    return csum_dss(dsn, ssn, data_len, csum_sum(_ptr(payload), payload.shape[0], 0))


def dss_checksum_from_sum(uint64_t dsn, uint32_t ssn, uint16_t data_len, uint16_t payload_sum):
    """As dss_checksum, from the folded sum of the payload (see ones_sum's offset for chaining)."""
    return csum_dss(dsn, ssn, data_len, payload_sum)


def complete_partial(unsigned char[::1] buf not None, Py_ssize_t csum_start, Py_ssize_t csum_offset, end=None):
    """Finish a NEEDS_CSUM checksum in place as the kernel or a NIC does: sum buf[csum_start:end]
    (the field holds the pseudo-header sum), store the inverted result at csum_start+csum_offset."""
    cdef Py_ssize_t stop = buf.shape[0] if end is None else end
    # The 2-byte field lies inside buf[csum_start:stop], which lies inside buf.
    if not (0 <= csum_start and 0 <= csum_offset and csum_start + csum_offset + 2 <= stop <= buf.shape[0]):
        raise ValueError(f"checksum at {csum_start}+{csum_offset} over {csum_start}..{stop} "
                         f"does not fit a buffer of {buf.shape[0]} bytes")
    cdef uint16_t c = <uint16_t>~csum_sum(&buf[csum_start], stop - csum_start, 0)
    buf[csum_start + csum_offset] = c >> 8
    buf[csum_start + csum_offset + 1] = c & 0xff
    return c
