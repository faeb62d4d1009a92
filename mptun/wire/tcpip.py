"""IPv4, IPv6 and TCP headers and plain TCP options as value types with parse/emit/buffer_len.

parse() takes bytes from the network and raises MalformedPacket / MalformedOption
with a reason (never anything else); emit() of a parsed value gives the same
bytes back. Slow and exact: for tests, the pure twins and control packets, not
the per-packet path (src/fastpath/packet.pxd, mptcpopt.pxd).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Self

IPPROTO_TCP = 6
# IPv6 next-header values the parsers walk (hop-by-hop, routing, destination options) or stop at
IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_DSTOPTS = 60
IPV4_HEADER_MIN_LEN = 20
IPV6_HEADER_LEN = 40
TCP_HEADER_MIN_LEN = 20
TCP_OPTIONS_MAX_LEN = 40

# Byte offsets of the fields the per-packet code reads and writes (the same names as in packet.pxd)
IPV4_TOTAL_LEN_OFFSET = 2
IPV4_FRAG_OFFSET = 6
IPV4_CHECKSUM_OFFSET = 10
IPV4_SRC_OFFSET = 12
IPV4_DST_OFFSET = 16
IPV6_PAYLOAD_LEN_OFFSET = 4
IPV6_NEXT_HEADER_OFFSET = 6
IPV6_SRC_OFFSET = 8
IPV6_DST_OFFSET = 24
TCP_SRC_PORT_OFFSET = 0
TCP_DST_PORT_OFFSET = 2
TCP_DATA_OFFSET_OFFSET = 12
TCP_FLAGS_OFFSET = 13
TCP_CHECKSUM_OFFSET = 16

# TCP flag bits: byte 13, and AE (RFC 9293's former NS) from byte 12
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80
TCP_AE = 0x100

TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WSCALE = 3
TCPOPT_SACK_PERMITTED = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMPS = 8
TCPOPT_MPTCP = 30
TCPOLEN_MSS = 4
TCPOLEN_WSCALE = 3
TCPOLEN_SACK_PERMITTED = 2
TCPOLEN_SACK_BASE = 2
TCPOLEN_SACK_BLOCK = 8
TCPOLEN_TIMESTAMPS = 10


class PacketReason(IntEnum):
    """Why a packet cannot be used; same codes as packet.pxd's PACKET_* and PACKET_REASON_NAMES."""

    OK = 0
    TRUNCATED = 1
    BAD_IP_VERSION = 2
    BAD_IPV4_HEADER_LEN = 3
    BAD_IP_TOTAL_LEN = 4
    NOT_TCP = 5
    FRAGMENT = 6
    BAD_TCP_HEADER_LEN = 7
    BAD_EXTENSION_HEADERS = 8


class Reason(IntEnum):
    """Why a TCP/MPTCP option was not accepted; same codes as mptcpopt.pxd's REASON_* and REASON_NAMES."""

    OK = 0
    TRUNCATED = 1
    BAD_OPTION_LENGTH = 2
    BAD_TCP_OPTION_LENGTH = 3
    BAD_SUBOPTION_LENGTH = 4
    UNKNOWN_SUBTYPE = 5
    BAD_VERSION = 6
    DUPLICATE_SUBOPTION = 7
    UNSUPPORTED_MPC_FLAGS = 8
    DATA_FIN_WITHOUT_MAPPING = 9
    OPTIONS_TOO_LONG = 10


class MalformedPacket(ValueError):
    def __init__(self, reason: PacketReason, detail: str = ""):
        super().__init__(f"{reason.name}{': ' + detail if detail else ''}")
        self.reason = reason


