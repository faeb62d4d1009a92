"""Pure-Python twin of mptun._fast.rewrite: PacketBatch and one-packet helpers for in-place rewriting of
IPv4/IPv6 TCP packets (NAT, option insertion/MPTCP stripping, MSS clamp, Ethernet header).

Same API, statuses, counters and output bytes as the compiled module (see rewrite.pxd for the
contract); a slot that is not ok is left unchanged. Slow: for tests, debugging and MPTUN_IMPL=pure.
"""

from mptun.pure import checksum as _ck

OK = 0
NO_ROOM = 1
NO_HEADROOM = 2
BAD_REQUEST = 3
MALFORMED_VNET = 4
MALFORMED_TCP_OPTIONS = 5
_PACKET_REASONS = ("truncated", "ip_version", "ipv4_header_len", "ip_total_len", "not_tcp",
                   "fragment", "tcp_header_len", "ipv6_extension_headers")
(MALFORMED_TRUNCATED, MALFORMED_IP_VERSION, MALFORMED_IPV4_HEADER_LEN, MALFORMED_IP_TOTAL_LEN,
 MALFORMED_NOT_TCP, MALFORMED_FRAGMENT, MALFORMED_TCP_HEADER_LEN,
 MALFORMED_IPV6_EXTENSION_HEADERS) = range(MALFORMED_TCP_OPTIONS + 1, MALFORMED_TCP_OPTIONS + 9)

STATUS_NAMES = ("ok", "no room", "no headroom", "bad request", "malformed:vnet_hdr",
                "malformed:tcp_options") + tuple("malformed:" + r for r in _PACKET_REASONS)
COUNTER_NAMES = STATUS_NAMES + ("packets", "nat", "options_rewritten", "mptcp_stripped", "sack_trimmed",
                                "sack_dropped", "nop_dropped", "mss_clamped", "padding_trimmed",
                                "eth_pushed")
_C = {name: i for i, name in enumerate(COUNTER_NAMES)}

VNET_HDR_F_NEEDS_CSUM = 1
VNET_HDR_F_DATA_VALID = 2
VNET_HDR_GSO_NONE = 0
VNET_HDR_GSO_TCPV4 = 1
VNET_HDR_GSO_TCPV6 = 4
VNET_HDR_GSO_ECN = 0x80
VNET_HDR_LENGTHS = (0, 10, 12)
MAX_PACKET = 65535
MAX_OPTIONS = 40
DEFAULT_HEADROOM = 128

_ETH_HEADER_LEN = 14
_TCP_MIN = 20
_TCP_CHECK = 16
_OPT_EOL, _OPT_NOP, _OPT_MSS, _OPT_SACK, _OPT_MPTCP = 0, 1, 2, 5, 30
_SACK_ONE_BLOCK = 10
_TCP_SYN = 0x02

_OP_STRIP_MPTCP = 0x01
_OP_INSERT_OPTIONS = 0x02
_OP_CLAMP_MSS = 0x04
_OP_NAT_SRC = 0x08
_OP_NAT_DST = 0x10
_OP_NAT_SPORT = 0x20
_OP_NAT_DPORT = 0x40
_OP_PUSH_ETH = 0x80
_OPS_OPTIONS = _OP_STRIP_MPTCP | _OP_INSERT_OPTIONS
_OPS_NAT = _OP_NAT_SRC | _OP_NAT_DST | _OP_NAT_SPORT | _OP_NAT_DPORT


def status_name(status):
    """The name of an RW status code ("ok", "no room", "malformed:<reason>", ...)."""
    return STATUS_NAMES[status]


def _be16(b, i):
    return (b[i] << 8) | b[i + 1]


def _put16(b, i, v):
    b[i] = (v >> 8) & 0xFF
    b[i + 1] = v & 0xFF


def _le16(b, i):
    return b[i] | (b[i + 1] << 8)


def _put_le16(b, i, v):
    b[i] = v & 0xFF
    b[i + 1] = (v >> 8) & 0xFF


