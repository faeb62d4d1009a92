# cython: language_level=3
"""PacketBatch and one-packet helpers: the Python face of rewrite.pxd (same API as mptun.pure.rewrite).

A PacketBatch owns one buffer of fixed-size slots (headroom + virtio_net_hdr + packet) with a
per-slot start, length, status and action; run() applies every slot's action with the GIL
released and counts by name. The datapath cimports rewrite.pxd and drives RwBatch directly.
"""

from cpython.buffer cimport PyBUF_WRITABLE
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t
from libc.string cimport memcpy, memset

# rewrite.pxd is an inline header, not this module's own pxd (docs/datapath.md, "Build notes"):
# its names are cimported like any other's, and need no runtime import.
from rewrite cimport (
    ETH_ADDRS_LEN, ETH_HEADER_LEN, RW_BAD_REQUEST, RW_COUNTER_COUNT, RW_MALFORMED_TCP_OPTIONS,
    RW_MALFORMED_VNET, RW_NO_HEADROOM, RW_NO_ROOM, RW_OK, RW_OP_CLAMP_MSS, RW_OP_INSERT_OPTIONS,
    RW_OP_NAT_DPORT, RW_OP_NAT_DST, RW_OP_NAT_SPORT, RW_OP_NAT_SRC, RW_OP_PUSH_ETH, RW_OP_STRIP_MPTCP,
    RW_STATUS_COUNT, VNET_CSUM_OFFSET_OFFSET, VNET_CSUM_START_OFFSET, VNET_GSO_SIZE_OFFSET,
    VNET_HDR_LEN_OFFSET, RwAction, RwBatch, RwPacket, _load_le16, rw_batch_free, rw_batch_init,
    rw_batch_run, rw_batch_slot, rw_options_whole, rw_parse,
)

OK = RW_OK
NO_ROOM = RW_NO_ROOM
NO_HEADROOM = RW_NO_HEADROOM
BAD_REQUEST = RW_BAD_REQUEST
MALFORMED_VNET = RW_MALFORMED_VNET
MALFORMED_TCP_OPTIONS = RW_MALFORMED_TCP_OPTIONS

_PACKET_REASONS = ("truncated", "ip_version", "ipv4_header_len", "ip_total_len", "not_tcp",
                   "fragment", "tcp_header_len", "ipv6_extension_headers")
(MALFORMED_TRUNCATED, MALFORMED_IP_VERSION, MALFORMED_IPV4_HEADER_LEN, MALFORMED_IP_TOTAL_LEN,
 MALFORMED_NOT_TCP, MALFORMED_FRAGMENT, MALFORMED_TCP_HEADER_LEN,
 MALFORMED_IPV6_EXTENSION_HEADERS) = range(RW_MALFORMED_TCP_OPTIONS + 1, RW_STATUS_COUNT)

STATUS_NAMES = ("ok", "no room", "no headroom", "bad request", "malformed:vnet_hdr",
                "malformed:tcp_options") + tuple("malformed:" + r for r in _PACKET_REASONS)
COUNTER_NAMES = STATUS_NAMES + ("packets", "nat", "options_rewritten", "mptcp_stripped", "sack_trimmed",
                                "sack_dropped", "nop_dropped", "mss_clamped", "padding_trimmed",
                                "eth_pushed")
assert len(STATUS_NAMES) == RW_STATUS_COUNT and len(COUNTER_NAMES) == RW_COUNTER_COUNT

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


def status_name(int status):
    """The name of an RW status code ("ok", "no room", "malformed:<reason>", ...)."""
    return STATUS_NAMES[status]


cdef bytes _addr(value):
    # ipaddress objects or raw bytes
    b = bytes(getattr(value, "packed", value))
    if len(b) not in (4, 16):
        raise ValueError(f"address must be 4 or 16 bytes, not {len(b)}")
    return b


