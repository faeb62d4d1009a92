# cython: language_level=3
"""In-place rewriting of IPv4/IPv6 TCP packets (optionally behind a virtio_net_hdr) for the datapath.

Operations: address/port translation, TCP option insertion and MPTCP option stripping within the
40-byte limit, MSS clamping, pushing an Ethernet header. Each keeps the IP length, data offset,
IPv4 header checksum, TCP checksum (full: RFC 1624 incremental; NEEDS_CSUM: the pseudo-header
partial sum, recomputed) and virtio_net_hdr consistent. A packet grows by moving its headers into
the headroom in front of it; the payload never moves. Every operation returns an RW_* status and
leaves the packet unchanged unless it is RW_OK. Nothing raises, nothing touches Python objects.

An inline header (docs/datapath.md, "Build notes"): everything is `cdef inline`, cimported by
the short name (`from rewrite cimport rw_apply`); a module that cimports it compiles its own copy
and imports nothing at run time. The datapath embeds an RwBatch (or its own buffers and RwPacket
records) and calls these directly; rewrite.pyx's PacketBatch is the Python face for the other
layers and the tests.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memmove, memset

from checksum cimport (
    csum_pseudo_v4, csum_pseudo_v6, csum_sum, csum_update16, csum_update_addr4, csum_update_addr6,
    csum_update_sum,
)
from mptcpopt cimport (
    TCP_OPTIONS_MAX_LEN, TCPOLEN_MSS, TCPOLEN_SACK_BASE, TCPOLEN_SACK_BLOCK, TCPOPT_EOL, TCPOPT_MPTCP,
    TCPOPT_MSS, TCPOPT_NOP, TCPOPT_SACK,
)
from packet cimport (
    IPV4_CHECKSUM_OFFSET, IPV4_TOTAL_LEN_OFFSET, IPV6_HEADER_LEN, IPV6_NEXT_HEADER_OFFSET,
    IPV6_PAYLOAD_LEN_OFFSET, PACKET_BAD_EXTENSION_HEADERS, PACKET_OK, PACKET_REASON_COUNT, PACKET_TRUNCATED,
    TCP_CHECKSUM_OFFSET, TCP_DATA_OFFSET_OFFSET, TCP_DST_PORT_OFFSET, TCP_HEADER_MIN_LEN, TCP_SRC_PORT_OFFSET,
    TCP_SYN, PacketView, load_be16, parse_packet, store_be16,
)

# virtio_net_hdr (include/uapi/linux/virtio_net.h). Its 16-bit fields are little-endian: the
# TUN device's default on a little-endian host, and what PACKET_VNET_HDR uses (vio_le()).
cdef enum:
    VNET_HDR_F_NEEDS_CSUM = 1
    VNET_HDR_F_DATA_VALID = 2
    VNET_HDR_GSO_NONE = 0
    VNET_HDR_GSO_TCPV4 = 1
    VNET_HDR_GSO_UDP = 3
    VNET_HDR_GSO_TCPV6 = 4
    VNET_HDR_GSO_ECN = 0x80
    VNET_HDR_LEN = 10
    VNET_HDR_MRG_LEN = 12                # with num_buffers (TUNSETVNETHDRSZ 12)
    VNET_FLAGS_OFFSET = 0
    VNET_GSO_TYPE_OFFSET = 1
    VNET_HDR_LEN_OFFSET = 2
    VNET_GSO_SIZE_OFFSET = 4
    VNET_CSUM_START_OFFSET = 6
    VNET_CSUM_OFFSET_OFFSET = 8
    ETH_HEADER_LEN = 14
    ETH_ADDRS_LEN = 12                   # destination MAC, source MAC
    ETHERTYPE_IPV4 = 0x0800
    ETHERTYPE_IPV6 = 0x86DD
    IP_MAX_LEN = 65535
    IPV6_ROUTING_HEADER = 43

# Status of one operation on one packet; STATUS_NAMES in both twins has the names.
cdef enum:
    RW_OK = 0
    RW_NO_ROOM = 1                 # the options do not fit in 40 bytes even after trimming, or the
                                   # IP length would pass 65535
    RW_NO_HEADROOM = 2             # too few free bytes in front of the packet to grow it
    RW_BAD_REQUEST = 3             # the request does not fit the packet (address length, L2 pushed),
                                   # or its insert block is not whole options (rw_options_whole)
    RW_MALFORMED_VNET = 4          # GSO type not TCP of this IP version, or NEEDS_CSUM not at the TCP checksum
    RW_MALFORMED_TCP_OPTIONS = 5   # an option's length byte is < 2 or runs past the TCP header
    # RW_MALFORMED_TCP_OPTIONS + a packet.pxd PACKET_* reason (1..8): the headers did not parse
    RW_STATUS_COUNT = RW_MALFORMED_TCP_OPTIONS + PACKET_REASON_COUNT

# Counters: one per status (index = status), then these events.
cdef enum:
    RW_CNT_PACKETS = RW_STATUS_COUNT
    RW_CNT_NAT
    RW_CNT_OPTIONS_REWRITTEN       # packets whose option area was rebuilt
    RW_CNT_MPTCP_STRIPPED          # kind-30 options removed
    RW_CNT_SACK_TRIMMED            # SACK options cut to their first block
    RW_CNT_SACK_DROPPED            # SACK options removed
    RW_CNT_NOP_DROPPED             # packets whose NOP alignment was removed to make room
    RW_CNT_MSS_CLAMPED
    RW_CNT_PADDING_TRIMMED         # link-layer padding past the IP length cut off
    RW_CNT_ETH_PUSHED
    RW_COUNTER_COUNT

# RwAction.ops bits, applied in this order: options (strip, then insert), MSS clamp, NAT, padding
# trim, Ethernet header.
cdef enum:
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


cdef struct RwPacket:
    unsigned char* data            # first byte: the virtio_net_hdr if vnet_len, else the IP header
    Py_ssize_t length              # bytes at data, possibly with link-layer padding past the IP length
    Py_ssize_t headroom            # writable bytes in front of data that the packet may grow into
    Py_ssize_t vnet_len            # 0, 10 or 12
    Py_ssize_t l2_len              # 0; ETH_HEADER_LEN after rw_push_eth (then nothing else applies)
    uint8_t vnet_flags             # VNET_HDR_F_* (0 without a virtio_net_hdr)
    uint8_t gso_type               # VNET_HDR_GSO_* without the ECN bit
    PacketView view                # filled by rw_parse; offsets count from the IP header


cdef struct RwAction:
    uint32_t ops                   # RW_OP_* bits
    uint16_t sport
    uint16_t dport
    uint16_t mss                   # clamp: the SYN's MSS option is lowered to this
    uint8_t addr_len               # 4 or 16: length of src/dst, must match the packet
    uint8_t options_len            # bytes of `options` to insert, 0..40
    unsigned char src[16]
    unsigned char dst[16]
    unsigned char options[40]      # opaque option bytes (e.g. a DSS), appended after kept options
    unsigned char eth[12]          # destination MAC, source MAC; EtherType from the IP version


cdef struct RwBatch:
    unsigned char* buf             # capacity slots of slot_size bytes
    Py_ssize_t capacity
    Py_ssize_t slot_size
    Py_ssize_t headroom            # where a freshly received packet starts in its slot
    Py_ssize_t vnet_len
    Py_ssize_t max_packet          # largest IP packet a slot holds (virtio_net_hdr not counted)
    Py_ssize_t* start              # per slot: offset of the packet's first byte in its slot
    Py_ssize_t* length             # per slot: its length
    uint8_t* status                # per slot: RW_* from the last run
    RwAction* action               # per slot: what the next run does
    uint64_t counters[RW_COUNTER_COUNT]


cdef struct RwOption:
    uint8_t kind
    uint8_t offset                 # in the options area
    uint8_t length                 # 1 for NOP


# ---- helpers -----------------------------------------------------------------------------------

cdef inline uint16_t _load_le16(const unsigned char* p) noexcept nogil:
    return <uint16_t>(p[0] | (<uint16_t>p[1] << 8))


cdef inline void _store_le16(unsigned char* p, uint16_t v) noexcept nogil:
    p[0] = <unsigned char>v
    p[1] = <unsigned char>(v >> 8)


cdef inline void _count(uint64_t* counters, int which, uint64_t n) noexcept nogil:
    if counters != NULL:
        counters[which] += n


cdef inline unsigned char* _ip(RwPacket* pkt) noexcept nogil:
    return pkt.data + pkt.vnet_len + pkt.l2_len


cdef inline void _refresh_partial(RwPacket* pkt) noexcept nogil:
    # NEEDS_CSUM: the field holds only the pseudo-header sum over the current addresses and
    # length, which the kernel or NIC completes (per segment for GSO) over csum_start..end.
    cdef unsigned char* ip = _ip(pkt)
    cdef uint32_t l4_len = <uint32_t>(pkt.view.ip_total_len - pkt.view.tcp_offset)
    cdef uint16_t c
    if pkt.view.ip_version == 4:
        c = csum_pseudo_v4(ip + pkt.view.src_offset, ip + pkt.view.dst_offset, l4_len)
    else:
        c = csum_pseudo_v6(ip + pkt.view.src_offset, ip + pkt.view.dst_offset, l4_len)
    store_be16(ip + pkt.view.tcp_offset + TCP_CHECKSUM_OFFSET, c)


cdef inline int rw_walk_options(const unsigned char* opts, Py_ssize_t n, RwOption* out) noexcept nogil:
    """The options in opts[0:n] up to an EOL (the rest is padding, RFC 9293 section 3.1) into
    out[] (room for 40); returns their count, or -1 if a length byte is < 2 or runs past n."""
    cdef Py_ssize_t i = 0, ln
    cdef int count = 0
    cdef uint8_t kind
    if n > TCP_OPTIONS_MAX_LEN:
        return -1
    while i < n:
        kind = opts[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            ln = 1
        else:
            if n - i < 2:
                return -1
            ln = opts[i + 1]
            if ln < 2 or ln > n - i:
                return -1
        out[count].kind = kind
        out[count].offset = <uint8_t>i
        out[count].length = <uint8_t>ln
        count += 1
        i += ln
    return count


cdef inline bint rw_options_whole(const unsigned char* opts, Py_ssize_t n) noexcept nogil:
    """True if opts[0:n] is whole options end to end: at most 40 bytes, no EOL, every length
    >= 2 (a NOP is one byte) and the last one ending exactly at n. Only such a block can be
    inserted: what follows it must still be walked (the MSS clamp, the receiver)."""
    cdef RwOption spans[TCP_OPTIONS_MAX_LEN]
    cdef int count = rw_walk_options(opts, n, spans)
    if count < 0:
        return False
    if count == 0:
        return n == 0
    # The walk stops at an EOL: then the options cover less than n.
    return spans[count - 1].offset + spans[count - 1].length == n


# ---- parse -------------------------------------------------------------------------------------

cdef inline bint _has_routing_header(const unsigned char* ip, Py_ssize_t tcp_offset) noexcept nogil:
    # The chain was already walked (and bounded) by parse_packet().
    cdef uint8_t nh = ip[IPV6_NEXT_HEADER_OFFSET]
    cdef Py_ssize_t pos = IPV6_HEADER_LEN
    while pos < tcp_offset:
        if nh == IPV6_ROUTING_HEADER:
            return True
        nh = ip[pos]
        pos += (<Py_ssize_t>ip[pos + 1] + 1) * 8
    return False


cdef inline int rw_parse(RwPacket* pkt) noexcept nogil:
    """Fill pkt.view (and the virtio_net_hdr fields) from pkt.data[0:length]; RW_OK or why not."""
    cdef int err
    cdef const unsigned char* v = pkt.data
    cdef uint8_t gso
    pkt.l2_len = 0
    pkt.vnet_flags = 0
    pkt.gso_type = VNET_HDR_GSO_NONE
    if pkt.length < pkt.vnet_len:
        memset(&pkt.view, 0, sizeof(PacketView))
        pkt.view.error = PACKET_TRUNCATED
        return RW_MALFORMED_TCP_OPTIONS + PACKET_TRUNCATED
    err = parse_packet(pkt.data + pkt.vnet_len, pkt.length - pkt.vnet_len, &pkt.view)
    if err != PACKET_OK:
        return RW_MALFORMED_TCP_OPTIONS + err
    if pkt.view.ip_version == 6 and pkt.view.tcp_offset > IPV6_HEADER_LEN and _has_routing_header(pkt.data + pkt.vnet_len, pkt.view.tcp_offset):
        # RFC 8200 section 8.1: the pseudo-header then holds the final destination from the
        # routing header, which neither NAT nor the partial sum here accounts for.
        return RW_MALFORMED_TCP_OPTIONS + PACKET_BAD_EXTENSION_HEADERS
    if pkt.vnet_len:
        pkt.vnet_flags = v[VNET_FLAGS_OFFSET]
        gso = v[VNET_GSO_TYPE_OFFSET] & ~VNET_HDR_GSO_ECN
        pkt.gso_type = gso
        if gso == VNET_HDR_GSO_TCPV4:
            if pkt.view.ip_version != 4:
                return RW_MALFORMED_VNET
        elif gso == VNET_HDR_GSO_TCPV6:
            if pkt.view.ip_version != 6:
                return RW_MALFORMED_VNET
        elif gso != VNET_HDR_GSO_NONE:
            return RW_MALFORMED_VNET
        # Every rewrite below assumes the partial checksum is the TCP one; anything else would
        # have the device write a checksum into the wrong place once the headers change.
        if pkt.vnet_flags & VNET_HDR_F_NEEDS_CSUM:
            if (_load_le16(v + VNET_CSUM_START_OFFSET) != pkt.view.tcp_offset
                    or _load_le16(v + VNET_CSUM_OFFSET_OFFSET) != TCP_CHECKSUM_OFFSET):
                return RW_MALFORMED_VNET
    return RW_OK


cdef inline void rw_trim(RwPacket* pkt, uint64_t* counters) noexcept nogil:
    """Cut link-layer padding past the IP length (after rw_parse)."""
    cdef Py_ssize_t want = pkt.vnet_len + pkt.l2_len + pkt.view.ip_total_len
    if pkt.length > want:
        pkt.length = want
        _count(counters, RW_CNT_PADDING_TRIMMED, 1)


# ---- address and port translation ----------------------------------------------------------

cdef inline uint16_t _nat_addr(unsigned char* field, const unsigned char* addr, Py_ssize_t addr_len,
                               uint16_t check, bint v4, bint partial) noexcept nogil:
    """Write addr over the address at field; returns the TCP checksum check updated for it
    (as is with NEEDS_CSUM: the caller recomputes the partial sum once both are written)."""
    if not partial:
        check = csum_update_addr4(check, field, addr) if v4 else csum_update_addr6(check, field, addr)
    memcpy(field, addr, addr_len)
    return check


cdef inline uint16_t _nat_port(unsigned char* field, uint16_t* port, uint16_t value, uint16_t check) noexcept nogil:
    """Write value over the port at field (and *port, its parsed copy); returns check updated for it."""
    check = csum_update16(check, port[0], value)
    store_be16(field, value)
    port[0] = value
    return check


cdef inline int rw_nat(RwPacket* pkt, const unsigned char* src, const unsigned char* dst,
                       int32_t sport, int32_t dport, uint64_t* counters) noexcept nogil:
    """Set the source/destination address (view.addr_len bytes; NULL keeps it) and port (< 0
    keeps it), updating the IPv4 header checksum and the TCP checksum incrementally, or the
    NEEDS_CSUM partial sum by recomputation."""
    cdef unsigned char* ip
    cdef unsigned char* tcp
    cdef bint partial = pkt.vnet_flags & VNET_HDR_F_NEEDS_CSUM
    cdef bint v4 = pkt.view.ip_version == 4
    cdef uint16_t check, ipcheck
    if pkt.l2_len:
        return RW_BAD_REQUEST
    ip = _ip(pkt)
    tcp = ip + pkt.view.tcp_offset
    check = load_be16(tcp + TCP_CHECKSUM_OFFSET)
    if v4 and (src != NULL or dst != NULL):
        ipcheck = load_be16(ip + IPV4_CHECKSUM_OFFSET)
        if src != NULL:
            ipcheck = csum_update_addr4(ipcheck, ip + pkt.view.src_offset, src)
        if dst != NULL:
            ipcheck = csum_update_addr4(ipcheck, ip + pkt.view.dst_offset, dst)
        store_be16(ip + IPV4_CHECKSUM_OFFSET, ipcheck)
    if src != NULL:
        check = _nat_addr(ip + pkt.view.src_offset, src, pkt.view.addr_len, check, v4, partial)
    if dst != NULL:
        check = _nat_addr(ip + pkt.view.dst_offset, dst, pkt.view.addr_len, check, v4, partial)
    if sport >= 0:
        check = _nat_port(tcp + TCP_SRC_PORT_OFFSET, &pkt.view.src_port, <uint16_t>sport, check)
    if dport >= 0:
        check = _nat_port(tcp + TCP_DST_PORT_OFFSET, &pkt.view.dst_port, <uint16_t>dport, check)
    if partial:
        # Ports are not in the pseudo-header: the device sums them itself.
        if src != NULL or dst != NULL:
            _refresh_partial(pkt)
    else:
        store_be16(tcp + TCP_CHECKSUM_OFFSET, check)
        pkt.view.tcp_checksum = check
    _count(counters, RW_CNT_NAT, 1)
    return RW_OK


# ---- options -----------------------------------------------------------------------------------

cdef inline Py_ssize_t _build_options(const unsigned char* opts, const RwOption* spans, int count,
                                      bint strip_mptcp, int sack_mode, bint keep_nops,
                                      unsigned char* out) noexcept nogil:
    # The kept options in their order; sack_mode 0 keeps SACK whole, 1 keeps its first block,
    # 2 drops it. NOPs after the last kept option are padding and always go (the caller pads
    # again). Writes to out unless it is NULL; returns the length.
    cdef int i, last = -1
    cdef Py_ssize_t pos = 0, ln
    cdef uint8_t kind
    for i in range(count):
        kind = spans[i].kind
        if kind == TCPOPT_NOP or (strip_mptcp and kind == TCPOPT_MPTCP) or (sack_mode == 2 and kind == TCPOPT_SACK):
            continue
        last = i
    for i in range(last + 1):
        kind = spans[i].kind
        ln = spans[i].length
        if kind == TCPOPT_NOP:
            if not keep_nops:
                continue
        elif strip_mptcp and kind == TCPOPT_MPTCP:
            continue
        elif kind == TCPOPT_SACK:
            if sack_mode == 2:
                continue
            if sack_mode == 1 and ln > TCPOLEN_SACK_BASE + TCPOLEN_SACK_BLOCK:
                ln = TCPOLEN_SACK_BASE + TCPOLEN_SACK_BLOCK
                if out != NULL:
                    out[pos] = TCPOPT_SACK
                    out[pos + 1] = <unsigned char>ln
                    memcpy(out + pos + 2, opts + spans[i].offset + 2, ln - 2)
                pos += ln
                continue
        if out != NULL:
            memcpy(out + pos, opts + spans[i].offset, ln)
        pos += ln
    return pos


cdef inline int rw_set_options(RwPacket* pkt, bint strip_mptcp, const unsigned char* insert,
                               Py_ssize_t insert_len, Py_ssize_t reserve, uint64_t* counters) noexcept nogil:
    """Rebuild the option area: the existing options (MPTCP ones removed if strip_mptcp), then
    insert[0:insert_len] (opaque, e.g. a DSS, but whole options: RW_BAD_REQUEST otherwise),
    NOP-padded to a multiple of 4. The headers move into the headroom (or back) by the size
    change; `reserve` bytes of headroom must remain.

    40-byte limit (RFC 9293 section 3.1), first layout that fits wins: as is; SACK cut to its
    first block; that without NOPs; no SACK; no SACK and no NOPs; else RW_NO_ROOM. MPTCP,
    timestamps, MSS, window scale and unknown options are never dropped.
    """
    cdef RwOption spans[TCP_OPTIONS_MAX_LEN]
    cdef unsigned char area[TCP_OPTIONS_MAX_LEN]
    cdef unsigned char* ip
    cdef unsigned char* tcp
    cdef unsigned char* opts
    cdef unsigned char* newdata
    cdef Py_ssize_t old_len = pkt.view.options_len, kept = 0, new_len = 0, delta, moved
    cdef int count, i, layout, sack_mode = 0, stripped = 0, sacks_long = 0, sacks = 0, nops = 0
    cdef bint keep_nops = True, fits = False, partial = pkt.vnet_flags & VNET_HDR_F_NEEDS_CSUM
    cdef uint16_t check, word12, new_word12, old_sum, new_sum, old_l4, old_ip_len
    if pkt.l2_len or insert_len < 0 or insert_len > TCP_OPTIONS_MAX_LEN:
        return RW_BAD_REQUEST
    if insert_len and not rw_options_whole(insert, insert_len):
        return RW_BAD_REQUEST
    ip = _ip(pkt)
    tcp = ip + pkt.view.tcp_offset
    opts = tcp + TCP_HEADER_MIN_LEN
    count = rw_walk_options(opts, old_len, spans)
    if count < 0:
        return RW_MALFORMED_TCP_OPTIONS
    for i in range(count):
        if spans[i].kind == TCPOPT_MPTCP:
            stripped += 1
        elif spans[i].kind == TCPOPT_SACK:
            sacks += 1
            if spans[i].length > TCPOLEN_SACK_BASE + TCPOLEN_SACK_BLOCK:
                sacks_long += 1
        elif spans[i].kind == TCPOPT_NOP:
            nops += 1
    if not strip_mptcp:
        stripped = 0
    if stripped == 0 and insert_len == 0:
        return RW_OK
    for layout in range(5):
        # Skip layouts that would drop nothing new, so the counters say what really went.
        if layout == 1 and sacks_long == 0:
            continue
        if (layout == 2 or layout == 4) and nops == 0:
            continue
        if (layout == 3 or layout == 4) and sacks == 0:
            continue
        sack_mode = 0 if layout == 0 else (1 if layout <= 2 else 2)
        keep_nops = layout == 0 or layout == 1 or layout == 3
        kept = _build_options(opts, spans, count, strip_mptcp, sack_mode, keep_nops, NULL)
        new_len = (kept + insert_len + 3) & ~3
        if new_len <= TCP_OPTIONS_MAX_LEN:
            fits = True
            break
    if not fits:
        return RW_NO_ROOM
    delta = new_len - old_len
    if pkt.view.ip_total_len + delta > IP_MAX_LEN:
        return RW_NO_ROOM
    if pkt.headroom - delta < reserve:
        return RW_NO_HEADROOM
    # Build the new area before the move overwrites the old one.
    _build_options(opts, spans, count, strip_mptcp, sack_mode, keep_nops, area)
    if insert_len:
        memcpy(area + kept, insert, insert_len)
    memset(area + kept + insert_len, TCPOPT_NOP, new_len - kept - insert_len)
    word12 = load_be16(tcp + TCP_DATA_OFFSET_OFFSET)
    new_word12 = <uint16_t>((((TCP_HEADER_MIN_LEN + new_len) >> 2) << 12) | (word12 & 0x0FFF))
    check = load_be16(tcp + TCP_CHECKSUM_OFFSET)
    if not partial:
        # Only the data offset word and the option area change in the segment itself.
        old_sum = csum_sum(opts, old_len, word12)
        new_sum = csum_sum(area, new_len, new_word12)
        check = csum_update_sum(check, old_sum, new_sum)
    old_l4 = <uint16_t>(pkt.view.ip_total_len - pkt.view.tcp_offset)
    moved = pkt.vnet_len + pkt.view.tcp_offset + TCP_HEADER_MIN_LEN
    newdata = pkt.data - delta
    memmove(newdata, pkt.data, moved)
    memcpy(newdata + moved, area, new_len)
    pkt.data = newdata
    pkt.length += delta
    pkt.headroom -= delta
    ip = _ip(pkt)
    tcp = ip + pkt.view.tcp_offset
    store_be16(tcp + TCP_DATA_OFFSET_OFFSET, new_word12)
    if pkt.view.ip_version == 4:
        old_ip_len = load_be16(ip + IPV4_TOTAL_LEN_OFFSET)
        store_be16(ip + IPV4_TOTAL_LEN_OFFSET, <uint16_t>(old_ip_len + delta))
        store_be16(ip + IPV4_CHECKSUM_OFFSET, csum_update16(load_be16(ip + IPV4_CHECKSUM_OFFSET),
                                                            old_ip_len, <uint16_t>(old_ip_len + delta)))
    else:
        old_ip_len = load_be16(ip + IPV6_PAYLOAD_LEN_OFFSET)
        store_be16(ip + IPV6_PAYLOAD_LEN_OFFSET, <uint16_t>(old_ip_len + delta))
    pkt.view.ip_total_len += delta
    pkt.view.tcp_header_len = TCP_HEADER_MIN_LEN + new_len
    pkt.view.options_len = new_len
    pkt.view.payload_offset = pkt.view.tcp_offset + pkt.view.tcp_header_len
    if partial:
        _refresh_partial(pkt)
    else:
        # The TCP length is in the pseudo-header.
        check = csum_update16(check, old_l4, <uint16_t>(old_l4 + delta))
        store_be16(tcp + TCP_CHECKSUM_OFFSET, check)
        pkt.view.tcp_checksum = check
    if pkt.vnet_len and (pkt.gso_type != VNET_HDR_GSO_NONE or _load_le16(pkt.data + VNET_HDR_LEN_OFFSET)):
        # hdr_len: every segment carries the whole header, so it is IP + TCP header; gso_size
        # (payload per segment) and csum_start (the TCP header's offset) stay as they are.
        _store_le16(pkt.data + VNET_HDR_LEN_OFFSET, <uint16_t>(pkt.view.tcp_offset + pkt.view.tcp_header_len))
    _count(counters, RW_CNT_OPTIONS_REWRITTEN, 1)
    if strip_mptcp:
        _count(counters, RW_CNT_MPTCP_STRIPPED, stripped)
    if sack_mode == 1:
        _count(counters, RW_CNT_SACK_TRIMMED, sacks_long)
    elif sack_mode == 2:
        _count(counters, RW_CNT_SACK_DROPPED, sacks)
    if not keep_nops:
        _count(counters, RW_CNT_NOP_DROPPED, 1)
    return RW_OK


# ---- MSS clamping ------------------------------------------------------------------------------

cdef inline int rw_clamp_mss(RwPacket* pkt, uint16_t mss, uint64_t* counters) noexcept nogil:
    """On a SYN or SYN/ACK, lower the first MSS option to mss if it is above; others pass as is."""
    cdef RwOption spans[TCP_OPTIONS_MAX_LEN]
    cdef unsigned char* tcp
    cdef int count, i
    cdef Py_ssize_t off, lo, span
    cdef uint16_t old_sum, check
    if pkt.l2_len:
        return RW_BAD_REQUEST
    if not (pkt.view.tcp_flags & TCP_SYN):
        return RW_OK
    tcp = _ip(pkt) + pkt.view.tcp_offset
    count = rw_walk_options(tcp + TCP_HEADER_MIN_LEN, pkt.view.options_len, spans)
    if count < 0:
        return RW_MALFORMED_TCP_OPTIONS
    for i in range(count):
        if spans[i].kind != TCPOPT_MSS or spans[i].length != TCPOLEN_MSS:
            continue
        off = TCP_HEADER_MIN_LEN + spans[i].offset + 2
        if load_be16(tcp + off) <= mss:
            return RW_OK
        # The value may sit at an odd offset (after a lone NOP): update over the aligned words
        # that hold it.
        lo = off & ~1
        span = ((off + 3) & ~1) - lo
        old_sum = csum_sum(tcp + lo, span, 0)
        store_be16(tcp + off, mss)
        if not pkt.vnet_flags & VNET_HDR_F_NEEDS_CSUM:
            check = csum_update_sum(load_be16(tcp + TCP_CHECKSUM_OFFSET), old_sum, csum_sum(tcp + lo, span, 0))
            store_be16(tcp + TCP_CHECKSUM_OFFSET, check)
            pkt.view.tcp_checksum = check
        _count(counters, RW_CNT_MSS_CLAMPED, 1)
        return RW_OK
    return RW_OK


# ---- Ethernet header ---------------------------------------------------------------------------

cdef inline int rw_push_eth(RwPacket* pkt, const unsigned char* macs, uint64_t* counters) noexcept nogil:
    """Put an Ethernet header (macs: destination then source, 12 bytes) between the virtio_net_hdr
    and the IP header, for an AF_PACKET SOCK_RAW send; csum_start and hdr_len then count it."""
    cdef unsigned char* newdata
    cdef unsigned char* eth
    cdef uint16_t hdr_len
    if pkt.l2_len:
        return RW_BAD_REQUEST
    if pkt.headroom < ETH_HEADER_LEN:
        return RW_NO_HEADROOM
    newdata = pkt.data - ETH_HEADER_LEN
    if pkt.vnet_len:
        memmove(newdata, pkt.data, pkt.vnet_len)
    eth = newdata + pkt.vnet_len
    memcpy(eth, macs, ETH_ADDRS_LEN)
    store_be16(eth + ETH_ADDRS_LEN, ETHERTYPE_IPV4 if pkt.view.ip_version == 4 else ETHERTYPE_IPV6)
    if pkt.vnet_len:
        if pkt.vnet_flags & VNET_HDR_F_NEEDS_CSUM:
            _store_le16(newdata + VNET_CSUM_START_OFFSET,
                        <uint16_t>(_load_le16(newdata + VNET_CSUM_START_OFFSET) + ETH_HEADER_LEN))
        hdr_len = _load_le16(newdata + VNET_HDR_LEN_OFFSET)
        if hdr_len:
            _store_le16(newdata + VNET_HDR_LEN_OFFSET, <uint16_t>(hdr_len + ETH_HEADER_LEN))
    pkt.data = newdata
    pkt.length += ETH_HEADER_LEN
    pkt.headroom -= ETH_HEADER_LEN
    pkt.l2_len = ETH_HEADER_LEN
    _count(counters, RW_CNT_ETH_PUSHED, 1)
    return RW_OK


# ---- one action on one packet ------------------------------------------------------------------

cdef inline int rw_apply(RwPacket* pkt, RwAction* a, uint64_t* counters) noexcept nogil:
    """Parse, then apply a's ops in RW_OP_* order, all or nothing; counts the packet and its status."""
    cdef int status = rw_parse(pkt)
    cdef uint32_t ops = a.ops
    cdef const unsigned char* src = NULL
    cdef const unsigned char* dst = NULL
    _count(counters, RW_CNT_PACKETS, 1)
    # Every check that can fail runs before the first change, so a failed packet is untouched.
    if status == RW_OK and (ops & (RW_OP_NAT_SRC | RW_OP_NAT_DST)) and a.addr_len != pkt.view.addr_len:
        status = RW_BAD_REQUEST
    # (rw_set_options keeps the Ethernet header's room too when it grows the packet.)
    if status == RW_OK and (ops & RW_OP_PUSH_ETH) and pkt.headroom < ETH_HEADER_LEN:
        status = RW_NO_HEADROOM
    if status == RW_OK and (ops & RW_OPS_OPTIONS):
        status = rw_set_options(pkt, ops & RW_OP_STRIP_MPTCP, a.options,
                                a.options_len if ops & RW_OP_INSERT_OPTIONS else 0,
                                ETH_HEADER_LEN if ops & RW_OP_PUSH_ETH else 0, counters)
    if status == RW_OK and (ops & RW_OP_CLAMP_MSS):
        # After a rebuild the options are known good (the kept ones walked, the insert whole
        # options), so this cannot fail past the first change.
        status = rw_clamp_mss(pkt, a.mss, counters)
    if status == RW_OK and (ops & RW_OPS_NAT):
        if ops & RW_OP_NAT_SRC:
            src = a.src
        if ops & RW_OP_NAT_DST:
            dst = a.dst
        status = rw_nat(pkt, src, dst, a.sport if ops & RW_OP_NAT_SPORT else -1,
                        a.dport if ops & RW_OP_NAT_DPORT else -1, counters)
    if status == RW_OK:
        rw_trim(pkt, counters)
    if status == RW_OK and (ops & RW_OP_PUSH_ETH):
        status = rw_push_eth(pkt, a.eth, counters)
    _count(counters, status, 1)
    return status


