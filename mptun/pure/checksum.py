"""Pure-Python twin of mptun._fast.checksum: RFC 1071 sums, IPv4/TCP checksums, the CHECKSUM_PARTIAL
pseudo-header sum, RFC 1624 incremental updates and the RFC 8684 section 3.3 DSS checksum.

Same Python API and results as the compiled module; values are big-endian field values as ints,
sums are folded and not inverted, checksums are inverted.
"""

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def _u(value, mask):
    # Mirrors the compiled wrappers, whose C integer arguments reject out-of-range values.
    if not 0 <= value <= mask:
        raise OverflowError(f"value {value} out of range")
    return value


def fold(acc):
    """Fold a non-negative int of up to 64 bits to 16 bits with end-around carry (not inverted)."""
    acc = _u(acc, _U64)
    while acc >> 16:
        acc = (acc & _U16) + (acc >> 16)
    return acc


def _need(b, n, what):
    # Mirrors the compiled wrappers' length checks (a ValueError, also under python -O).
    if len(b) != n:
        raise ValueError(f"{what} must be {n} bytes, not {len(b)}")


def _sum(data):
    data = bytes(data)
    if len(data) & 1:
        data += b"\0"
    # One big-endian int per buffer and a fold by 2^16 - 1 would lose the -0/+0 distinction;
    # summing words keeps exactly the ones-complement result of a word-by-word sum.
    acc = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while acc >> 16:
        acc = (acc & _U16) + (acc >> 16)
    return acc


def _swap(s):
    return ((s >> 8) | (s << 8)) & _U16


def ones_sum(data, init=0, offset=0):
    """Folded ones-complement sum of data's big-endian words plus init; offset is data's byte
    position in a longer stream (only its parity matters)."""
    if offset < 0:
        raise ValueError(f"offset must not be negative, not {offset}")
    s = _sum(data)
    if offset & 1:
        s = _swap(s)
    return fold(s + _u(init, _U32))


def internet_checksum(data):
    """RFC 1071 checksum of data: the inverted folded sum."""
    return ~_sum(data) & _U16


def ipv4_header_checksum(header):
    """Checksum for an IPv4 header (all of `header`; its checksum field counts as zero)."""
    header = bytes(header)
    if not 20 <= len(header) <= 60 or len(header) % 4:
        raise ValueError(f"an IPv4 header is 20..60 bytes in 4-byte words, not {len(header)}")
    return ~_sum(header[:10] + b"\0\0" + header[12:]) & _U16


def _pseudo(src, dst, l4_len, width):
    src, dst = bytes(src), bytes(dst)
    _need(src, width, "src")
    _need(dst, width, "dst")
    l4_len = _u(l4_len, _U32)
    return fold(_sum(src + dst) + 6 + (l4_len >> 16) + (l4_len & _U16))


def pseudo_partial_v4(src, dst, l4_len):
    """Folded, non-inverted IPv4 pseudo-header sum: the TCP checksum field of a NEEDS_CSUM packet."""
    return _pseudo(src, dst, l4_len, 4)


def pseudo_partial_v6(src, dst, l4_len):
    """Folded, non-inverted IPv6 pseudo-header sum: the TCP checksum field of a NEEDS_CSUM packet."""
    return _pseudo(src, dst, l4_len, 16)


def _tcp(src, dst, segment, width):
    segment = bytes(segment)
    if len(segment) < 20:
        raise ValueError(f"a TCP segment is at least 20 bytes, not {len(segment)}")
    body = segment[:16] + b"\0\0" + segment[18:]
    return ~fold(_pseudo(src, dst, len(segment), width) + _sum(body)) & _U16


def tcp_checksum_v4(src, dst, segment):
    """Full TCP checksum over the IPv4 pseudo-header and segment (its checksum field counts as zero)."""
    return _tcp(src, dst, segment, 4)


def tcp_checksum_v6(src, dst, segment):
    """Full TCP checksum over the IPv6 pseudo-header and segment (its checksum field counts as zero)."""
    return _tcp(src, dst, segment, 16)


def _update(check, olds, news):
    # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over any number of changed words.
    acc = ~_u(check, _U16) & _U16
    acc += sum(~w & _U16 for w in olds) + sum(news)
    return ~fold(acc) & _U16


def _words(b):
    b = bytes(b)
    return [int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2)]


def update16(check, old, new):
    """RFC 1624 eqn. 3: the checksum after a 16-bit word changed from old to new."""
    return _update(check, [_u(old, _U16)], [_u(new, _U16)])


def update32(check, old, new):
    """RFC 1624 eqn. 3 for an aligned 32-bit word (e.g. a sequence number)."""
    old, new = _u(old, _U32), _u(new, _U32)
    return _update(check, [old >> 16, old & _U16], [new >> 16, new & _U16])


def update_addr4(check, old, new):
    """RFC 1624 eqn. 3 for a changed IPv4 address (4 bytes each)."""
    _need(old, 4, "old")
    _need(new, 4, "new")
    return _update(check, _words(old), _words(new))


def update_addr6(check, old, new):
    """RFC 1624 eqn. 3 for a changed IPv6 address (16 bytes each)."""
    _need(old, 16, "old")
    _need(new, 16, "new")
    return _update(check, _words(old), _words(new))


def update_sum(check, old_sum, new_sum):
    """RFC 1624 eqn. 3 for a region whose folded sum changed from old_sum to new_sum."""
    return _update(check, [_u(old_sum, _U16)], [_u(new_sum, _U16)])


def dss_checksum_from_sum(dsn, ssn, data_len, payload_sum):
    """As dss_checksum, from the folded sum of the payload (see ones_sum's offset for chaining)."""
    # RFC 8684 section 3.3: 64-bit DSN, relative subflow sequence number, data-level length,
    # a zero checksum word, then the payload; inverted like TCP's checksum.
    header = (_u(dsn, _U64).to_bytes(8, "big") + _u(ssn, _U32).to_bytes(4, "big")
              + _u(data_len, _U16).to_bytes(2, "big") + b"\0\0")
    return ~fold(_sum(header) + _u(payload_sum, _U16)) & _U16


def dss_checksum(dsn, ssn, data_len, payload):
    """RFC 8684 section 3.3 DSS checksum of a mapping (64-bit DSN, relative subflow sequence
    number, data-level length) and its payload."""
    return dss_checksum_from_sum(dsn, ssn, data_len, _sum(payload))


def complete_partial(buf, csum_start, csum_offset, end=None):
    """Finish a NEEDS_CSUM checksum in place as the kernel or a NIC does: sum buf[csum_start:end]
    (the field holds the pseudo-header sum), store the inverted result at csum_start+csum_offset."""
    stop = len(buf) if end is None else end
    # The 2-byte field lies inside buf[csum_start:stop], which lies inside buf (no negative indexing).
    if not (0 <= csum_start and 0 <= csum_offset and csum_start + csum_offset + 2 <= stop <= len(buf)):
        raise ValueError(f"checksum at {csum_start}+{csum_offset} over {csum_start}..{stop} "
                         f"does not fit a buffer of {len(buf)} bytes")
    c = ~_sum(buf[csum_start:stop]) & _U16
    buf[csum_start + csum_offset:csum_start + csum_offset + 2] = c.to_bytes(2, "big")
    return c