class _Pkt:
    """One packet in buf: data is the absolute offset of its first byte, headroom what lies free before."""

    __slots__ = ("buf", "data", "length", "headroom", "vnet_len", "l2_len", "vnet_flags", "gso_type",
                 "version", "addr_len", "src_off", "dst_off", "ip_total_len", "tcp_offset",
                 "tcp_header_len", "options_len", "payload_offset", "payload_len", "sport", "dport",
                 "seq", "ack", "flags", "window", "checksum")

    def __init__(self, buf, data, length, headroom, vnet_len):
        self.buf, self.data, self.length, self.headroom, self.vnet_len = buf, data, length, headroom, vnet_len
        self.l2_len = 0
        self.vnet_flags = 0
        self.gso_type = 0

    @property
    def ip(self):
        return self.data + self.vnet_len + self.l2_len


def _parse_tcp(p, b, ip, end):
    # end: bytes of the IP datagram from ip (its total length)
    t = p.tcp_offset
    if end - t < _TCP_MIN:
        return MALFORMED_TRUNCATED
    th = ip + t
    p.sport, p.dport = _be16(b, th), _be16(b, th + 2)
    p.seq = int.from_bytes(b[th + 4:th + 8], "big")
    p.ack = int.from_bytes(b[th + 8:th + 12], "big")
    p.flags = b[th + 13]
    p.window = _be16(b, th + 14)
    p.checksum = _be16(b, th + 16)
    p.tcp_header_len = (b[th + 12] >> 4) * 4
    if p.tcp_header_len < _TCP_MIN:
        return MALFORMED_TCP_HEADER_LEN
    if end - t < p.tcp_header_len:
        return MALFORMED_TRUNCATED
    p.options_len = p.tcp_header_len - _TCP_MIN
    p.payload_offset = t + p.tcp_header_len
    p.payload_len = end - p.payload_offset
    return OK


def _parse_ip(p, b, ip, length):
    # Mirrors packet.pxd's parse_packet(): same checks in the same order.
    if length < 1:
        return MALFORMED_TRUNCATED
    p.version = b[ip] >> 4
    if p.version == 4:
        if length < 20:
            return MALFORMED_TRUNCATED
        ihl = (b[ip] & 0x0F) * 4
        if ihl < 20:
            return MALFORMED_IPV4_HEADER_LEN
        if length < ihl:
            return MALFORMED_TRUNCATED
        total = _be16(b, ip + 2)
        p.addr_len, p.src_off, p.dst_off = 4, 12, 16
        p.ip_total_len = total
        if total < ihl:
            return MALFORMED_IP_TOTAL_LEN
        if total > length:
            return MALFORMED_TRUNCATED
        if _be16(b, ip + 6) & 0x3FFF:
            return MALFORMED_FRAGMENT
        if b[ip + 9] != 6:
            return MALFORMED_NOT_TCP
        p.tcp_offset = ihl
        return _parse_tcp(p, b, ip, total)
    if p.version == 6:
        if length < 40:
            return MALFORMED_TRUNCATED
        total = 40 + _be16(b, ip + 4)
        p.ip_total_len = total
        p.addr_len, p.src_off, p.dst_off = 16, 8, 24
        nh = b[ip + 6]
        pos = 40
        if total > length:
            return MALFORMED_TRUNCATED
        walked = 0
        while nh in (0, 43, 60):
            if walked == 8:
                return MALFORMED_IPV6_EXTENSION_HEADERS
            if total - pos < 8:
                return MALFORMED_TRUNCATED
            nh, pos = b[ip + pos], pos + (b[ip + pos + 1] + 1) * 8
            walked += 1
            if pos > total:
                return MALFORMED_TRUNCATED
        if nh == 44:
            return MALFORMED_FRAGMENT
        if nh != 6:
            return MALFORMED_NOT_TCP
        p.tcp_offset = pos
        return _parse_tcp(p, b, ip, total)
    return MALFORMED_IP_VERSION