class MalformedOption(ValueError):
    """The one exception option parsers raise; `reason` says why."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(f"{reason.name}{': ' + detail if detail else ''}")
        self.reason = reason


# ---- checksums (RFC 1071)

def ones_complement_sum(data: bytes, initial: int = 0) -> int:
    """16-bit one's complement sum of data (odd length padded with a zero byte), folded, not inverted."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes, initial: int = 0) -> int:
    """The checksum field value that makes `data` (plus `initial`) sum to 0xFFFF."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address,
                      protocol: int, length: int) -> int:
    """Folded sum of the IPv4 (RFC 9293 3.1) or IPv6 (RFC 8200 8.1) pseudo-header."""
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, protocol, length)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, protocol)
    return ones_complement_sum(pseudo)


# ---- IP headers

@dataclass(frozen=True)
class Ipv4Header:
    src: IPv4Address
    dst: IPv4Address
    payload_len: int
    protocol: int = IPPROTO_TCP
    ttl: int = 64
    tos: int = 0
    identification: int = 0
    flags: int = 0x2          # 3 bits: reserved, DF, MF
    fragment_offset: int = 0  # in 8-byte units
    options: bytes = b""      # raw, a multiple of 4 bytes
    checksum: int | None = None  # as parsed; emit() computes it when None

    def __post_init__(self):
        assert len(self.options) % 4 == 0 and len(self.options) <= 40, "IPv4 options are 0..40 bytes, 4-aligned"

    @property
    def buffer_len(self) -> int:
        return IPV4_HEADER_MIN_LEN + len(self.options)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """The IPv4 header at the start of `data` (which must hold the whole packet)."""
        if len(data) < IPV4_HEADER_MIN_LEN:
            raise MalformedPacket(PacketReason.TRUNCATED, "IPv4 header")
        if data[0] >> 4 != 4:
            raise MalformedPacket(PacketReason.BAD_IP_VERSION)
        header_len = (data[0] & 0x0F) * 4
        if header_len < IPV4_HEADER_MIN_LEN:
            raise MalformedPacket(PacketReason.BAD_IPV4_HEADER_LEN)
        if len(data) < header_len:
            raise MalformedPacket(PacketReason.TRUNCATED, "IPv4 options")
        tos, total, ident, frag, ttl, proto, csum = struct.unpack_from("!xBHHHBBH", data)
        if total < header_len:
            raise MalformedPacket(PacketReason.BAD_IP_TOTAL_LEN)
        if total > len(data):
            raise MalformedPacket(PacketReason.TRUNCATED, "IPv4 total length")
        return cls(src=IPv4Address(data[12:16]), dst=IPv4Address(data[16:20]),
                   payload_len=total - header_len, protocol=proto, ttl=ttl, tos=tos,
                   identification=ident, flags=frag >> 13, fragment_offset=frag & 0x1FFF,
                   options=bytes(data[20:header_len]), checksum=csum)

    def emit(self) -> bytes:
        header = bytearray(struct.pack(
            "!BBHHHBBH4s4s", 0x40 | (self.buffer_len // 4), self.tos, self.buffer_len + self.payload_len,
            self.identification, (self.flags << 13) | self.fragment_offset, self.ttl, self.protocol, 0,
            self.src.packed, self.dst.packed)) + self.options
        csum = internet_checksum(bytes(header)) if self.checksum is None else self.checksum
        struct.pack_into("!H", header, 10, csum)
        return bytes(header)


@dataclass(frozen=True)
class Ipv6Header:
    """The fixed IPv6 header; extension headers, if any, are part of the payload here."""

    src: IPv6Address
    dst: IPv6Address
    payload_len: int
    next_header: int = IPPROTO_TCP
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    buffer_len = IPV6_HEADER_LEN

    @classmethod
    def parse(cls, data: bytes) -> Self:
        if len(data) < IPV6_HEADER_LEN:
            raise MalformedPacket(PacketReason.TRUNCATED, "IPv6 header")
        word, payload_len, next_header, hop_limit = struct.unpack_from("!IHBB", data)
        if word >> 28 != 6:
            raise MalformedPacket(PacketReason.BAD_IP_VERSION)
        if IPV6_HEADER_LEN + payload_len > len(data):
            raise MalformedPacket(PacketReason.TRUNCATED, "IPv6 payload length")
        return cls(src=IPv6Address(data[8:24]), dst=IPv6Address(data[24:40]), payload_len=payload_len,
                   next_header=next_header, hop_limit=hop_limit,
                   traffic_class=(word >> 20) & 0xFF, flow_label=word & 0xFFFFF)

    def emit(self) -> bytes:
        word = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return struct.pack("!IHBB16s16s", word, self.payload_len, self.next_header, self.hop_limit,
                           self.src.packed, self.dst.packed)


# ---- TCP header

@dataclass(frozen=True)
class TcpHeader:
    src_port: int
    dst_port: int
    seq: int
    ack: int = 0
    flags: int = TCP_ACK          # TCP_* bits, AE included
    window: int = 65535
    urgent: int = 0
    options: bytes = b""          # raw options area, a multiple of 4 bytes (see build_options)
    checksum: int | None = None   # as parsed; emit() computes it from addresses when None

    def __post_init__(self):
        assert len(self.options) % 4 == 0 and len(self.options) <= TCP_OPTIONS_MAX_LEN, \
            "the TCP options area is 0..40 bytes, 4-aligned"

    @property
    def buffer_len(self) -> int:
        return TCP_HEADER_MIN_LEN + len(self.options)

    @classmethod
    def parse(cls, segment: bytes) -> Self:
        """The TCP header at the start of `segment` (header + payload)."""
        if len(segment) < TCP_HEADER_MIN_LEN:
            raise MalformedPacket(PacketReason.TRUNCATED, "TCP header")
        sport, dport, seq, ack, off_flags, window, csum, urgent = struct.unpack_from("!HHIIHHHH", segment)
        header_len = (off_flags >> 12) * 4
        if header_len < TCP_HEADER_MIN_LEN:
            raise MalformedPacket(PacketReason.BAD_TCP_HEADER_LEN)
        if len(segment) < header_len:
            raise MalformedPacket(PacketReason.TRUNCATED, "TCP options")
        return cls(src_port=sport, dst_port=dport, seq=seq, ack=ack, flags=off_flags & 0x0FFF,
                   window=window, urgent=urgent, options=bytes(segment[TCP_HEADER_MIN_LEN:header_len]),
                   checksum=csum)

    def emit(self, payload: bytes = b"", src: IPv4Address | IPv6Address | None = None,
             dst: IPv4Address | IPv6Address | None = None) -> bytes:
        """Header + payload; with src and dst the checksum is computed (else the parsed one is kept)."""
        segment = bytearray(struct.pack(
            "!HHIIHHHH", self.src_port, self.dst_port, self.seq, self.ack,
            ((self.buffer_len // 4) << 12) | self.flags, self.window, 0, self.urgent)) + self.options + payload
        if src is not None and dst is not None:
            csum = internet_checksum(bytes(segment), pseudo_header_sum(src, dst, IPPROTO_TCP, len(segment)))
        else:
            assert self.checksum is not None, "give src and dst, or a checksum"
            csum = self.checksum
        struct.pack_into("!H", segment, 16, csum)
        return bytes(segment)


def build_packet(src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, tcp: TcpHeader,
                 payload: bytes = b"", ttl: int = 64) -> bytes:
    """A whole IPv4 or IPv6 TCP packet with correct checksums (for tests and crafted control packets)."""
    segment = tcp.emit(payload, src, dst)
    if src.version == 4:
        return Ipv4Header(src=src, dst=dst, payload_len=len(segment), ttl=ttl).emit() + segment
    return Ipv6Header(src=src, dst=dst, payload_len=len(segment), hop_limit=ttl).emit() + segment


def tcp_checksum_ok(src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, segment: bytes) -> bool:
    return ones_complement_sum(segment, pseudo_header_sum(src, dst, IPPROTO_TCP, len(segment))) == 0xFFFF


# ---- plain TCP options: each value is one option, kind and length bytes included

def _check_length(data: bytes, expected: int | None = None) -> None:
    """The option's own length byte against its bytes: one option, exactly."""
    if len(data) < 2 or data[1] > len(data):
        raise MalformedOption(Reason.TRUNCATED)
    if data[1] < 2:
        raise MalformedOption(Reason.BAD_OPTION_LENGTH)
    if data[1] != len(data):
        raise MalformedOption(Reason.BAD_TCP_OPTION_LENGTH, "length byte does not match the option's bytes")
    if expected is not None and len(data) != expected:
        raise MalformedOption(Reason.BAD_TCP_OPTION_LENGTH, f"kind {data[0]} is {expected} bytes")


