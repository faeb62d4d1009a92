"""Pure-Python twin of mptun._fast.rewrite: PacketBatch and one-packet helpers for in-place rewriting of
IPv4/IPv6 TCP packets (NAT, option insertion/MPTCP stripping, MSS clamp, Ethernet header).

Same API, statuses, counters and output bytes as the compiled module (see rewrite.pxd for the
contract); a slot that is not ok is left unchanged. Slow: for tests, debugging and MPTUN_IMPL=pure.
As the compiled module is rewrite.pyx's PacketBatch over rewrite.pxd's per-packet functions,
this is PacketBatch over mptun.pure.rewrite_ops, where the statuses and operations are defined.
"""

import struct

from mptun.pure import rewrite_ops as _ops
from mptun.pure.rewrite_ops import (  # noqa: F401  (the statuses and flags are this module's API too)
    BAD_REQUEST,
    COUNTER_NAMES,
    MALFORMED_FRAGMENT,
    MALFORMED_IP_TOTAL_LEN,
    MALFORMED_IP_VERSION,
    MALFORMED_IPV4_HEADER_LEN,
    MALFORMED_IPV6_EXTENSION_HEADERS,
    MALFORMED_NOT_TCP,
    MALFORMED_TCP_HEADER_LEN,
    MALFORMED_TCP_OPTIONS,
    MALFORMED_TRUNCATED,
    MALFORMED_VNET,
    MAX_OPTIONS,
    MAX_PACKET,
    NO_HEADROOM,
    NO_ROOM,
    OK,
    STATUS_NAMES,
    VNET_HDR_F_DATA_VALID,
    VNET_HDR_F_NEEDS_CSUM,
    VNET_HDR_GSO_ECN,
    VNET_HDR_GSO_NONE,
    VNET_HDR_GSO_TCPV4,
    VNET_HDR_GSO_TCPV6,
)
from mptun.wire.tcpip import TCP_HEADER_MIN_LEN as _TCP_MIN

VNET_HDR_LENGTHS = (0, 10, 12)
DEFAULT_HEADROOM = 128


def status_name(status):
    """The name of an RW status code ("ok", "no room", "malformed:<reason>", ...)."""
    return STATUS_NAMES[status]


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
        self._action = [_ops.RwAction() for _ in range(capacity)]
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
        self._action[i] = _ops.RwAction()

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
        a = _ops.RwAction()
        if strip_mptcp:
            a.ops |= _ops.RW_OP_STRIP_MPTCP
        if options is not None:
            options = bytes(options)
            if len(options) > MAX_OPTIONS:
                raise ValueError(f"at most {MAX_OPTIONS} option bytes, not {len(options)}")
            if options and not _ops.rw_options_whole(options):
                raise ValueError(f"options to insert must be whole TCP options without EOL, not {options.hex()}")
            a.ops |= _ops.RW_OP_INSERT_OPTIONS
            a.options = options
        if clamp_mss is not None:
            a.ops |= _ops.RW_OP_CLAMP_MSS
            a.mss = _u16(clamp_mss)
        if src is not None or dst is not None:
            s = _addr(src) if src is not None else None
            d = _addr(dst) if dst is not None else None
            if s is not None and d is not None and len(s) != len(d):
                raise ValueError("src and dst must be the same address family")
            a.addr_len = len(s if s is not None else d)
            if s is not None:
                a.ops |= _ops.RW_OP_NAT_SRC
                a.src = s
            if d is not None:
                a.ops |= _ops.RW_OP_NAT_DST
                a.dst = d
        if sport is not None:
            a.ops |= _ops.RW_OP_NAT_SPORT
            a.sport = _u16(sport)
        if dport is not None:
            a.ops |= _ops.RW_OP_NAT_DPORT
            a.dport = _u16(dport)
        if eth is not None:
            eth = bytes(eth)
            if len(eth) != 12:
                raise ValueError("eth must be destination + source MAC, 12 bytes")
            a.ops |= _ops.RW_OP_PUSH_ETH
            a.eth = eth
        self._action[i] = a

    def set_action_all(self, **action):
        """set_action() with the same arguments on slots 0..count-1."""
        for i in range(self._count):
            self.set_action(i, **action)

    def clear_action(self, i):
        self._check(i)
        self._action[i] = _ops.RwAction()

    def run(self, n=None):
        """Apply slots 0..n-1's actions (default n: count); returns how many are ok.
        Statuses per slot; a slot that is not ok is left unchanged."""
        k = self._count if n is None else n
        if not 0 <= k <= self._capacity:
            raise ValueError(f"n must be in 0..{self._capacity}")
        ok = 0
        for i in range(k):
            base = i * self._slot
            p = _ops.RwPacket(self._buf, base + self._start[i], self._length[i], self._start[i], self._vnet)
            status = _ops.rw_apply(p, self._action[i], self._counters)
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
    p = _ops.RwPacket(b, 0, len(b), 0, vnet_hdr_len)
    status = _ops.rw_parse(p)
    if status != OK:
        return status, None
    ip = vnet_hdr_len
    vnet = None
    if vnet_hdr_len:
        vnet = dict(zip(("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset"),
                        struct.unpack_from("<BBHHHH", b)))
    opts = ip + p.tcp_offset + _TCP_MIN
    return status, {
        "version": p.ip_version,
        "src": b[ip + p.src_off:ip + p.src_off + p.addr_len],
        "dst": b[ip + p.dst_off:ip + p.dst_off + p.addr_len],
        "ip_header_len": p.tcp_offset,
        "ip_total_len": p.ip_total_len,
        "sport": p.src_port,
        "dport": p.dst_port,
        "seq": p.seq,
        "ack": p.ack,
        "flags": p.tcp_flags,
        "window": p.window,
        "checksum": p.tcp_checksum,
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