def _rw_parse(p):
    b = p.buf
    p.l2_len = 0
    p.vnet_flags = 0
    p.gso_type = VNET_HDR_GSO_NONE
    if p.length < p.vnet_len:
        return MALFORMED_TRUNCATED
    ip = p.data + p.vnet_len
    status = _parse_ip(p, b, ip, p.length - p.vnet_len)
    if status != OK:
        return status
    if p.version == 6 and p.tcp_offset > 40:
        # RFC 8200 section 8.1: the pseudo-header then holds the final destination from the
        # routing header, which neither NAT nor the partial sum here accounts for.
        nh, pos = b[ip + 6], 40
        while pos < p.tcp_offset:
            if nh == 43:
                return MALFORMED_IPV6_EXTENSION_HEADERS
            nh, pos = b[ip + pos], pos + (b[ip + pos + 1] + 1) * 8
    if p.vnet_len:
        v = p.data
        p.vnet_flags = b[v]
        gso = b[v + 1] & ~VNET_HDR_GSO_ECN
        p.gso_type = gso
        if gso == VNET_HDR_GSO_TCPV4:
            if p.version != 4:
                return MALFORMED_VNET
        elif gso == VNET_HDR_GSO_TCPV6:
            if p.version != 6:
                return MALFORMED_VNET
        elif gso != VNET_HDR_GSO_NONE:
            return MALFORMED_VNET
        if p.vnet_flags & VNET_HDR_F_NEEDS_CSUM:
            if _le16(b, v + 6) != p.tcp_offset or _le16(b, v + 8) != _TCP_CHECK:
                return MALFORMED_VNET
    return OK


def _trim(p, counters):
    want = p.vnet_len + p.l2_len + p.ip_total_len
    if p.length > want:
        p.length = want
        counters[_C["padding_trimmed"]] += 1


def _refresh_partial(p):
    b, ip = p.buf, p.ip
    l4_len = p.ip_total_len - p.tcp_offset
    src = bytes(b[ip + p.src_off:ip + p.src_off + p.addr_len])
    dst = bytes(b[ip + p.dst_off:ip + p.dst_off + p.addr_len])
    pseudo = _ck.pseudo_partial_v4 if p.version == 4 else _ck.pseudo_partial_v6
    _put16(b, ip + p.tcp_offset + _TCP_CHECK, pseudo(src, dst, l4_len))


def _nat(p, src, dst, sport, dport, counters):
    if p.l2_len:
        return BAD_REQUEST
    b, ip = p.buf, p.ip
    tcp = ip + p.tcp_offset
    partial = p.vnet_flags & VNET_HDR_F_NEEDS_CSUM
    v4 = p.version == 4
    update = _ck.update_addr4 if v4 else _ck.update_addr6
    check = _be16(b, tcp + _TCP_CHECK)
    if v4 and (src is not None or dst is not None):
        ipcheck = _be16(b, ip + 10)
        if src is not None:
            ipcheck = _ck.update_addr4(ipcheck, bytes(b[ip + 12:ip + 16]), src)
        if dst is not None:
            ipcheck = _ck.update_addr4(ipcheck, bytes(b[ip + 16:ip + 20]), dst)
        _put16(b, ip + 10, ipcheck)
    for new, off in ((src, p.src_off), (dst, p.dst_off)):
        if new is None:
            continue
        if not partial:
            check = update(check, bytes(b[ip + off:ip + off + p.addr_len]), new)
        b[ip + off:ip + off + p.addr_len] = new
    if sport is not None:
        check = _ck.update16(check, p.sport, sport)
        _put16(b, tcp, sport)
        p.sport = sport
    if dport is not None:
        check = _ck.update16(check, p.dport, dport)
        _put16(b, tcp + 2, dport)
        p.dport = dport
    if partial:
        if src is not None or dst is not None:
            _refresh_partial(p)
    else:
        _put16(b, tcp + _TCP_CHECK, check)
        p.checksum = check
    counters[_C["nat"]] += 1
    return OK


