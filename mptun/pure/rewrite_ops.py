"""The per-packet operations of the pure rewrite twin, mirroring src/fastpath/rewrite.pxd.

One packet (a `RwPacket`, rewrite.pxd's RwPacket) is parsed by mptun.pure.packet (as rw_parse
calls packet.pxd's parse_packet), then rewritten in place: options (strip MPTCP, insert),
MSS clamp, NAT, padding trim, Ethernet header. Each step returns a status and leaves the
packet unchanged unless it is OK. mptun.pure.rewrite is the Python face (PacketBatch) over
these, as rewrite.pyx is over rewrite.pxd; statuses and counters are defined here once.
"""

from mptun.pure import checksum as _ck
from mptun.pure.packet import parse_packet as _parse_packet
from mptun.wire import tcpip as _t
from mptun.wire.tcpip import PacketReason as _R

OK = 0
NO_ROOM = 1
NO_HEADROOM = 2
BAD_REQUEST = 3
MALFORMED_VNET = 4
MALFORMED_TCP_OPTIONS = 5
# MALFORMED_TCP_OPTIONS + a PacketReason: the headers did not parse
(MALFORMED_TRUNCATED, MALFORMED_IP_VERSION, MALFORMED_IPV4_HEADER_LEN, MALFORMED_IP_TOTAL_LEN,
 MALFORMED_NOT_TCP, MALFORMED_FRAGMENT, MALFORMED_TCP_HEADER_LEN,
 MALFORMED_IPV6_EXTENSION_HEADERS) = (MALFORMED_TCP_OPTIONS + r for r in _R if r != _R.OK)
_PACKET_REASONS = ("truncated", "ip_version", "ipv4_header_len", "ip_total_len", "not_tcp",
                   "fragment", "tcp_header_len", "ipv6_extension_headers")

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
VNET_FLAGS_OFFSET = 0
VNET_GSO_TYPE_OFFSET = 1
VNET_HDR_LEN_OFFSET = 2
VNET_CSUM_START_OFFSET = 6
VNET_CSUM_OFFSET_OFFSET = 8
MAX_PACKET = 65535
MAX_OPTIONS = _t.TCP_OPTIONS_MAX_LEN

ETH_HEADER_LEN = 14
ETH_ADDRS_LEN = 12
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
_TCP_MIN = _t.TCP_HEADER_MIN_LEN
_TCP_CHECK = _t.TCP_CHECKSUM_OFFSET
_SACK_ONE_BLOCK = _t.TCPOLEN_SACK_BASE + _t.TCPOLEN_SACK_BLOCK

RW_OP_STRIP_MPTCP = 0x01
RW_OP_INSERT_OPTIONS = 0x02
RW_OP_CLAMP_MSS = 0x04
RW_OP_NAT_SRC = 0x08
RW_OP_NAT_DST = 0x10
RW_OP_NAT_SPORT = 0x20
RW_OP_NAT_DPORT = 0x40
RW_OP_PUSH_ETH = 0x80
RW_OPS_OPTIONS = RW_OP_STRIP_MPTCP | RW_OP_INSERT_OPTIONS
RW_OPS_NAT = RW_OP_NAT_SRC | RW_OP_NAT_DST | RW_OP_NAT_SPORT | RW_OP_NAT_DPORT

# The fields of mptun.pure.packet's record that the operations read (rewrite.pxd's pkt.view)
_VIEW = ("ip_version", "ip_total_len", "tcp_offset", "tcp_header_len", "options_len", "payload_offset",
         "payload_len", "src_port", "dst_port", "seq", "ack", "tcp_flags", "window", "tcp_checksum")


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


class RwPacket:
    """One packet in buf: data is the absolute offset of its first byte, headroom what lies free before."""

    __slots__ = ("buf", "data", "length", "headroom", "vnet_len", "l2_len", "vnet_flags", "gso_type",
                 "addr_len", "src_off", "dst_off") + _VIEW

    def __init__(self, buf, data, length, headroom, vnet_len):
        self.buf, self.data, self.length, self.headroom, self.vnet_len = buf, data, length, headroom, vnet_len
        self.l2_len = 0
        self.vnet_flags = 0
        self.gso_type = 0

    @property
    def ip(self):
        return self.data + self.vnet_len + self.l2_len


def _has_routing_header(b, ip, tcp_offset):
    # The chain was already walked (and bounded) by parse_packet().
    nh, pos = b[ip + _t.IPV6_NEXT_HEADER_OFFSET], _t.IPV6_HEADER_LEN
    while pos < tcp_offset:
        if nh == _t.IPPROTO_ROUTING:
            return True
        nh, pos = b[ip + pos], pos + (b[ip + pos + 1] + 1) * 8
    return False


