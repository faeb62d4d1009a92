# cython: language_level=3
"""Python-visible wrapper over packet.pxd's header parser, for tests and the pure/fast agreement checks.

parse_packet(bytes) returns the flat PacketView as a dict (addresses as bytes);
the hot path cimports packet.pxd and never comes through here.
"""

cimport packet

PACKET_REASON_NAMES = (
    "OK",
    "TRUNCATED",
    "BAD_IP_VERSION",
    "BAD_IPV4_HEADER_LEN",
    "BAD_IP_TOTAL_LEN",
    "NOT_TCP",
    "FRAGMENT",
    "BAD_TCP_HEADER_LEN",
    "BAD_EXTENSION_HEADERS",
)
assert len(PACKET_REASON_NAMES) == packet.PACKET_REASON_COUNT


def parse_packet(const unsigned char[::1] data not None) -> dict:
    """The header fields of the IP/TCP packet in `data`, with `error` 0 or a PACKET_REASON_NAMES index."""
    cdef packet.PacketView v
    cdef const unsigned char* buf = &data[0] if data.shape[0] else NULL
    with nogil:
        packet.parse_packet(buf, data.shape[0], &v)
    src = bytes(data[v.src_offset:v.src_offset + v.addr_len]) if v.addr_len else b""
    dst = bytes(data[v.dst_offset:v.dst_offset + v.addr_len]) if v.addr_len else b""
    return {
        "error": v.error,
        "ip_version": v.ip_version,
        "protocol": v.protocol,
        "ttl": v.ttl,
        "src": src,
        "dst": dst,
        "ip_header_len": v.ip_header_len,
        "ip_total_len": v.ip_total_len,
        "tcp_offset": v.tcp_offset,
        "tcp_header_len": v.tcp_header_len,
        "options_offset": v.options_offset,
        "options_len": v.options_len,
        "payload_offset": v.payload_offset,
        "payload_len": v.payload_len,
        "src_port": v.src_port,
        "dst_port": v.dst_port,
        "seq": v.seq,
        "ack": v.ack,
        "tcp_flags": v.tcp_flags,
        "window": v.window,
        "tcp_checksum": v.tcp_checksum,
        "urgent": v.urgent,
    }