def _walk(opts):
    """[(kind, offset, length)] up to an EOL, or None if a length byte is < 2 or runs past the end."""
    out, i, n = [], 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == _OPT_EOL:
            break
        if kind == _OPT_NOP:
            ln = 1
        else:
            if n - i < 2:
                return None
            ln = opts[i + 1]
            if ln < 2 or ln > n - i:
                return None
        out.append((kind, i, ln))
        i += ln
    return out


def _whole(opts):
    """True if opts is whole options end to end (see rw_options_whole in rewrite.pxd)."""
    if len(opts) > MAX_OPTIONS:
        return False
    spans = _walk(opts)
    if spans is None:
        return False
    if not spans:
        return len(opts) == 0
    # The walk stops at an EOL: then the options cover less than opts.
    _, off, ln = spans[-1]
    return off + ln == len(opts)


def _build(opts, spans, strip, sack_mode, keep_nops):
    def dropped(kind):
        return kind == _OPT_NOP or (strip and kind == _OPT_MPTCP) or (sack_mode == 2 and kind == _OPT_SACK)

    last = max((i for i, (kind, _, _) in enumerate(spans) if not dropped(kind)), default=-1)
    out = bytearray()
    for kind, off, ln in spans[:last + 1]:
        if kind == _OPT_NOP:
            if keep_nops:
                out.append(_OPT_NOP)
        elif strip and kind == _OPT_MPTCP:
            continue
        elif kind == _OPT_SACK and sack_mode == 1 and ln > _SACK_ONE_BLOCK:
            out += bytes((_OPT_SACK, _SACK_ONE_BLOCK)) + opts[off + 2:off + _SACK_ONE_BLOCK]
        elif kind == _OPT_SACK and sack_mode == 2:
            continue
        else:
            out += opts[off:off + ln]
    return bytes(out)


# (sack_mode, keep_nops) in the order tried; see rw_set_options in rewrite.pxd.
_LAYOUTS = ((0, True), (1, True), (1, False), (2, True), (2, False))


def _set_options(p, strip, insert, reserve, counters):
    if p.l2_len or len(insert) > MAX_OPTIONS:
        return BAD_REQUEST
    if insert and not _whole(insert):
        return BAD_REQUEST
    b, ip = p.buf, p.ip
    tcp = ip + p.tcp_offset
    old_len = p.options_len
    opts = bytes(b[tcp + _TCP_MIN:tcp + _TCP_MIN + old_len])
    spans = _walk(opts)
    if spans is None:
        return MALFORMED_TCP_OPTIONS
    stripped = sum(1 for s in spans if s[0] == _OPT_MPTCP) if strip else 0
    sacks = sum(1 for s in spans if s[0] == _OPT_SACK)
    sacks_long = sum(1 for s in spans if s[0] == _OPT_SACK and s[2] > _SACK_ONE_BLOCK)
    nops = sum(1 for s in spans if s[0] == _OPT_NOP)
    if stripped == 0 and not insert:
        return OK
    for layout, (sack_mode, keep_nops) in enumerate(_LAYOUTS):
        if layout == 1 and sacks_long == 0:
            continue
        if layout in (2, 4) and nops == 0:
            continue
        if layout in (3, 4) and sacks == 0:
            continue
        kept = _build(opts, spans, strip, sack_mode, keep_nops)
        new_len = (len(kept) + len(insert) + 3) & ~3
        if new_len <= MAX_OPTIONS:
            break
    else:
        return NO_ROOM
    delta = new_len - old_len
    if p.ip_total_len + delta > MAX_PACKET:
        return NO_ROOM
    if p.headroom - delta < reserve:
        return NO_HEADROOM
    area = kept + bytes(insert) + bytes([_OPT_NOP]) * (new_len - len(kept) - len(insert))
    word12 = _be16(b, tcp + 12)
    new_word12 = (((_TCP_MIN + new_len) >> 2) << 12) | (word12 & 0x0FFF)
    partial = p.vnet_flags & VNET_HDR_F_NEEDS_CSUM
    check = _be16(b, tcp + _TCP_CHECK)
    if not partial:
        check = _ck.update_sum(check, _ck.ones_sum(opts, word12), _ck.ones_sum(area, new_word12))
    old_l4 = p.ip_total_len - p.tcp_offset
    moved = p.vnet_len + p.tcp_offset + _TCP_MIN
    new_data = p.data - delta
    b[new_data:new_data + moved] = b[p.data:p.data + moved]
    b[new_data + moved:new_data + moved + new_len] = area
    p.data = new_data
    p.length += delta
    p.headroom -= delta
    ip = p.ip
    tcp = ip + p.tcp_offset
    _put16(b, tcp + 12, new_word12)
    if p.version == 4:
        old_ip_len = _be16(b, ip + 2)
        _put16(b, ip + 2, old_ip_len + delta)
        _put16(b, ip + 10, _ck.update16(_be16(b, ip + 10), old_ip_len, old_ip_len + delta))
    else:
        _put16(b, ip + 4, _be16(b, ip + 4) + delta)
    p.ip_total_len += delta
    p.tcp_header_len = _TCP_MIN + new_len
    p.options_len = new_len
    p.payload_offset = p.tcp_offset + p.tcp_header_len
    if partial:
        _refresh_partial(p)
    else:
        check = _ck.update16(check, old_l4, old_l4 + delta)
        _put16(b, tcp + _TCP_CHECK, check)
        p.checksum = check
    if p.vnet_len and (p.gso_type != VNET_HDR_GSO_NONE or _le16(b, p.data + 2)):
        _put_le16(b, p.data + 2, p.tcp_offset + p.tcp_header_len)
    counters[_C["options_rewritten"]] += 1
    if strip:
        counters[_C["mptcp_stripped"]] += stripped
    if sack_mode == 1:
        counters[_C["sack_trimmed"]] += sacks_long
    elif sack_mode == 2:
        counters[_C["sack_dropped"]] += sacks
    if not keep_nops:
        counters[_C["nop_dropped"]] += 1
    return OK