cdef class PacketBatch:
    """capacity slots, each headroom + vnet_hdr_len + max_packet bytes (rounded up to 64).

    One thread at a time: run() releases the GIL but the batch is not locked.
    """

    cdef RwBatch b
    cdef Py_ssize_t _count
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]

    def __cinit__(self, Py_ssize_t capacity, Py_ssize_t max_packet=MAX_PACKET,
                  Py_ssize_t headroom=DEFAULT_HEADROOM, Py_ssize_t vnet_hdr_len=0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        if not 20 <= max_packet <= MAX_PACKET:
            raise ValueError(f"max_packet must be in 20..{MAX_PACKET}, not {max_packet}")
        if not 0 <= headroom <= 4096:
            raise ValueError(f"headroom must be in 0..4096, not {headroom}")
        if vnet_hdr_len not in VNET_HDR_LENGTHS:
            raise ValueError(f"vnet_hdr_len must be one of {VNET_HDR_LENGTHS}, not {vnet_hdr_len}")
        if rw_batch_init(&self.b, capacity, max_packet, headroom, vnet_hdr_len) != 0:
            raise MemoryError(f"PacketBatch of {capacity} slots")
        self._count = 0

    def __dealloc__(self):
        rw_batch_free(&self.b)

    def __getbuffer__(self, Py_buffer* view, int flags):
        # The whole slot buffer, so memoryview slices keep the batch alive.
        self._shape[0] = self.b.capacity * self.b.slot_size
        self._strides[0] = 1
        view.buf = <void*>self.b.buf
        view.obj = self
        view.len = self._shape[0]
        view.readonly = 0
        view.itemsize = 1
        view.format = b"B"
        view.ndim = 1
        view.shape = self._shape
        view.strides = self._strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    @property
    def capacity(self):
        return self.b.capacity

    @property
    def max_packet(self):
        return self.b.max_packet

    @property
    def headroom(self):
        return self.b.headroom

    @property
    def vnet_hdr_len(self):
        return self.b.vnet_len

    @property
    def slot_size(self):
        return self.b.slot_size

    @property
    def count(self):
        """Slots in use: run() without n covers 0..count-1; append() fills slot count."""
        return self._count

    @count.setter
    def count(self, Py_ssize_t n):
        if not 0 <= n <= self.b.capacity:
            raise ValueError(f"count must be in 0..{self.b.capacity}, not {n}")
        self._count = n

    cdef inline void _check(self, Py_ssize_t i) except *:
        if not 0 <= i < self.b.capacity:
            raise IndexError(f"slot {i} not in 0..{self.b.capacity - 1}")

    cdef void _reset_slot(self, Py_ssize_t i, Py_ssize_t length) noexcept:
        self.b.start[i] = self.b.headroom
        self.b.length[i] = length
        self.b.status[i] = RW_OK
        memset(&self.b.action[i], 0, sizeof(RwAction))

    def load(self, Py_ssize_t i, const unsigned char[::1] data not None):
        """Copy a packet (virtio_net_hdr first if vnet_hdr_len) into slot i; clears its action."""
        self._check(i)
        cdef Py_ssize_t n = data.shape[0]
        if n > self.b.vnet_len + self.b.max_packet:
            raise ValueError(f"packet of {n} bytes does not fit a slot (max {self.b.vnet_len + self.b.max_packet})")
        if n:
            memcpy(rw_batch_slot(&self.b, i) + self.b.headroom, &data[0], n)
        self._reset_slot(i, n)

    def append(self, data):
        """load() into slot count and grow count; returns the slot index."""
        if self._count >= self.b.capacity:
            raise IndexError("PacketBatch is full")
        self.load(self._count, data)
        self._count += 1
        return self._count - 1

    def clear(self):
        """Forget all packets, statuses and actions (count = 0); counters stay."""
        cdef Py_ssize_t i
        for i in range(self.b.capacity):
            self._reset_slot(i, 0)
        self._count = 0

    def recv_buffer(self, Py_ssize_t i):
        """Writable memoryview of slot i from its headroom on, to receive a packet into."""
        self._check(i)
        cdef Py_ssize_t base = i * self.b.slot_size
        return memoryview(self)[base + self.b.headroom:base + self.b.slot_size]

    def set_received(self, Py_ssize_t i, Py_ssize_t n):
        """Slot i now holds n bytes written through recv_buffer(i); clears its action."""
        self._check(i)
        if not 0 <= n <= self.b.slot_size - self.b.headroom:
            raise ValueError(f"length {n} does not fit slot {i}")
        self._reset_slot(i, n)

    def view(self, Py_ssize_t i):
        """Memoryview of slot i's packet as it is now (to send without copying)."""
        self._check(i)
        cdef Py_ssize_t at = i * self.b.slot_size + self.b.start[i]
        return memoryview(self)[at:at + self.b.length[i]]

    def packet(self, Py_ssize_t i):
        """A copy of slot i's packet as it is now."""
        return bytes(self.view(i))

    def start(self, Py_ssize_t i):
        """Offset of slot i's packet in its slot: the headroom left in front of it."""
        self._check(i)
        return self.b.start[i]

    def length(self, Py_ssize_t i):
        self._check(i)
        return self.b.length[i]

    def status(self, Py_ssize_t i):
        """Slot i's status from the last run (an RW status code; see STATUS_NAMES)."""
        self._check(i)
        return self.b.status[i]

    def statuses(self, n=None):
        """Statuses of slots 0..n-1 (default: count) as bytes, one code per slot."""
        cdef Py_ssize_t k = self._count if n is None else n
        if not 0 <= k <= self.b.capacity:
            raise ValueError(f"n must be in 0..{self.b.capacity}")
        return bytes((<char*>self.b.status)[:k])

    def set_action(self, Py_ssize_t i, *, bint strip_mptcp=False, options=None, clamp_mss=None,
                   src=None, dst=None, sport=None, dport=None, eth=None):
        """What the next run() does to slot i: strip MPTCP options, insert `options` (opaque
        bytes, <= 40, but whole options: no EOL, every length >= 2 but a NOP's), clamp a SYN's
        MSS, NAT (address bytes / ipaddress objects, ports), push an Ethernet header (`eth`:
        destination + source MAC, 12 bytes). None leaves a part out."""
        self._check(i)
        cdef RwAction a
        memset(&a, 0, sizeof(RwAction))
        cdef const unsigned char[::1] mv
        cdef bytes s, d
        if strip_mptcp:
            a.ops |= RW_OP_STRIP_MPTCP
        if options is not None:
            mv = bytes(options)
            if mv.shape[0] > MAX_OPTIONS:
                raise ValueError(f"at most {MAX_OPTIONS} option bytes, not {mv.shape[0]}")
            # Once here, not per packet: run() would only count such a slot as a bad request.
            if mv.shape[0] and not rw_options_whole(&mv[0], mv.shape[0]):
                raise ValueError(f"options to insert must be whole TCP options without EOL, "
                                 f"not {bytes(mv).hex()}")
            a.ops |= RW_OP_INSERT_OPTIONS
            a.options_len = <uint8_t>mv.shape[0]
            if mv.shape[0]:
                memcpy(a.options, &mv[0], mv.shape[0])
        if clamp_mss is not None:
            a.ops |= RW_OP_CLAMP_MSS
            a.mss = <uint16_t>clamp_mss
        if src is not None or dst is not None:
            s = _addr(src) if src is not None else None
            d = _addr(dst) if dst is not None else None
            if s is not None and d is not None and len(s) != len(d):
                raise ValueError("src and dst must be the same address family")
            a.addr_len = len(s if s is not None else d)
            if s is not None:
                a.ops |= RW_OP_NAT_SRC
                memcpy(a.src, <const char*>s, a.addr_len)
            if d is not None:
                a.ops |= RW_OP_NAT_DST
                memcpy(a.dst, <const char*>d, a.addr_len)
        if sport is not None:
            a.ops |= RW_OP_NAT_SPORT
            a.sport = <uint16_t>sport
        if dport is not None:
            a.ops |= RW_OP_NAT_DPORT
            a.dport = <uint16_t>dport
        if eth is not None:
            mv = bytes(eth)
            if mv.shape[0] != ETH_ADDRS_LEN:
                raise ValueError(f"eth must be destination + source MAC, {ETH_ADDRS_LEN} bytes")
            a.ops |= RW_OP_PUSH_ETH
            memcpy(a.eth, &mv[0], ETH_ADDRS_LEN)
        self.b.action[i] = a

    def set_action_all(self, **action):
        """set_action() with the same arguments on slots 0..count-1."""
        cdef Py_ssize_t i
        if self._count == 0:
            return
        self.set_action(0, **action)
        for i in range(1, self._count):
            self.b.action[i] = self.b.action[0]

    def clear_action(self, Py_ssize_t i):
        self._check(i)
        memset(&self.b.action[i], 0, sizeof(RwAction))

    def run(self, n=None):
        """Apply slots 0..n-1's actions (default n: count) without the GIL; returns how many are ok.
        Statuses per slot; a slot that is not ok is left unchanged."""
        cdef Py_ssize_t k = self._count if n is None else n
        cdef Py_ssize_t ok
        if not 0 <= k <= self.b.capacity:
            raise ValueError(f"n must be in 0..{self.b.capacity}")
        with nogil:
            ok = rw_batch_run(&self.b, k)
        return ok

    def counters(self):
        """{name: count} for every status and event since the last reset_counters()."""
        return {COUNTER_NAMES[j]: self.b.counters[j] for j in range(RW_COUNTER_COUNT)}

    def reset_counters(self):
        memset(self.b.counters, 0, sizeof(self.b.counters))


def parse(const unsigned char[::1] data not None, Py_ssize_t vnet_hdr_len=0):
    """(status, fields) of one packet as the rewriter sees it; fields is None unless status is ok."""
    if vnet_hdr_len not in VNET_HDR_LENGTHS:
        raise ValueError(f"vnet_hdr_len must be one of {VNET_HDR_LENGTHS}")
    cdef RwPacket pkt
    memset(&pkt, 0, sizeof(RwPacket))
    # rw_parse only reads.
    pkt.data = <unsigned char*>&data[0] if data.shape[0] else <unsigned char*>b""
    pkt.length = data.shape[0]
    pkt.vnet_len = vnet_hdr_len
    cdef int status = rw_parse(&pkt)
    if status != RW_OK:
        return status, None
    cdef Py_ssize_t ip = vnet_hdr_len
    v = pkt.view
    vnet = None
    if vnet_hdr_len:
        vnet = {
            "flags": data[0],
            "gso_type": data[1],
            "hdr_len": _load_le16(&data[VNET_HDR_LEN_OFFSET]),
            "gso_size": _load_le16(&data[VNET_GSO_SIZE_OFFSET]),
            "csum_start": _load_le16(&data[VNET_CSUM_START_OFFSET]),
            "csum_offset": _load_le16(&data[VNET_CSUM_OFFSET_OFFSET]),
        }
    return status, {
        "version": v.ip_version,
        "src": bytes(data[ip + v.src_offset:ip + v.src_offset + v.addr_len]),
        "dst": bytes(data[ip + v.dst_offset:ip + v.dst_offset + v.addr_len]),
        "ip_header_len": v.tcp_offset,
        "ip_total_len": v.ip_total_len,
        "sport": v.src_port,
        "dport": v.dst_port,
        "seq": v.seq,
        "ack": v.ack,
        "flags": v.tcp_flags,
        "window": v.window,
        "checksum": v.tcp_checksum,
        "tcp_header_len": v.tcp_header_len,
        "options": bytes(data[ip + v.options_offset:ip + v.options_offset + v.options_len]),
        "payload_len": v.payload_len,
        "vnet": vnet,
    }


def rewrite(data, Py_ssize_t vnet_hdr_len=0, Py_ssize_t headroom=DEFAULT_HEADROOM, **action):
    """(status, packet) after applying set_action(**action) to one packet; unchanged unless ok."""
    data = bytes(data)
    batch = PacketBatch(1, max(20, min(MAX_PACKET, len(data) - vnet_hdr_len)), headroom, vnet_hdr_len)
    batch.load(0, data)
    batch.set_action(0, **action)
    batch.run(1)
    return batch.status(0), batch.packet(0)