def rw_parse(p):
    b = p.buf
    p.l2_len = 0
    p.vnet_flags = 0
    p.gso_type = VNET_HDR_GSO_NONE
    if p.length < p.vnet_len:
        return MALFORMED_TRUNCATED
    ip = p.data + p.vnet_len
    view = _parse_packet(b[ip:p.data + p.length])
    if view["error"] != _R.OK:
        return MALFORMED_TCP_OPTIONS + view["error"]
    for name in _VIEW:
        setattr(p, name, view[name])
    p.addr_len = len(view["src"])
    if p.ip_version == 4:
        p.src_off, p.dst_off = _t.IPV4_SRC_OFFSET, _t.IPV4_DST_OFFSET
    else:
        p.src_off, p.dst_off = _t.IPV6_SRC_OFFSET, _t.IPV6_DST_OFFSET
    if p.ip_version == 6 and p.tcp_offset > _t.IPV6_HEADER_LEN and _has_routing_header(b, ip, p.tcp_offset):
        # RFC 8200 section 8.1: the pseudo-header then holds the final destination from the
        # routing header, which neither NAT nor the partial sum here accounts for.
        return MALFORMED_IPV6_EXTENSION_HEADERS
    if p.vnet_len:
        v = p.data
        p.vnet_flags = b[v + VNET_FLAGS_OFFSET]
        gso = b[v + VNET_GSO_TYPE_OFFSET] & ~VNET_HDR_GSO_ECN
        p.gso_type = gso
        if gso == VNET_HDR_GSO_TCPV4:
            if p.ip_version != 4:
                return MALFORMED_VNET
        elif gso == VNET_HDR_GSO_TCPV6:
            if p.ip_version != 6:
                return MALFORMED_VNET
        elif gso != VNET_HDR_GSO_NONE:
            return MALFORMED_VNET
        if p.vnet_flags & VNET_HDR_F_NEEDS_CSUM:
            if _le16(b, v + VNET_CSUM_START_OFFSET) != p.tcp_offset or _le16(b, v + VNET_CSUM_OFFSET_OFFSET) != _TCP_CHECK:
                return MALFORMED_VNET
    return OK


def rw_trim(p, counters):
    want = p.vnet_len + p.l2_len + p.ip_total_len
    if p.length > want:
        p.length = want
        counters[_C["padding_trimmed"]] += 1


def _refresh_partial(p):
    b, ip = p.buf, p.ip
    l4_len = p.ip_total_len - p.tcp_offset
    src = bytes(b[ip + p.src_off:ip + p.src_off + p.addr_len])
    dst = bytes(b[ip + p.dst_off:ip + p.dst_off + p.addr_len])
    pseudo = _ck.pseudo_partial_v4 if p.ip_version == 4 else _ck.pseudo_partial_v6
    _put16(b, ip + p.tcp_offset + _TCP_CHECK, pseudo(src, dst, l4_len))


def rw_nat(p, src, dst, sport, dport, counters):
    if p.l2_len:
        return BAD_REQUEST
    b, ip = p.buf, p.ip
    tcp = ip + p.tcp_offset
    partial = p.vnet_flags & VNET_HDR_F_NEEDS_CSUM
    v4 = p.ip_version == 4
    update = _ck.update_addr4 if v4 else _ck.update_addr6
    check = _be16(b, tcp + _TCP_CHECK)
    if v4 and (src is not None or dst is not None):
        at = ip + _t.IPV4_CHECKSUM_OFFSET
        ipcheck = _be16(b, at)
        for new, off in ((src, p.src_off), (dst, p.dst_off)):
            if new is not None:
                ipcheck = _ck.update_addr4(ipcheck, bytes(b[ip + off:ip + off + 4]), new)
        _put16(b, at, ipcheck)
    for new, off in ((src, p.src_off), (dst, p.dst_off)):
        if new is None:
            continue
        if not partial:
            check = update(check, bytes(b[ip + off:ip + off + p.addr_len]), new)
        b[ip + off:ip + off + p.addr_len] = new
    if sport is not None:
        check = _ck.update16(check, p.src_port, sport)
        _put16(b, tcp + _t.TCP_SRC_PORT_OFFSET, sport)
        p.src_port = sport
    if dport is not None:
        check = _ck.update16(check, p.dst_port, dport)
        _put16(b, tcp + _t.TCP_DST_PORT_OFFSET, dport)
        p.dst_port = dport
    if partial:
        if src is not None or dst is not None:
            _refresh_partial(p)
    else:
        _put16(b, tcp + _TCP_CHECK, check)
        p.tcp_checksum = check
    counters[_C["nat"]] += 1
    return OK