def _clamp_mss(p, mss, counters):
    if p.l2_len:
        return BAD_REQUEST
    if not p.flags & _TCP_SYN:
        return OK
    b = p.buf
    tcp = p.ip + p.tcp_offset
    spans = _walk(bytes(b[tcp + _TCP_MIN:tcp + _TCP_MIN + p.options_len]))
    if spans is None:
        return MALFORMED_TCP_OPTIONS
    for kind, off, ln in spans:
        if kind != _OPT_MSS or ln != 4:
            continue
        at = _TCP_MIN + off + 2
        if _be16(b, tcp + at) <= mss:
            return OK
        lo = at & ~1
        hi = (at + 3) & ~1
        old_sum = _ck.ones_sum(bytes(b[tcp + lo:tcp + hi]))
        _put16(b, tcp + at, mss)
        if not p.vnet_flags & VNET_HDR_F_NEEDS_CSUM:
            check = _ck.update_sum(_be16(b, tcp + _TCP_CHECK), old_sum, _ck.ones_sum(bytes(b[tcp + lo:tcp + hi])))
            _put16(b, tcp + _TCP_CHECK, check)
            p.checksum = check
        counters[_C["mss_clamped"]] += 1
        return OK
    return OK


def _push_eth(p, macs, counters):
    if p.l2_len:
        return BAD_REQUEST
    if p.headroom < _ETH_HEADER_LEN:
        return NO_HEADROOM
    b = p.buf
    new_data = p.data - _ETH_HEADER_LEN
    if p.vnet_len:
        b[new_data:new_data + p.vnet_len] = b[p.data:p.data + p.vnet_len]
    eth = new_data + p.vnet_len
    b[eth:eth + 12] = macs
    _put16(b, eth + 12, 0x0800 if p.version == 4 else 0x86DD)
    if p.vnet_len:
        if p.vnet_flags & VNET_HDR_F_NEEDS_CSUM:
            _put_le16(b, new_data + 6, _le16(b, new_data + 6) + _ETH_HEADER_LEN)
        hdr_len = _le16(b, new_data + 2)
        if hdr_len:
            _put_le16(b, new_data + 2, hdr_len + _ETH_HEADER_LEN)
    p.data = new_data
    p.length += _ETH_HEADER_LEN
    p.headroom -= _ETH_HEADER_LEN
    p.l2_len = _ETH_HEADER_LEN
    counters[_C["eth_pushed"]] += 1
    return OK


