"""Pure-Python twin of mptun._fast.packet: parse_packet(bytes) -> the same flat dict as packet.pxd's PacketView.

Written step by step like the C parser, so that on a bad packet the same
fields are filled up to the same point (the value types in mptun.wire.tcpip
cannot say that); tests check both against those value types on good packets.
"""

import struct

from mptun.wire.tcpip import (
    IPPROTO_TCP,
    IPV4_HEADER_MIN_LEN,
    IPV6_HEADER_LEN,
    TCP_HEADER_MIN_LEN,
    PacketReason,
)

PACKET_REASON_NAMES = tuple(r.name for r in PacketReason)
IPV6_MAX_EXTENSION_HEADERS = 8
_IPV6_WALKED_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44

_FIELDS = ("error", "ip_version", "protocol", "ttl", "ip_header_len", "ip_total_len", "tcp_offset",
           "tcp_header_len", "options_offset", "options_len", "payload_offset", "payload_len", "src_port",
           "dst_port", "seq", "ack", "tcp_flags", "window", "tcp_checksum", "urgent")


def _parse_tcp(data: bytes, end: int, v: dict) -> dict:
    t = v["tcp_offset"]
    if end - t < TCP_HEADER_MIN_LEN:
        v["error"] = PacketReason.TRUNCATED
        return v
    sport, dport, seq, ack, off, flags, window, csum, urgent = struct.unpack_from("!HHIIBBHHH", data, t)
    v.update(src_port=sport, dst_port=dport, seq=seq, ack=ack, tcp_flags=flags, window=window,
             tcp_checksum=csum, urgent=urgent, tcp_header_len=(off >> 4) * 4)
    if v["tcp_header_len"] < TCP_HEADER_MIN_LEN:
        v["error"] = PacketReason.BAD_TCP_HEADER_LEN
    elif end - t < v["tcp_header_len"]:
        v["error"] = PacketReason.TRUNCATED
    else:
        v.update(options_offset=t + TCP_HEADER_MIN_LEN, options_len=v["tcp_header_len"] - TCP_HEADER_MIN_LEN,
                 payload_offset=t + v["tcp_header_len"], payload_len=end - t - v["tcp_header_len"])
    return v


def _parse_ipv4(data: bytes, v: dict) -> dict:
    if len(data) < IPV4_HEADER_MIN_LEN:
        v["error"] = PacketReason.TRUNCATED
        return v
    header_len = (data[0] & 0x0F) * 4
    if header_len < IPV4_HEADER_MIN_LEN:
        v["error"] = PacketReason.BAD_IPV4_HEADER_LEN
        return v
    if len(data) < header_len:
        v["error"] = PacketReason.TRUNCATED
        return v
    total, frag, ttl, protocol = struct.unpack_from("!2xH2xHBB", data)
    v.update(ip_header_len=header_len, ip_total_len=total, protocol=protocol, ttl=ttl,
             src=bytes(data[12:16]), dst=bytes(data[16:20]))
    if total < header_len:
        v["error"] = PacketReason.BAD_IP_TOTAL_LEN
    elif total > len(data):
        v["error"] = PacketReason.TRUNCATED
    elif frag & 0x3FFF:  # MF or a fragment offset: the segment is not all here
        v["error"] = PacketReason.FRAGMENT
    elif protocol != IPPROTO_TCP:
        v["error"] = PacketReason.NOT_TCP
    else:
        v["tcp_offset"] = header_len
        return _parse_tcp(data, total, v)
    return v


def _parse_ipv6(data: bytes, v: dict) -> dict:
    if len(data) < IPV6_HEADER_LEN:
        v["error"] = PacketReason.TRUNCATED
        return v
    payload_len, next_header, hop_limit = struct.unpack_from("!4xHBB", data)
    total = IPV6_HEADER_LEN + payload_len
    v.update(ip_total_len=total, ttl=hop_limit, src=bytes(data[8:24]), dst=bytes(data[24:40]),
             protocol=next_header, ip_header_len=IPV6_HEADER_LEN)
    if total > len(data):
        v["error"] = PacketReason.TRUNCATED
        return v
    pos, walked = IPV6_HEADER_LEN, 0
    while next_header in _IPV6_WALKED_EXTENSIONS:
        if walked == IPV6_MAX_EXTENSION_HEADERS:
            v["error"] = PacketReason.BAD_EXTENSION_HEADERS
            return v
        if total - pos < 8:
            v["error"] = PacketReason.TRUNCATED
            return v
        next_header, pos = data[pos], pos + (data[pos + 1] + 1) * 8
        walked += 1
        if pos > total:
            v["error"] = PacketReason.TRUNCATED
            return v
        v.update(protocol=next_header, ip_header_len=pos)
    if next_header == _IPV6_FRAGMENT:
        v["error"] = PacketReason.FRAGMENT
    elif next_header != IPPROTO_TCP:
        v["error"] = PacketReason.NOT_TCP
    else:
        v["tcp_offset"] = pos
        return _parse_tcp(data, total, v)
    return v


def parse_packet(data: bytes) -> dict:
    """The header fields of the IP/TCP packet in `data`, with `error` 0 or a PACKET_REASON_NAMES index."""
    data = bytes(data)
    v = dict.fromkeys(_FIELDS, 0)
    v.update(src=b"", dst=b"")
    if not data:
        v["error"] = PacketReason.TRUNCATED
    else:
        v["ip_version"] = data[0] >> 4
        if v["ip_version"] == 4:
            _parse_ipv4(data, v)
        elif v["ip_version"] == 6:
            _parse_ipv6(data, v)
        else:
            v["error"] = PacketReason.BAD_IP_VERSION
    v["error"] = int(v["error"])
    return v