def rw_walk_options(opts):
    """[(kind, offset, length)] up to an EOL, or None if a length byte is < 2 or runs past the end."""
    out, i, n = [], 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == _t.TCPOPT_EOL:
            break
        if kind == _t.TCPOPT_NOP:
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


def rw_options_whole(opts):
    """True if opts is whole options end to end (no EOL, the last one ending at the end)."""
    if len(opts) > MAX_OPTIONS:
        return False
    spans = rw_walk_options(opts)
    if spans is None:
        return False
    if not spans:
        return len(opts) == 0
    # The walk stops at an EOL: then the options cover less than opts.
    _, off, ln = spans[-1]
    return off + ln == len(opts)


def _build_options(opts, spans, strip, sack_mode, keep_nops):
    def dropped(kind):
        return kind == _t.TCPOPT_NOP or (strip and kind == _t.TCPOPT_MPTCP) or \
            (sack_mode == 2 and kind == _t.TCPOPT_SACK)

    last = max((i for i, (kind, _, _) in enumerate(spans) if not dropped(kind)), default=-1)
    out = bytearray()
    for kind, off, ln in spans[:last + 1]:
        if kind == _t.TCPOPT_NOP:
            if keep_nops:
                out.append(_t.TCPOPT_NOP)
        elif strip and kind == _t.TCPOPT_MPTCP:
            continue
        elif kind == _t.TCPOPT_SACK and sack_mode == 1 and ln > _SACK_ONE_BLOCK:
            out += bytes((_t.TCPOPT_SACK, _SACK_ONE_BLOCK)) + opts[off + 2:off + _SACK_ONE_BLOCK]
        elif kind == _t.TCPOPT_SACK and sack_mode == 2:
            continue
        else:
            out += opts[off:off + ln]
    return bytes(out)


# (sack_mode, keep_nops) in the order tried, as rw_set_options in rewrite.pxd tries them.
_LAYOUTS = ((0, True), (1, True), (1, False), (2, True), (2, False))


def rw_set_options(p, strip, insert, reserve, counters):
    if p.l2_len or len(insert) > MAX_OPTIONS:
        return BAD_REQUEST
    if insert and not rw_options_whole(insert):
        return BAD_REQUEST
    b, ip = p.buf, p.ip
    tcp = ip + p.tcp_offset
    old_len = p.options_len
    opts = bytes(b[tcp + _TCP_MIN:tcp + _TCP_MIN + old_len])
    spans = rw_walk_options(opts)
    if spans is None:
        return MALFORMED_TCP_OPTIONS
    stripped = sum(1 for s in spans if s[0] == _t.TCPOPT_MPTCP) if strip else 0
    sacks = sum(1 for s in spans if s[0] == _t.TCPOPT_SACK)
    sacks_long = sum(1 for s in spans if s[0] == _t.TCPOPT_SACK and s[2] > _SACK_ONE_BLOCK)
    nops = sum(1 for s in spans if s[0] == _t.TCPOPT_NOP)
    if stripped == 0 and not insert:
        return OK
    for layout, (sack_mode, keep_nops) in enumerate(_LAYOUTS):
        if layout == 1 and sacks_long == 0:
            continue
        if layout in (2, 4) and nops == 0:
            continue
        if layout in (3, 4) and sacks == 0:
            continue
        kept = _build_options(opts, spans, strip, sack_mode, keep_nops)
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
    area = kept + bytes(insert) + bytes([_t.TCPOPT_NOP]) * (new_len - len(kept) - len(insert))
    word12 = _be16(b, tcp + _t.TCP_DATA_OFFSET_OFFSET)
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
    _put16(b, tcp + _t.TCP_DATA_OFFSET_OFFSET, new_word12)
    if p.ip_version == 4:
        at = ip + _t.IPV4_TOTAL_LEN_OFFSET
        old_ip_len = _be16(b, at)
        _put16(b, at, old_ip_len + delta)
        at = ip + _t.IPV4_CHECKSUM_OFFSET
        _put16(b, at, _ck.update16(_be16(b, at), old_ip_len, old_ip_len + delta))
    else:
        at = ip + _t.IPV6_PAYLOAD_LEN_OFFSET
        _put16(b, at, _be16(b, at) + delta)
    p.ip_total_len += delta
    p.tcp_header_len = _TCP_MIN + new_len
    p.options_len = new_len
    p.payload_offset = p.tcp_offset + p.tcp_header_len
    if partial:
        _refresh_partial(p)
    else:
        check = _ck.update16(check, old_l4, old_l4 + delta)
        _put16(b, tcp + _TCP_CHECK, check)
        p.tcp_checksum = check
    if p.vnet_len and (p.gso_type != VNET_HDR_GSO_NONE or _le16(b, p.data + VNET_HDR_LEN_OFFSET)):
        _put_le16(b, p.data + VNET_HDR_LEN_OFFSET, p.tcp_offset + p.tcp_header_len)
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