class _Action:
    __slots__ = ("ops", "sport", "dport", "mss", "addr_len", "options", "src", "dst", "eth")

    def __init__(self):
        self.ops = 0
        self.sport = self.dport = self.mss = 0
        self.addr_len = 0
        self.options = b""
        self.src = self.dst = None
        self.eth = b""


def _apply(p, a, counters):
    status = _rw_parse(p)
    ops = a.ops
    counters[_C["packets"]] += 1
    if status == OK and ops & (_OP_NAT_SRC | _OP_NAT_DST) and a.addr_len != p.addr_len:
        status = BAD_REQUEST
    if status == OK and ops & _OP_PUSH_ETH and p.headroom < _ETH_HEADER_LEN:
        status = NO_HEADROOM
    if status == OK and ops & _OPS_OPTIONS:
        status = _set_options(p, bool(ops & _OP_STRIP_MPTCP),
                              a.options if ops & _OP_INSERT_OPTIONS else b"",
                              _ETH_HEADER_LEN if ops & _OP_PUSH_ETH else 0, counters)
    if status == OK and ops & _OP_CLAMP_MSS:
        status = _clamp_mss(p, a.mss, counters)
    if status == OK and ops & _OPS_NAT:
        status = _nat(p, a.src if ops & _OP_NAT_SRC else None, a.dst if ops & _OP_NAT_DST else None,
                      a.sport if ops & _OP_NAT_SPORT else None, a.dport if ops & _OP_NAT_DPORT else None,
                      counters)
    if status == OK:
        _trim(p, counters)
    if status == OK and ops & _OP_PUSH_ETH:
        status = _push_eth(p, a.eth, counters)
    counters[status] += 1
    return status


def _addr(value):
    b = bytes(getattr(value, "packed", value))
    if len(b) not in (4, 16):
        raise ValueError(f"address must be 4 or 16 bytes, not {len(b)}")
    return b


def _u16(value):
    # Mirrors the compiled module's C uint16_t arguments.
    if not 0 <= value <= 0xFFFF:
        raise OverflowError(f"value {value} out of range")
    return value