@dataclass(frozen=True)
class _OneByte:
    """EOL and NOP: the kind byte alone."""

    kind: ClassVar[int]
    buffer_len = 1

    @classmethod
    def parse(cls, data: bytes) -> Self:
        assert data[:1] == bytes((cls.kind,))
        return cls()

    def emit(self) -> bytes:
        return bytes((self.kind,))


@dataclass(frozen=True)
class Eol(_OneByte):
    kind = TCPOPT_EOL


@dataclass(frozen=True)
class Nop(_OneByte):
    kind = TCPOPT_NOP


@dataclass(frozen=True)
class _Fixed:
    """A plain option of one kind and one length: kind, length, then the fields packed as `body`."""

    kind: ClassVar[int]
    buffer_len: ClassVar[int]
    body: ClassVar[str]   # struct format of the fields after kind and length, in field order

    @classmethod
    def parse(cls, data: bytes) -> Self:
        assert data[0] == cls.kind
        _check_length(data, cls.buffer_len)
        return cls(*struct.unpack_from("!" + cls.body, data, 2))

    def emit(self) -> bytes:
        return struct.pack("!BB" + self.body, self.kind, self.buffer_len,
                           *(getattr(self, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Mss(_Fixed):
    value: int
    kind, buffer_len, body = TCPOPT_MSS, TCPOLEN_MSS, "H"


@dataclass(frozen=True)
class WindowScale(_Fixed):
    shift: int  # kept as sent; RFC 7323 2.3 has the receiver clamp values above 14
    kind, buffer_len, body = TCPOPT_WSCALE, TCPOLEN_WSCALE, "B"


@dataclass(frozen=True)
class SackPermitted(_Fixed):
    kind, buffer_len, body = TCPOPT_SACK_PERMITTED, TCPOLEN_SACK_PERMITTED, ""


@dataclass(frozen=True)
class Sack:
    blocks: tuple[tuple[int, int], ...]  # (left edge, right edge), RFC 2018

    def __post_init__(self):
        assert 1 <= len(self.blocks) <= 4, "a SACK option holds 1..4 blocks"

    @property
    def buffer_len(self) -> int:
        return TCPOLEN_SACK_BASE + TCPOLEN_SACK_BLOCK * len(self.blocks)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        assert data[0] == TCPOPT_SACK
        _check_length(data)
        if len(data) < TCPOLEN_SACK_BASE + TCPOLEN_SACK_BLOCK or (len(data) - 2) % TCPOLEN_SACK_BLOCK:
            raise MalformedOption(Reason.BAD_TCP_OPTION_LENGTH, "SACK is 2 + 8n bytes")
        words = struct.unpack(f"!{(len(data) - 2) // 4}I", data[2:])
        return cls(tuple(zip(words[0::2], words[1::2])))

    def emit(self) -> bytes:
        return bytes((TCPOPT_SACK, self.buffer_len)) + b"".join(struct.pack("!II", *b) for b in self.blocks)


@dataclass(frozen=True)
class Timestamps(_Fixed):
    tsval: int
    tsecr: int
    kind, buffer_len, body = TCPOPT_TIMESTAMPS, TCPOLEN_TIMESTAMPS, "II"


@dataclass(frozen=True)
class UnknownOption:
    """A kind we do not interpret, kept verbatim so it can be re-emitted unchanged."""

    kind: int
    data: bytes = field(default=b"")  # the body, after kind and length

    @property
    def buffer_len(self) -> int:
        return 2 + len(self.data)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check_length(data)
        return cls(data[0], bytes(data[2:]))

    def emit(self) -> bytes:
        return bytes((self.kind, self.buffer_len)) + self.data


PLAIN_OPTION_TYPES = {
    TCPOPT_MSS: Mss,
    TCPOPT_WSCALE: WindowScale,
    TCPOPT_SACK_PERMITTED: SackPermitted,
    TCPOPT_SACK: Sack,
    TCPOPT_TIMESTAMPS: Timestamps,
}


def build_options(*options, pad: bool = True) -> bytes:
    """The options area holding `options` (anything with emit()) in order, padded with EOL to 4 bytes."""
    area = b"".join(o.emit() for o in options)
    if pad and len(area) % 4:
        area += b"\x00" * (4 - len(area) % 4)
    assert len(area) <= TCP_OPTIONS_MAX_LEN, f"{len(area)} option bytes do not fit in a TCP header"
    return area