def rw_clamp_mss(p, mss, counters):
    if p.l2_len:
        return BAD_REQUEST
    if not p.tcp_flags & _t.TCP_SYN:
        return OK
    b = p.buf
    tcp = p.ip + p.tcp_offset
    spans = rw_walk_options(bytes(b[tcp + _TCP_MIN:tcp + _TCP_MIN + p.options_len]))
    if spans is None:
        return MALFORMED_TCP_OPTIONS
    for kind, off, ln in spans:
        if kind != _t.TCPOPT_MSS or ln != _t.TCPOLEN_MSS:
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
            p.tcp_checksum = check
        counters[_C["mss_clamped"]] += 1
        return OK
    return OK


def rw_push_eth(p, macs, counters):
    if p.l2_len:
        return BAD_REQUEST
    if p.headroom < ETH_HEADER_LEN:
        return NO_HEADROOM
    b = p.buf
    new_data = p.data - ETH_HEADER_LEN
    if p.vnet_len:
        b[new_data:new_data + p.vnet_len] = b[p.data:p.data + p.vnet_len]
    eth = new_data + p.vnet_len
    b[eth:eth + ETH_ADDRS_LEN] = macs
    _put16(b, eth + ETH_ADDRS_LEN, ETHERTYPE_IPV4 if p.ip_version == 4 else ETHERTYPE_IPV6)
    if p.vnet_len:
        if p.vnet_flags & VNET_HDR_F_NEEDS_CSUM:
            at = new_data + VNET_CSUM_START_OFFSET
            _put_le16(b, at, _le16(b, at) + ETH_HEADER_LEN)
        at = new_data + VNET_HDR_LEN_OFFSET
        if _le16(b, at):
            _put_le16(b, at, _le16(b, at) + ETH_HEADER_LEN)
    p.data = new_data
    p.length += ETH_HEADER_LEN
    p.headroom -= ETH_HEADER_LEN
    p.l2_len = ETH_HEADER_LEN
    counters[_C["eth_pushed"]] += 1
    return OK


class RwAction:
    __slots__ = ("ops", "sport", "dport", "mss", "addr_len", "options", "src", "dst", "eth")

    def __init__(self):
        self.ops = 0
        self.sport = self.dport = self.mss = 0
        self.addr_len = 0
        self.options = b""
        self.src = self.dst = None
        self.eth = b""


def rw_apply(p, a, counters):
    status = rw_parse(p)
    ops = a.ops
    counters[_C["packets"]] += 1
    if status == OK and ops & (RW_OP_NAT_SRC | RW_OP_NAT_DST) and a.addr_len != p.addr_len:
        status = BAD_REQUEST
    if status == OK and ops & RW_OP_PUSH_ETH and p.headroom < ETH_HEADER_LEN:
        status = NO_HEADROOM
    if status == OK and ops & RW_OPS_OPTIONS:
        status = rw_set_options(p, bool(ops & RW_OP_STRIP_MPTCP),
                              a.options if ops & RW_OP_INSERT_OPTIONS else b"",
                              ETH_HEADER_LEN if ops & RW_OP_PUSH_ETH else 0, counters)
    if status == OK and ops & RW_OP_CLAMP_MSS:
        status = rw_clamp_mss(p, a.mss, counters)
    if status == OK and ops & RW_OPS_NAT:
        status = rw_nat(p, a.src if ops & RW_OP_NAT_SRC else None, a.dst if ops & RW_OP_NAT_DST else None,
                      a.sport if ops & RW_OP_NAT_SPORT else None, a.dport if ops & RW_OP_NAT_DPORT else None,
                      counters)
    if status == OK:
        rw_trim(p, counters)
    if status == OK and ops & RW_OP_PUSH_ETH:
        status = rw_push_eth(p, a.eth, counters)
    counters[status] += 1
    return status