class PacketBatch:
    """capacity slots, each headroom + vnet_hdr_len + max_packet bytes (rounded up to 64).

    One thread at a time: run() releases the GIL but the batch is not locked.
    """

    def __init__(self, capacity, max_packet=MAX_PACKET, headroom=DEFAULT_HEADROOM, vnet_hdr_len=0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        if not 20 <= max_packet <= MAX_PACKET:
            raise ValueError(f"max_packet must be in 20..{MAX_PACKET}, not {max_packet}")
        if not 0 <= headroom <= 4096:
            raise ValueError(f"headroom must be in 0..4096, not {headroom}")
        if vnet_hdr_len not in VNET_HDR_LENGTHS:
            raise ValueError(f"vnet_hdr_len must be one of {VNET_HDR_LENGTHS}, not {vnet_hdr_len}")
        self._capacity = capacity
        self._max_packet = max_packet
        self._headroom = headroom
        self._vnet = vnet_hdr_len
        self._slot = (headroom + vnet_hdr_len + max_packet + 63) & ~63
        self._buf = bytearray(capacity * self._slot)
        self._start = [headroom] * capacity
        self._length = [0] * capacity
        self._status = bytearray(capacity)
        self._action = [_Action() for _ in range(capacity)]
        self._counters = [0] * len(COUNTER_NAMES)
        self._count = 0

    capacity = property(lambda self: self._capacity)
    max_packet = property(lambda self: self._max_packet)
    headroom = property(lambda self: self._headroom)
    vnet_hdr_len = property(lambda self: self._vnet)
    slot_size = property(lambda self: self._slot)

    @property
    def count(self):
        """Slots in use: run() without n covers 0..count-1; append() fills slot count."""
        return self._count

    @count.setter
    def count(self, n):
        if not 0 <= n <= self._capacity:
            raise ValueError(f"count must be in 0..{self._capacity}, not {n}")
        self._count = n

    def _check(self, i):
        if not 0 <= i < self._capacity:
            raise IndexError(f"slot {i} not in 0..{self._capacity - 1}")

    def _reset_slot(self, i, length):
        self._start[i] = self._headroom
        self._length[i] = length
        self._status[i] = OK
        self._action[i] = _Action()

    def load(self, i, data):
        """Copy a packet (virtio_net_hdr first if vnet_hdr_len) into slot i; clears its action."""
        self._check(i)
        data = bytes(data)
        if len(data) > self._vnet + self._max_packet:
            raise ValueError(f"packet of {len(data)} bytes does not fit a slot "
                             f"(max {self._vnet + self._max_packet})")
        at = i * self._slot + self._headroom
        self._buf[at:at + len(data)] = data
        self._reset_slot(i, len(data))

    def append(self, data):
        """load() into slot count and grow count; returns the slot index."""
        if self._count >= self._capacity:
            raise IndexError("PacketBatch is full")
        self.load(self._count, data)
        self._count += 1
        return self._count - 1

    def clear(self):
        """Forget all packets, statuses and actions (count = 0); counters stay."""
        for i in range(self._capacity):
            self._reset_slot(i, 0)
        self._count = 0

    def recv_buffer(self, i):
        """Writable memoryview of slot i from its headroom on, to receive a packet into."""
        self._check(i)
        base = i * self._slot
        return memoryview(self._buf)[base + self._headroom:base + self._slot]

    def set_received(self, i, n):
        """Slot i now holds n bytes written through recv_buffer(i); clears its action."""
        self._check(i)
        if not 0 <= n <= self._slot - self._headroom:
            raise ValueError(f"length {n} does not fit slot {i}")
        self._reset_slot(i, n)

    def view(self, i):
        """Memoryview of slot i's packet as it is now (to send without copying)."""
        self._check(i)
        at = i * self._slot + self._start[i]
        return memoryview(self._buf)[at:at + self._length[i]]

    def packet(self, i):
        """A copy of slot i's packet as it is now."""
        return bytes(self.view(i))

    def start(self, i):
        """Offset of slot i's packet in its slot: the headroom left in front of it."""
        self._check(i)
        return self._start[i]

    def length(self, i):
        self._check(i)
        return self._length[i]

    def status(self, i):
        """Slot i's status from the last run (an RW status code; see STATUS_NAMES)."""
        self._check(i)
        return self._status[i]

    def statuses(self, n=None):
        """Statuses of slots 0..n-1 (default: count) as bytes, one code per slot."""
        k = self._count if n is None else n
        if not 0 <= k <= self._capacity:
            raise ValueError(f"n must be in 0..{self._capacity}")
        return bytes(self._status[:k])

    def set_action(self, i, *, strip_mptcp=False, options=None, clamp_mss=None,
                   src=None, dst=None, sport=None, dport=None, eth=None):
        """What the next run() does to slot i: strip MPTCP options, insert `options` (opaque
        bytes, <= 40, but whole options: no EOL, every length >= 2 but a NOP's), clamp a SYN's
        MSS, NAT (address bytes / ipaddress objects, ports), push an Ethernet header (`eth`:
        destination + source MAC, 12 bytes). None leaves a part out."""
        self._check(i)
        a = _Action()
        if strip_mptcp:
            a.ops |= _OP_STRIP_MPTCP
        if options is not None:
            options = bytes(options)
            if len(options) > MAX_OPTIONS:
                raise ValueError(f"at most {MAX_OPTIONS} option bytes, not {len(options)}")
            if options and not _whole(options):
                raise ValueError(f"options to insert must be whole TCP options without EOL, not {options.hex()}")
            a.ops |= _OP_INSERT_OPTIONS
            a.options = options
        if clamp_mss is not None:
            a.ops |= _OP_CLAMP_MSS
            a.mss = _u16(clamp_mss)
        if src is not None or dst is not None:
            s = _addr(src) if src is not None else None
            d = _addr(dst) if dst is not None else None
            if s is not None and d is not None and len(s) != len(d):
                raise ValueError("src and dst must be the same address family")
            a.addr_len = len(s if s is not None else d)
            if s is not None:
                a.ops |= _OP_NAT_SRC
                a.src = s
            if d is not None:
                a.ops |= _OP_NAT_DST
                a.dst = d
        if sport is not None:
            a.ops |= _OP_NAT_SPORT
            a.sport = _u16(sport)
        if dport is not None:
            a.ops |= _OP_NAT_DPORT
            a.dport = _u16(dport)
        if eth is not None:
            eth = bytes(eth)
            if len(eth) != 12:
                raise ValueError("eth must be destination + source MAC, 12 bytes")
            a.ops |= _OP_PUSH_ETH
            a.eth = eth
        self._action[i] = a

    def set_action_all(self, **action):
        """set_action() with the same arguments on slots 0..count-1."""
        for i in range(self._count):
            self.set_action(i, **action)

    def clear_action(self, i):
        self._check(i)
        self._action[i] = _Action()

    def run(self, n=None):
        """Apply slots 0..n-1's actions (default n: count); returns how many are ok.
        Statuses per slot; a slot that is not ok is left unchanged."""
        k = self._count if n is None else n
        if not 0 <= k <= self._capacity:
            raise ValueError(f"n must be in 0..{self._capacity}")
        ok = 0
        for i in range(k):
            base = i * self._slot
            p = _Pkt(self._buf, base + self._start[i], self._length[i], self._start[i], self._vnet)
            status = _apply(p, self._action[i], self._counters)
            self._status[i] = status
            self._start[i] = p.data - base
            self._length[i] = p.length
            ok += status == OK
        return ok

    def counters(self):
        """{name: count} for every status and event since the last reset_counters()."""
        return dict(zip(COUNTER_NAMES, self._counters))

    def reset_counters(self):
        self._counters = [0] * len(COUNTER_NAMES)


def parse(data, vnet_hdr_len=0):
    """(status, fields) of one packet as the rewriter sees it; fields is None unless status is ok."""
    if vnet_hdr_len not in VNET_HDR_LENGTHS:
        raise ValueError(f"vnet_hdr_len must be one of {VNET_HDR_LENGTHS}")
    b = bytes(data)
    p = _Pkt(b, 0, len(b), 0, vnet_hdr_len)
    status = _rw_parse(p)
    if status != OK:
        return status, None
    ip = vnet_hdr_len
    vnet = None
    if vnet_hdr_len:
        vnet = {"flags": b[0], "gso_type": b[1], "hdr_len": _le16(b, 2), "gso_size": _le16(b, 4),
                "csum_start": _le16(b, 6), "csum_offset": _le16(b, 8)}
    opts = ip + p.tcp_offset + _TCP_MIN
    return status, {
        "version": p.version,
        "src": b[ip + p.src_off:ip + p.src_off + p.addr_len],
        "dst": b[ip + p.dst_off:ip + p.dst_off + p.addr_len],
        "ip_header_len": p.tcp_offset,
        "ip_total_len": p.ip_total_len,
        "sport": p.sport,
        "dport": p.dport,
        "seq": p.seq,
        "ack": p.ack,
        "flags": p.flags,
        "window": p.window,
        "checksum": p.checksum,
        "tcp_header_len": p.tcp_header_len,
        "options": b[opts:opts + p.options_len],
        "payload_len": p.payload_len,
        "vnet": vnet,
    }


def rewrite(data, vnet_hdr_len=0, headroom=DEFAULT_HEADROOM, **action):
    """(status, packet) after applying set_action(**action) to one packet; unchanged unless ok."""
    data = bytes(data)
    batch = PacketBatch(1, max(20, min(MAX_PACKET, len(data) - vnet_hdr_len)), headroom, vnet_hdr_len)
    batch.load(0, data)
    batch.set_action(0, **action)
    batch.run(1)
    return batch.status(0), batch.packet(0)