# ---- batches -----------------------------------------------------------------------------------

cdef inline int rw_batch_init(RwBatch* b, Py_ssize_t capacity, Py_ssize_t max_packet,
                              Py_ssize_t headroom, Py_ssize_t vnet_len) noexcept nogil:
    """Allocate capacity slots (zeroed lazily by the OS); 0, or -1 when out of memory."""
    cdef Py_ssize_t i
    memset(b, 0, sizeof(RwBatch))
    b.capacity = capacity
    b.headroom = headroom
    b.vnet_len = vnet_len
    b.max_packet = max_packet
    # Cache-line multiples keep each slot's headers off its neighbour's lines.
    b.slot_size = (headroom + vnet_len + max_packet + 63) & ~63
    b.buf = <unsigned char*>calloc(capacity, b.slot_size)
    b.start = <Py_ssize_t*>calloc(capacity, sizeof(Py_ssize_t))
    b.length = <Py_ssize_t*>calloc(capacity, sizeof(Py_ssize_t))
    b.status = <uint8_t*>calloc(capacity, sizeof(uint8_t))
    b.action = <RwAction*>calloc(capacity, sizeof(RwAction))
    if b.buf == NULL or b.start == NULL or b.length == NULL or b.status == NULL or b.action == NULL:
        rw_batch_free(b)
        return -1
    for i in range(capacity):
        b.start[i] = headroom
    return 0


