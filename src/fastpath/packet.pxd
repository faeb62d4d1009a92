# cython: language_level=3
"""C-level view of one IPv4/IPv6 + TCP packet in a buffer, for the datapath's per-packet loops.

parse_packet() fills a flat PacketView (offsets and header fields) or sets a
PACKET_* reason; it never reads past `length` and never touches Python objects.
Also: unaligned big-endian load/store helpers and the fixed header offsets.

An inline header (docs/datapath.md, "Build notes"): everything here is
`cdef inline`, cimported by the short name (`cimport packet`); a module that
cimports it compiles its own copy and imports nothing at run time.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

# Why a packet cannot be used; PACKET_REASON_NAMES in packet.pyx has the names.
cdef enum:
    PACKET_OK = 0
    PACKET_TRUNCATED = 1              # buffer ends inside a header or before the IP length
    PACKET_BAD_IP_VERSION = 2         # version nibble neither 4 nor 6
    PACKET_BAD_IPV4_HEADER_LEN = 3    # IHL < 5
    PACKET_BAD_IP_TOTAL_LEN = 4       # IPv4 total length shorter than its own header
    PACKET_NOT_TCP = 5                # IP fields are valid, the payload is not TCP
    PACKET_FRAGMENT = 6               # IPv4 MF/offset or IPv6 fragment header: no whole TCP segment
    PACKET_BAD_TCP_HEADER_LEN = 7     # data offset < 5
    PACKET_BAD_EXTENSION_HEADERS = 8  # IPv6 extension header chain longer than we walk
    PACKET_REASON_COUNT = 9

cdef enum:
    IPV4_HEADER_MIN_LEN = 20
    IPV6_HEADER_LEN = 40
    TCP_HEADER_MIN_LEN = 20
    IPV6_MAX_EXTENSION_HEADERS = 8
    IPPROTO_TCP_ = 6                  # trailing _ : libc's IPPROTO_TCP is a macro elsewhere

    # byte offsets inside each header
    IPV4_TOTAL_LEN_OFFSET = 2
    IPV4_FRAG_OFFSET = 6
    IPV4_TTL_OFFSET = 8
    IPV4_PROTOCOL_OFFSET = 9
    IPV4_CHECKSUM_OFFSET = 10
    IPV4_SRC_OFFSET = 12
    IPV4_DST_OFFSET = 16
    IPV6_PAYLOAD_LEN_OFFSET = 4
    IPV6_NEXT_HEADER_OFFSET = 6
    IPV6_HOP_LIMIT_OFFSET = 7
    IPV6_SRC_OFFSET = 8
    IPV6_DST_OFFSET = 24
    TCP_SRC_PORT_OFFSET = 0
    TCP_DST_PORT_OFFSET = 2
    TCP_SEQ_OFFSET = 4
    TCP_ACK_OFFSET = 8
    TCP_DATA_OFFSET_OFFSET = 12
    TCP_FLAGS_OFFSET = 13
    TCP_WINDOW_OFFSET = 14
    TCP_CHECKSUM_OFFSET = 16
    TCP_URGENT_OFFSET = 18

    # TCP flag bits (byte 13)
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_PSH = 0x08
    TCP_ACK = 0x10
    TCP_URG = 0x20
    TCP_ECE = 0x40
    TCP_CWR = 0x80


cdef struct PacketView:
    int error                  # PACKET_OK, or why the fields after the failing header are unset
    uint8_t ip_version         # 4 or 6 (anything else comes with PACKET_BAD_IP_VERSION); 0 if empty
    uint8_t protocol           # IPv4 protocol / IPv6 upper-layer next header
    uint8_t ttl                # IPv4 TTL / IPv6 hop limit
    uint8_t addr_len           # 4 or 16
    Py_ssize_t src_offset      # of the source address, in the buffer
    Py_ssize_t dst_offset
    Py_ssize_t ip_header_len   # IPv4 IHL*4; IPv6 40 + extension headers walked
    Py_ssize_t ip_total_len    # per the IP header; bytes past it are link-layer padding
    Py_ssize_t tcp_offset      # start of the TCP header (== ip_header_len)
    Py_ssize_t tcp_header_len  # data offset * 4
    Py_ssize_t options_offset  # tcp_offset + 20
    Py_ssize_t options_len     # tcp_header_len - 20, 0..40
    Py_ssize_t payload_offset
    Py_ssize_t payload_len
    uint16_t src_port
    uint16_t dst_port
    uint32_t seq
    uint32_t ack
    uint8_t tcp_flags          # TCP_* bits
    uint16_t window
    uint16_t tcp_checksum
    uint16_t urgent


cdef inline uint16_t load_be16(const unsigned char* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])

cdef inline uint32_t load_be32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | <uint32_t>p[3])

cdef inline uint64_t load_be64(const unsigned char* p) noexcept nogil:
    return (<uint64_t>load_be32(p) << 32) | load_be32(p + 4)

cdef inline void store_be16(unsigned char* p, uint16_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 8)
    p[1] = <unsigned char>v

cdef inline void store_be32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v

cdef inline void store_be64(unsigned char* p, uint64_t v) noexcept nogil:
    store_be32(p, <uint32_t>(v >> 32))
    store_be32(p + 4, <uint32_t>v)


cdef inline int _parse_tcp(const unsigned char* buf, Py_ssize_t end, PacketView* out) noexcept nogil:
    cdef Py_ssize_t t = out.tcp_offset
    cdef const unsigned char* th
    if end - t < TCP_HEADER_MIN_LEN:
        out.error = PACKET_TRUNCATED
        return out.error
    th = buf + t
    out.src_port = load_be16(th + TCP_SRC_PORT_OFFSET)
    out.dst_port = load_be16(th + TCP_DST_PORT_OFFSET)
    out.seq = load_be32(th + TCP_SEQ_OFFSET)
    out.ack = load_be32(th + TCP_ACK_OFFSET)
    out.tcp_flags = th[TCP_FLAGS_OFFSET]
    out.window = load_be16(th + TCP_WINDOW_OFFSET)
    out.tcp_checksum = load_be16(th + TCP_CHECKSUM_OFFSET)
    out.urgent = load_be16(th + TCP_URGENT_OFFSET)
    out.tcp_header_len = (th[TCP_DATA_OFFSET_OFFSET] >> 4) * 4
    if out.tcp_header_len < TCP_HEADER_MIN_LEN:
        out.error = PACKET_BAD_TCP_HEADER_LEN
        return out.error
    if end - t < out.tcp_header_len:
        out.error = PACKET_TRUNCATED
        return out.error
    out.options_offset = t + TCP_HEADER_MIN_LEN
    out.options_len = out.tcp_header_len - TCP_HEADER_MIN_LEN
    out.payload_offset = t + out.tcp_header_len
    out.payload_len = end - out.payload_offset
    return PACKET_OK


cdef inline int _parse_ipv4(const unsigned char* buf, Py_ssize_t length, PacketView* out) noexcept nogil:
    cdef Py_ssize_t ihl_len, total
    if length < IPV4_HEADER_MIN_LEN:
        out.error = PACKET_TRUNCATED
        return out.error
    ihl_len = (buf[0] & 0x0F) * 4
    if ihl_len < IPV4_HEADER_MIN_LEN:
        out.error = PACKET_BAD_IPV4_HEADER_LEN
        return out.error
    if length < ihl_len:
        out.error = PACKET_TRUNCATED
        return out.error
    total = load_be16(buf + IPV4_TOTAL_LEN_OFFSET)
    out.ip_header_len = ihl_len
    out.ip_total_len = total
    out.protocol = buf[IPV4_PROTOCOL_OFFSET]
    out.ttl = buf[IPV4_TTL_OFFSET]
    out.addr_len = 4
    out.src_offset = IPV4_SRC_OFFSET
    out.dst_offset = IPV4_DST_OFFSET
    if total < ihl_len:
        out.error = PACKET_BAD_IP_TOTAL_LEN
        return out.error
    if total > length:
        out.error = PACKET_TRUNCATED
        return out.error
    # MF set or a non-zero fragment offset: the TCP segment is not all here
    if load_be16(buf + IPV4_FRAG_OFFSET) & 0x3FFF:
        out.error = PACKET_FRAGMENT
        return out.error
    if out.protocol != IPPROTO_TCP_:
        out.error = PACKET_NOT_TCP
        return out.error
    out.tcp_offset = ihl_len
    return _parse_tcp(buf, total, out)


cdef inline int _parse_ipv6(const unsigned char* buf, Py_ssize_t length, PacketView* out) noexcept nogil:
    cdef Py_ssize_t total, pos
    cdef uint8_t next_header
    cdef int walked = 0
    if length < IPV6_HEADER_LEN:
        out.error = PACKET_TRUNCATED
        return out.error
    total = IPV6_HEADER_LEN + <Py_ssize_t>load_be16(buf + IPV6_PAYLOAD_LEN_OFFSET)
    out.ip_total_len = total
    out.ttl = buf[IPV6_HOP_LIMIT_OFFSET]
    out.addr_len = 16
    out.src_offset = IPV6_SRC_OFFSET
    out.dst_offset = IPV6_DST_OFFSET
    next_header = buf[IPV6_NEXT_HEADER_OFFSET]
    pos = IPV6_HEADER_LEN
    out.protocol = next_header
    out.ip_header_len = pos
    if total > length:
        out.error = PACKET_TRUNCATED
        return out.error
    # hop-by-hop (0), routing (43), destination options (60): (len + 1) * 8 bytes each
    while next_header == 0 or next_header == 43 or next_header == 60:
        if walked == IPV6_MAX_EXTENSION_HEADERS:
            out.error = PACKET_BAD_EXTENSION_HEADERS
            return out.error
        if total - pos < 8:
            out.error = PACKET_TRUNCATED
            return out.error
        next_header = buf[pos]
        pos += (<Py_ssize_t>buf[pos + 1] + 1) * 8
        walked += 1
        if pos > total:
            out.error = PACKET_TRUNCATED
            return out.error
        out.protocol = next_header
        out.ip_header_len = pos
    if next_header == 44:
        out.error = PACKET_FRAGMENT
        return out.error
    if next_header != IPPROTO_TCP_:
        out.error = PACKET_NOT_TCP
        return out.error
    out.tcp_offset = pos
    return _parse_tcp(buf, total, out)


cdef inline int parse_packet(const unsigned char* buf, Py_ssize_t length, PacketView* out) noexcept nogil:
    """Fill *out from the IP packet at buf[0:length]; returns PACKET_OK or the reason (also in out.error)."""
    memset(out, 0, sizeof(PacketView))
    if length < 1:
        out.error = PACKET_TRUNCATED
        return out.error
    out.ip_version = buf[0] >> 4
    if out.ip_version == 4:
        return _parse_ipv4(buf, length, out)
    if out.ip_version == 6:
        return _parse_ipv6(buf, length, out)
    out.error = PACKET_BAD_IP_VERSION
    return out.error

