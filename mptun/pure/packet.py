"""Pure-Python twin of mptun._fast.packet: parse_packet(bytes) -> the same flat dict as packet.pxd's PacketView.

Written step by step like the C parser, so that on a bad packet the same
fields are filled up to the same point (the value types in mptun.wire.tcpip
cannot say that); tests check both against those value types on good packets.
Each step returns OK or the reason it stopped, as the C functions do.
"""

import struct

from mptun.wire import tcpip as _t
from mptun.wire.tcpip import PacketReason as _R

PACKET_REASON_NAMES = tuple(r.name for r in _R)
IPV6_MAX_EXTENSION_HEADERS = 8
_IPV6_WALKED_EXTENSIONS = (_t.IPPROTO_HOPOPTS, _t.IPPROTO_ROUTING, _t.IPPROTO_DSTOPTS)

_FIELDS = ("error", "ip_version", "protocol", "ttl", "ip_header_len", "ip_total_len", "tcp_offset",
           "tcp_header_len", "options_offset", "options_len", "payload_offset", "payload_len", "src_port",
           "dst_port", "seq", "ack", "tcp_flags", "window", "tcp_checksum", "urgent")


def _parse_tcp(data: bytes, end: int, v: dict) -> _R:
    t = v["tcp_offset"]
    if end - t < _t.TCP_HEADER_MIN_LEN:
        return _R.TRUNCATED
    sport, dport, seq, ack, off, flags, window, csum, urgent = struct.unpack_from("!HHIIBBHHH", data, t)
    v.update(src_port=sport, dst_port=dport, seq=seq, ack=ack, tcp_flags=flags, window=window,
             tcp_checksum=csum, urgent=urgent, tcp_header_len=(off >> 4) * 4)
    if v["tcp_header_len"] < _t.TCP_HEADER_MIN_LEN:
        return _R.BAD_TCP_HEADER_LEN
    if end - t < v["tcp_header_len"]:
        return _R.TRUNCATED
    v.update(options_offset=t + _t.TCP_HEADER_MIN_LEN, options_len=v["tcp_header_len"] - _t.TCP_HEADER_MIN_LEN,
             payload_offset=t + v["tcp_header_len"], payload_len=end - t - v["tcp_header_len"])
    return _R.OK


def _parse_ipv4(data: bytes, v: dict) -> _R:
    if len(data) < _t.IPV4_HEADER_MIN_LEN:
        return _R.TRUNCATED
    header_len = (data[0] & 0x0F) * 4
    if header_len < _t.IPV4_HEADER_MIN_LEN:
        return _R.BAD_IPV4_HEADER_LEN
    if len(data) < header_len:
        return _R.TRUNCATED
    total, frag, ttl, protocol = struct.unpack_from("!2xH2xHBB", data)
    v.update(ip_header_len=header_len, ip_total_len=total, protocol=protocol, ttl=ttl,
             src=bytes(data[_t.IPV4_SRC_OFFSET:_t.IPV4_SRC_OFFSET + 4]),
             dst=bytes(data[_t.IPV4_DST_OFFSET:_t.IPV4_DST_OFFSET + 4]))
    if total < header_len:
        return _R.BAD_IP_TOTAL_LEN
    if total > len(data):
        return _R.TRUNCATED
    if frag & 0x3FFF:  # MF or a fragment offset: the segment is not all here
        return _R.FRAGMENT
    if protocol != _t.IPPROTO_TCP:
        return _R.NOT_TCP
    v["tcp_offset"] = header_len
    return _parse_tcp(data, total, v)


def _parse_ipv6(data: bytes, v: dict) -> _R:
    if len(data) < _t.IPV6_HEADER_LEN:
        return _R.TRUNCATED
    payload_len, next_header, hop_limit = struct.unpack_from("!4xHBB", data)
    total = _t.IPV6_HEADER_LEN + payload_len
    v.update(ip_total_len=total, ttl=hop_limit, protocol=next_header, ip_header_len=_t.IPV6_HEADER_LEN,
             src=bytes(data[_t.IPV6_SRC_OFFSET:_t.IPV6_SRC_OFFSET + 16]),
             dst=bytes(data[_t.IPV6_DST_OFFSET:_t.IPV6_DST_OFFSET + 16]))
    if total > len(data):
        return _R.TRUNCATED
    pos, walked = _t.IPV6_HEADER_LEN, 0
    while next_header in _IPV6_WALKED_EXTENSIONS:
        if walked == IPV6_MAX_EXTENSION_HEADERS:
            return _R.BAD_EXTENSION_HEADERS
        if total - pos < 8:
            return _R.TRUNCATED
        next_header, pos = data[pos], pos + (data[pos + 1] + 1) * 8
        walked += 1
        if pos > total:
            return _R.TRUNCATED
        v.update(protocol=next_header, ip_header_len=pos)
    if next_header == _t.IPPROTO_FRAGMENT:
        return _R.FRAGMENT
    if next_header != _t.IPPROTO_TCP:
        return _R.NOT_TCP
    v["tcp_offset"] = pos
    return _parse_tcp(data, total, v)


def parse_packet(data: bytes) -> dict:
    """The header fields of the IP/TCP packet in `data`, with `error` 0 or a PACKET_REASON_NAMES index."""
    data = bytes(data)
    v = dict.fromkeys(_FIELDS, 0)
    v.update(src=b"", dst=b"")
    if not data:
        v["error"] = _R.TRUNCATED
    else:
        v["ip_version"] = data[0] >> 4
        parse = {4: _parse_ipv4, 6: _parse_ipv6}.get(v["ip_version"])
        v["error"] = parse(data, v) if parse else _R.BAD_IP_VERSION
    v["error"] = int(v["error"])
    return v