cdef inline void rw_batch_free(RwBatch* b) noexcept nogil:
    free(b.buf)
    free(b.start)
    free(b.length)
    free(b.status)
    free(b.action)
    b.buf = NULL
    b.start = NULL
    b.length = NULL
    b.status = NULL
    b.action = NULL
    b.capacity = 0


cdef inline unsigned char* rw_batch_slot(RwBatch* b, Py_ssize_t i) noexcept nogil:
    return b.buf + i * b.slot_size


cdef inline void rw_batch_get(RwBatch* b, Py_ssize_t i, RwPacket* pkt) noexcept nogil:
    """Point pkt at slot i's packet (rw_parse next)."""
    pkt.data = rw_batch_slot(b, i) + b.start[i]
    pkt.length = b.length[i]
    pkt.headroom = b.start[i]
    pkt.vnet_len = b.vnet_len
    pkt.l2_len = 0


cdef inline void rw_batch_put(RwBatch* b, Py_ssize_t i, const RwPacket* pkt) noexcept nogil:
    """Record where slot i's packet is after operations moved it."""
    b.start[i] = pkt.data - rw_batch_slot(b, i)
    b.length[i] = pkt.length


cdef inline Py_ssize_t rw_batch_run(RwBatch* b, Py_ssize_t n) noexcept nogil:
    """Apply each of slots 0..n-1's action to its packet; status per slot; returns how many are RW_OK."""
    cdef RwPacket pkt
    cdef Py_ssize_t i, ok = 0
    cdef int status
    for i in range(n):
        rw_batch_get(b, i, &pkt)
        status = rw_apply(&pkt, &b.action[i], b.counters)
        b.status[i] = <uint8_t>status
        rw_batch_put(b, i, &pkt)
        if status == RW_OK:
            ok += 1
    return ok
