"""RFC 8684 MPTCP suboptions as value types, and one tolerant parser for a whole TCP options area.

Each suboption's parse(one option's bytes) raises MalformedOption(reason) and
nothing else; emit() gives the bytes back (reserved bits are sent as zero).
parse_options() never raises on network bytes: it records malformed options by
reason, keeps unknown kinds verbatim, and keeps each option's bytes to give the area back exactly.

One module, over 500 lines because it is RFC 8684 section 3's option set: nine suboption
types with several forms each, and the walk of an options area that dispatches to them and
enforces what spans suboptions (one of each subtype). They share the length table, the
Subtype/Reason codes and the header and length checks; split up, each piece would import
all of that back, and reading one suboption's rules against the RFC would mean two files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import ClassVar, Self

from .tcpip import (
    PLAIN_OPTION_TYPES,
    TCP_OPTIONS_MAX_LEN,
    TCPOPT_EOL,
    TCPOPT_MPTCP,
    TCPOPT_NOP,
    Eol,
    MalformedOption,
    Mss,
    Nop,
    Reason,
    Sack,
    SackPermitted,
    Timestamps,
    UnknownOption,
    WindowScale,
    ones_complement_sum,
)

__all__ = [
    "MalformedOption", "Reason", "Subtype", "MpCapable", "MpJoin", "Dss", "AddAddr", "RemoveAddr",
    "MpPrio", "MpFail", "MpFastclose", "MpTcpRst", "Malformed", "ParsedOptions",
    "parse_mptcp_option", "parse_options", "dss_checksum",
]

MPTCP_VERSION = 1

# Lengths, kind and length bytes included (the same names as in mptcpopt.pxd)
MPTCPOPT_MPC_SYN_LEN = 4
MPTCPOPT_MPC_SYNACK_LEN = 12
MPTCPOPT_MPC_ACK_LEN = 20
MPTCPOPT_MPC_ACK_DATA_LEN = 22
MPTCPOPT_MPC_ACK_DATA_CSUM_LEN = 24
MPTCPOPT_JOIN_SYN_LEN = 12
MPTCPOPT_JOIN_SYNACK_LEN = 16
MPTCPOPT_JOIN_ACK_LEN = 24
MPTCPOPT_JOIN_HMAC_LEN = 20
MPTCPOPT_DSS_BASE_LEN = 4
MPTCPOPT_DSS_ACK32_LEN = 4
MPTCPOPT_DSS_ACK64_LEN = 8
MPTCPOPT_DSS_MAP32_LEN = 10
MPTCPOPT_DSS_MAP64_LEN = 14
MPTCPOPT_DSS_CSUM_LEN = 2
MPTCPOPT_DSS_MAX_LEN = 28
MPTCPOPT_ADD_ADDR_V4_LEN = 8
MPTCPOPT_ADD_ADDR_V6_LEN = 20
MPTCPOPT_ADD_ADDR_PORT_LEN = 2
MPTCPOPT_ADD_ADDR_HMAC_LEN = 8
MPTCPOPT_ADD_ADDR_MAX_LEN = 30
MPTCPOPT_REMOVE_ADDR_BASE_LEN = 3
MPTCPOPT_REMOVE_ADDR_MAX_IDS = 37
MPTCPOPT_MP_PRIO_LEN = 3
MPTCPOPT_MP_FAIL_LEN = 12
MPTCPOPT_MP_FASTCLOSE_LEN = 12
MPTCPOPT_MP_TCPRST_LEN = 4

# Flag bits as on the wire
MPC_CHECKSUM_REQUIRED = 0x80  # A
MPC_EXTENSIBILITY = 0x40      # B
MPC_NO_MORE_SUBFLOWS = 0x20   # C
MPC_CRYPTO_MASK = 0x1F        # D..H
MPC_HMAC_SHA256 = 0x01        # H
DSS_DATA_ACK = 0x01           # A
DSS_DATA_ACK_64 = 0x02        # a
DSS_MAPPING = 0x04            # M
DSS_DSN_64 = 0x08             # m
DSS_DATA_FIN = 0x10           # F
DSS_FLAG_MASK = 0x1F
JOIN_BACKUP = 0x01            # B, in the subtype byte of MP_JOIN SYN and SYN/ACK
ADD_ADDR_ECHO = 0x01          # E
PRIO_BACKUP = 0x01            # B
TCPRST_TRANSIENT = 0x01       # T (U V W are 0x08 0x04 0x02)


class Subtype(IntEnum):
    MP_CAPABLE = 0
    MP_JOIN = 1
    DSS = 2
    ADD_ADDR = 3
    REMOVE_ADDR = 4
    MP_PRIO = 5
    MP_FAIL = 6
    MP_FASTCLOSE = 7
    MP_TCPRST = 8


class MpcForm(IntEnum):
    SYN = 1
    SYNACK = 2
    ACK = 3
    ACK_DATA = 4


class JoinForm(IntEnum):
    SYN = 1
    SYNACK = 2
    ACK = 3


def _header(subtype: Subtype, length: int, low_nibble: int, byte3: int) -> bytes:
    return bytes((TCPOPT_MPTCP, length, (subtype << 4) | (low_nibble & 0x0F), byte3 & 0xFF))


def _check(data: bytes, subtype: Subtype, length: int | None = None) -> None:
    """Programmer errors (wrong kind or subtype) assert; a length byte that lies, or a
    length other than `length` for a suboption of one fixed length, is malformed."""
    assert len(data) >= 3 and data[0] == TCPOPT_MPTCP and data[2] >> 4 == subtype, \
        f"not an MPTCP {subtype.name} option: {bytes(data[:3]).hex()}"
    if data[1] > len(data):
        raise MalformedOption(Reason.TRUNCATED)
    if data[1] != len(data):
        raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, "length byte does not match the option's bytes")
    if length is not None and len(data) != length:
        raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, f"{subtype.name} of {len(data)} bytes")


def _u64(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 8], "big")


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "big")


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 2], "big")


@dataclass(frozen=True)
class MpCapable:
    """RFC 8684 3.1, four forms told apart by which fields are set (and by length on the wire).

    SYN: flags. SYN/ACK: + sender_key. ACK: + receiver_key. First data ACK:
    + data_len [+ checksum]. The sender's key always comes first.
    """

    flags: int = MPC_HMAC_SHA256
    version: int = MPTCP_VERSION
    sender_key: int | None = None
    receiver_key: int | None = None
    data_len: int | None = None
    checksum: int | None = None

    def __post_init__(self):
        assert 0 <= self.version <= 15 and 0 <= self.flags <= 0xFF
        assert self.receiver_key is None or self.sender_key is not None, "receiver key needs the sender key"
        assert self.data_len is None or self.receiver_key is not None, "data-level length needs both keys"
        assert self.checksum is None or self.data_len is not None, "checksum needs a data-level length"

    @classmethod
    def syn(cls, flags: int = MPC_HMAC_SHA256, version: int = MPTCP_VERSION) -> Self:
        return cls(flags=flags, version=version)

    @classmethod
    def synack(cls, sender_key: int, flags: int = MPC_HMAC_SHA256) -> Self:
        return cls(flags=flags, sender_key=sender_key)

    @classmethod
    def ack(cls, sender_key: int, receiver_key: int, flags: int = MPC_HMAC_SHA256) -> Self:
        return cls(flags=flags, sender_key=sender_key, receiver_key=receiver_key)

    @classmethod
    def ack_data(cls, sender_key: int, receiver_key: int, data_len: int, checksum: int | None = None,
                 flags: int = MPC_HMAC_SHA256) -> Self:
        return cls(flags=flags, sender_key=sender_key, receiver_key=receiver_key, data_len=data_len,
                   checksum=checksum)

    @property
    def form(self) -> MpcForm:
        if self.data_len is not None:
            return MpcForm.ACK_DATA
        if self.receiver_key is not None:
            return MpcForm.ACK
        if self.sender_key is not None:
            return MpcForm.SYNACK
        return MpcForm.SYN

    @property
    def checksum_required(self) -> bool:
        return bool(self.flags & MPC_CHECKSUM_REQUIRED)

    @property
    def buffer_len(self) -> int:
        if self.checksum is not None:
            return MPTCPOPT_MPC_ACK_DATA_CSUM_LEN
        return {MpcForm.SYN: MPTCPOPT_MPC_SYN_LEN, MpcForm.SYNACK: MPTCPOPT_MPC_SYNACK_LEN,
                MpcForm.ACK: MPTCPOPT_MPC_ACK_LEN, MpcForm.ACK_DATA: MPTCPOPT_MPC_ACK_DATA_LEN}[self.form]

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check(data, Subtype.MP_CAPABLE)
        n = len(data)
        if n not in (MPTCPOPT_MPC_SYN_LEN, MPTCPOPT_MPC_SYNACK_LEN, MPTCPOPT_MPC_ACK_LEN,
                     MPTCPOPT_MPC_ACK_DATA_LEN, MPTCPOPT_MPC_ACK_DATA_CSUM_LEN):
            raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, f"MP_CAPABLE of {n} bytes")
        version = data[2] & 0x0F
        # RFC 8684 3.1: the initiator signals the highest version it supports and the
        # responder answers with one "equal to or lower", so any SYN version >= 1 can be
        # answered with 1; every later MP_CAPABLE must carry the version agreed (1).
        version_ok = version >= MPTCP_VERSION if n == MPTCPOPT_MPC_SYN_LEN else version == MPTCP_VERSION
        if not version_ok:
            raise MalformedOption(Reason.BAD_VERSION, f"version {version}")
        flags = data[3]
        # RFC 8684 3.1: B "MUST be set to 0" (an unknown B=1 MP_CAPABLE "MUST be silently
        # ignored"), and with none of D..H usable the option "MUST be treated as invalid".
        if flags & MPC_EXTENSIBILITY or not flags & MPC_HMAC_SHA256:
            raise MalformedOption(Reason.UNSUPPORTED_MPC_FLAGS, f"flags {flags:#04x}")
        return cls(
            flags=flags, version=version,
            sender_key=_u64(data, 4) if n >= MPTCPOPT_MPC_SYNACK_LEN else None,
            receiver_key=_u64(data, 12) if n >= MPTCPOPT_MPC_ACK_LEN else None,
            data_len=_u16(data, 20) if n >= MPTCPOPT_MPC_ACK_DATA_LEN else None,
            checksum=_u16(data, 22) if n == MPTCPOPT_MPC_ACK_DATA_CSUM_LEN else None)

    def emit(self) -> bytes:
        out = _header(Subtype.MP_CAPABLE, self.buffer_len, self.version, self.flags)
        if self.sender_key is not None:
            out += self.sender_key.to_bytes(8, "big")
        if self.receiver_key is not None:
            out += self.receiver_key.to_bytes(8, "big")
        if self.data_len is not None:
            out += self.data_len.to_bytes(2, "big")
        if self.checksum is not None:
            out += self.checksum.to_bytes(2, "big")
        return out


@dataclass(frozen=True)
class MpJoin:
    """RFC 8684 3.2, three forms. SYN: address_id, token, nonce. SYN/ACK: address_id,
    truncated_hmac (64 bits), nonce. Third ACK: hmac (160 bits). `backup` on SYN and SYN/ACK."""

    backup: bool = False
    address_id: int | None = None
    token: int | None = None
    nonce: int | None = None
    truncated_hmac: int | None = None
    hmac: bytes | None = None

    def __post_init__(self):
        self.form  # asserts that the fields make exactly one form

    @classmethod
    def syn(cls, address_id: int, token: int, nonce: int, backup: bool = False) -> Self:
        return cls(backup=backup, address_id=address_id, token=token, nonce=nonce)

    @classmethod
    def synack(cls, address_id: int, truncated_hmac: int, nonce: int, backup: bool = False) -> Self:
        return cls(backup=backup, address_id=address_id, truncated_hmac=truncated_hmac, nonce=nonce)

    @classmethod
    def ack(cls, hmac: bytes) -> Self:
        return cls(hmac=bytes(hmac))

    @property
    def form(self) -> JoinForm:
        if self.hmac is not None:
            assert len(self.hmac) == MPTCPOPT_JOIN_HMAC_LEN and self.address_id is None \
                and self.token is None and self.nonce is None and self.truncated_hmac is None \
                and not self.backup, "MP_JOIN ACK carries only the 160-bit HMAC"
            return JoinForm.ACK
        assert self.address_id is not None and self.nonce is not None, "MP_JOIN SYN/SYNACK needs id and nonce"
        assert (self.token is None) != (self.truncated_hmac is None), "token (SYN) or truncated HMAC (SYN/ACK)"
        return JoinForm.SYN if self.token is not None else JoinForm.SYNACK

    @property
    def buffer_len(self) -> int:
        return {JoinForm.SYN: MPTCPOPT_JOIN_SYN_LEN, JoinForm.SYNACK: MPTCPOPT_JOIN_SYNACK_LEN,
                JoinForm.ACK: MPTCPOPT_JOIN_ACK_LEN}[self.form]

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check(data, Subtype.MP_JOIN)
        n = len(data)
        backup = bool(data[2] & JOIN_BACKUP)
        if n == MPTCPOPT_JOIN_SYN_LEN:
            return cls.syn(data[3], _u32(data, 4), _u32(data, 8), backup)
        if n == MPTCPOPT_JOIN_SYNACK_LEN:
            return cls.synack(data[3], _u64(data, 4), _u32(data, 12), backup)
        if n == MPTCPOPT_JOIN_ACK_LEN:
            return cls.ack(bytes(data[4:24]))
        raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, f"MP_JOIN of {n} bytes")

    def emit(self) -> bytes:
        form = self.form
        if form == JoinForm.ACK:
            return _header(Subtype.MP_JOIN, MPTCPOPT_JOIN_ACK_LEN, 0, 0) + self.hmac
        head = _header(Subtype.MP_JOIN, self.buffer_len, int(self.backup), self.address_id)
        if form == JoinForm.SYN:
            return head + struct.pack("!II", self.token, self.nonce)
        return head + struct.pack("!QI", self.truncated_hmac, self.nonce)


@dataclass(frozen=True)
class Dss:
    """RFC 8684 3.3: DATA_ACK (32/64 bits) and/or a mapping (DSN 32/64 bits, subflow
    sequence number, data-level length, optional checksum); DATA_FIN rides on a mapping.
    32-bit values are as on the wire, not expanded."""

    data_ack: int | None = None
    data_ack_64: bool = True
    dsn: int | None = None
    dsn_64: bool = True
    subflow_seq: int | None = None
    data_len: int | None = None
    checksum: int | None = None
    data_fin: bool = False

    def __post_init__(self):
        has_map = self.dsn is not None
        assert has_map == (self.subflow_seq is not None) == (self.data_len is not None), \
            "a mapping is DSN, subflow sequence number and data-level length together"
        assert has_map or (self.checksum is None and not self.data_fin), \
            "checksum and DATA_FIN belong to a mapping (RFC 8684 3.3)"
        assert self.data_ack is None or self.data_ack < (1 << (64 if self.data_ack_64 else 32))
        assert self.dsn is None or self.dsn < (1 << (64 if self.dsn_64 else 32))

    @property
    def flags(self) -> int:
        flags = 0
        if self.data_ack is not None:
            flags |= DSS_DATA_ACK | (DSS_DATA_ACK_64 if self.data_ack_64 else 0)
        if self.dsn is not None:
            flags |= DSS_MAPPING | (DSS_DSN_64 if self.dsn_64 else 0) | (DSS_DATA_FIN if self.data_fin else 0)
        return flags

    @property
    def buffer_len(self) -> int:
        return dss_length(self.data_ack is not None, self.data_ack_64, self.dsn is not None, self.dsn_64,
                          self.checksum is not None)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check(data, Subtype.DSS)
        n = len(data)
        if n < MPTCPOPT_DSS_BASE_LEN:
            raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, "DSS without flags")
        flags = data[3] & DSS_FLAG_MASK
        has_ack, ack_64 = bool(flags & DSS_DATA_ACK), bool(flags & DSS_DATA_ACK_64)
        has_map, dsn_64 = bool(flags & DSS_MAPPING), bool(flags & DSS_DSN_64)
        expected = dss_length(has_ack, ack_64, has_map, dsn_64, False)
        # RFC 8684 3.3: the checksum belongs to the mapping; whether it must be there is
        # the connection's business (3.3.1), so both are accepted here.
        has_checksum = has_map and n == expected + MPTCPOPT_DSS_CSUM_LEN
        if n != expected and not has_checksum:
            raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, f"DSS flags {flags:#04x} in {n} bytes")
        # RFC 8684 3.3.3: a DATA_FIN is a position in the data sequence space; it only
        # exists as part of a mapping (subflow seq 0, length 1 when it has no data).
        if flags & DSS_DATA_FIN and not has_map:
            raise MalformedOption(Reason.DATA_FIN_WITHOUT_MAPPING)
        pos, data_ack, dsn, ssn, data_len, checksum = 4, None, None, None, None, None
        if has_ack:
            width = 8 if ack_64 else 4
            data_ack = int.from_bytes(data[pos:pos + width], "big")
            pos += width
        if has_map:
            width = 8 if dsn_64 else 4
            dsn = int.from_bytes(data[pos:pos + width], "big")
            pos += width
            ssn, data_len = _u32(data, pos), _u16(data, pos + 4)
            if has_checksum:
                checksum = _u16(data, pos + 6)
        return cls(data_ack=data_ack, data_ack_64=ack_64 if has_ack else True, dsn=dsn,
                   dsn_64=dsn_64 if has_map else True, subflow_seq=ssn, data_len=data_len,
                   checksum=checksum, data_fin=bool(flags & DSS_DATA_FIN))

    def emit(self) -> bytes:
        out = _header(Subtype.DSS, self.buffer_len, 0, self.flags)
        if self.data_ack is not None:
            out += self.data_ack.to_bytes(8 if self.data_ack_64 else 4, "big")
        if self.dsn is not None:
            out += self.dsn.to_bytes(8 if self.dsn_64 else 4, "big")
            out += struct.pack("!IH", self.subflow_seq, self.data_len)
            if self.checksum is not None:
                out += self.checksum.to_bytes(2, "big")
        return out


def dss_length(has_data_ack: bool, data_ack_64: bool, has_mapping: bool, dsn_64: bool,
               has_checksum: bool) -> int:
    """Bytes of a DSS with these parts (the checksum only counts with a mapping)."""
    n = MPTCPOPT_DSS_BASE_LEN
    if has_data_ack:
        n += MPTCPOPT_DSS_ACK64_LEN if data_ack_64 else MPTCPOPT_DSS_ACK32_LEN
    if has_mapping:
        n += (MPTCPOPT_DSS_MAP64_LEN if dsn_64 else MPTCPOPT_DSS_MAP32_LEN) + \
            (MPTCPOPT_DSS_CSUM_LEN if has_checksum else 0)
    return n


def dss_checksum(dsn: int, subflow_seq: int, data_len: int, payload: bytes) -> int:
    """RFC 8684 3.3.1: over a pseudo-header of the 64-bit DSN (even when the option sends
    32 bits), subflow sequence number, data-level length and a zero checksum, then the data."""
    pseudo = struct.pack("!QIHH", dsn, subflow_seq, data_len, 0)
    return ~ones_complement_sum(pseudo + payload) & 0xFFFF


@dataclass(frozen=True)
class AddAddr:
    """RFC 8684 3.4.1. The truncated HMAC is present exactly when echo is False."""

    address_id: int
    address: IPv4Address | IPv6Address
    port: int | None = None
    echo: bool = False
    truncated_hmac: int | None = None

    def __post_init__(self):
        assert (self.truncated_hmac is None) == self.echo, "ADD_ADDR carries the HMAC exactly when E = 0"

    @property
    def buffer_len(self) -> int:
        return (MPTCPOPT_ADD_ADDR_V4_LEN if self.address.version == 4 else MPTCPOPT_ADD_ADDR_V6_LEN) + \
            (MPTCPOPT_ADD_ADDR_PORT_LEN if self.port is not None else 0) + \
            (0 if self.echo else MPTCPOPT_ADD_ADDR_HMAC_LEN)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check(data, Subtype.ADD_ADDR)
        n = len(data)
        echo = bool(data[2] & ADD_ADDR_ECHO)
        # RFC 8684 3.4.1: the truncated HMAC is there exactly when E = 0, so the length
        # tells the family and the port: 8/10/20/22 (+8 with the HMAC).
        base = n if echo else n - MPTCPOPT_ADD_ADDR_HMAC_LEN
        if base in (MPTCPOPT_ADD_ADDR_V4_LEN, MPTCPOPT_ADD_ADDR_V4_LEN + MPTCPOPT_ADD_ADDR_PORT_LEN):
            addr_len = 4
        elif base in (MPTCPOPT_ADD_ADDR_V6_LEN, MPTCPOPT_ADD_ADDR_V6_LEN + MPTCPOPT_ADD_ADDR_PORT_LEN):
            addr_len = 16
        else:
            raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, f"ADD_ADDR of {n} bytes, echo={echo}")
        has_port = base - 4 - addr_len == MPTCPOPT_ADD_ADDR_PORT_LEN
        return cls(address_id=data[3], address=ip_address(bytes(data[4:4 + addr_len])),
                   port=_u16(data, 4 + addr_len) if has_port else None, echo=echo,
                   truncated_hmac=None if echo else _u64(data, base))

    def emit(self) -> bytes:
        out = _header(Subtype.ADD_ADDR, self.buffer_len, int(self.echo), self.address_id) + self.address.packed
        if self.port is not None:
            out += self.port.to_bytes(2, "big")
        if not self.echo:
            out += self.truncated_hmac.to_bytes(8, "big")
        return out


@dataclass(frozen=True)
class RemoveAddr:
    """RFC 8684 3.4.2: one or more address IDs."""

    address_ids: tuple[int, ...]

    def __post_init__(self):
        assert 1 <= len(self.address_ids) <= MPTCPOPT_REMOVE_ADDR_MAX_IDS

    @property
    def buffer_len(self) -> int:
        return MPTCPOPT_REMOVE_ADDR_BASE_LEN + len(self.address_ids)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check(data, Subtype.REMOVE_ADDR)
        count = len(data) - MPTCPOPT_REMOVE_ADDR_BASE_LEN
        if not 1 <= count <= MPTCPOPT_REMOVE_ADDR_MAX_IDS:
            raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, f"REMOVE_ADDR with {count} IDs")
        return cls(tuple(data[3:]))

    def emit(self) -> bytes:
        return bytes((TCPOPT_MPTCP, self.buffer_len, Subtype.REMOVE_ADDR << 4)) + bytes(self.address_ids)


@dataclass(frozen=True)
class MpPrio:
    """RFC 8684 3.3.8: the sender's backup flag for the subflow it is sent on (no address ID in v1)."""

    backup: bool
    buffer_len = MPTCPOPT_MP_PRIO_LEN

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check(data, Subtype.MP_PRIO, MPTCPOPT_MP_PRIO_LEN)
        return cls(bool(data[2] & PRIO_BACKUP))

    def emit(self) -> bytes:
        return bytes((TCPOPT_MPTCP, MPTCPOPT_MP_PRIO_LEN, (Subtype.MP_PRIO << 4) | int(self.backup)))


@dataclass(frozen=True)
class _Value64:
    """A suboption that is a 4-byte header (no flags) and one 64-bit value: its only field."""

    subtype: ClassVar[Subtype]
    buffer_len: ClassVar[int]

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check(data, cls.subtype, cls.buffer_len)
        return cls(_u64(data, 4))

    def emit(self) -> bytes:
        (value,) = (getattr(self, f.name) for f in fields(self))
        return _header(self.subtype, self.buffer_len, 0, 0) + value.to_bytes(8, "big")


@dataclass(frozen=True)
class MpFail(_Value64):
    """RFC 8684 3.7: the 64-bit DSN at which the checksum failed."""

    dsn: int
    subtype, buffer_len = Subtype.MP_FAIL, MPTCPOPT_MP_FAIL_LEN


@dataclass(frozen=True)
class MpFastclose(_Value64):
    """RFC 8684 3.5: the receiver's key, proving the sender knows the connection."""

    receiver_key: int
    subtype, buffer_len = Subtype.MP_FASTCLOSE, MPTCPOPT_MP_FASTCLOSE_LEN


@dataclass(frozen=True)
class MpTcpRst:
    """RFC 8684 3.6: why a subflow was reset (the reason codes are 3.6's). flags holds U V W T; T = transient."""

    reason: int
    flags: int = 0

    buffer_len = MPTCPOPT_MP_TCPRST_LEN

    def __post_init__(self):
        assert 0 <= self.flags <= 0x0F and 0 <= self.reason <= 0xFF

    @property
    def transient(self) -> bool:
        return bool(self.flags & TCPRST_TRANSIENT)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _check(data, Subtype.MP_TCPRST, MPTCPOPT_MP_TCPRST_LEN)
        return cls(reason=data[3], flags=data[2] & 0x0F)

    def emit(self) -> bytes:
        return _header(Subtype.MP_TCPRST, MPTCPOPT_MP_TCPRST_LEN, self.flags, self.reason)


SUBOPTION_TYPES = {
    Subtype.MP_CAPABLE: MpCapable,
    Subtype.MP_JOIN: MpJoin,
    Subtype.DSS: Dss,
    Subtype.ADD_ADDR: AddAddr,
    Subtype.REMOVE_ADDR: RemoveAddr,
    Subtype.MP_PRIO: MpPrio,
    Subtype.MP_FAIL: MpFail,
    Subtype.MP_FASTCLOSE: MpFastclose,
    Subtype.MP_TCPRST: MpTcpRst,
}
SUBTYPE_OF = {cls: subtype for subtype, cls in SUBOPTION_TYPES.items()}


def parse_mptcp_option(data: bytes):
    """One kind-30 option (kind and length bytes included) as its suboption value."""
    assert len(data) >= 1 and data[0] == TCPOPT_MPTCP, "not an MPTCP option"
    if len(data) < 2 or data[1] > len(data):
        raise MalformedOption(Reason.TRUNCATED)
    if len(data) < 3 or data[1] < 3:
        raise MalformedOption(Reason.BAD_SUBOPTION_LENGTH, "no room for a subtype")
    subtype = data[2] >> 4
    if subtype not in SUBOPTION_TYPES:
        raise MalformedOption(Reason.UNKNOWN_SUBTYPE, f"subtype {subtype}")
    return SUBOPTION_TYPES[subtype].parse(data)


@dataclass(frozen=True)
class Malformed:
    """An option that was not accepted, kept as bytes: where it was, why, and what it was."""

    offset: int
    reason: Reason
    raw: bytes

    @property
    def buffer_len(self) -> int:
        return len(self.raw)

    def emit(self) -> bytes:
        return self.raw


@dataclass(frozen=True)
class ParsedOptions:
    """Every option of an options area, in order, with its offset; emit() gives the area back.

    `options` holds plain option values, MPTCP suboption values, UnknownOption,
    Nop/Eol and Malformed entries. Where a kind repeats, first(type) gives the
    first (a duplicate MPTCP suboption is a Malformed DUPLICATE_SUBOPTION entry).
    """

    options: tuple
    offsets: tuple[int, ...]
    raw: tuple[bytes, ...]  # each option's bytes as received (values re-emit reserved bits as 0)
    end: int                # where walking stopped: an EOL, an option that cannot be walked, or the end
    trailing: bytes         # bytes after an EOL, or past 40 bytes

    @property
    def malformed(self) -> tuple[Malformed, ...]:
        return tuple(o for o in self.options if isinstance(o, Malformed))

    @property
    def error(self) -> Reason:
        """The first malformed option's reason, or Reason.OK."""
        bad = self.malformed
        return bad[0].reason if bad else Reason.OK

    def first(self, cls):
        return next((o for o in self.options if isinstance(o, cls)), None)

    @property
    def mptcp(self) -> tuple:
        """The well-formed MPTCP suboptions, in order."""
        return tuple(o for o in self.options if type(o) in SUBTYPE_OF)

    def emit(self) -> bytes:
        """The options area exactly as parsed."""
        return b"".join(self.raw) + self.trailing


def parse_options(area: bytes) -> ParsedOptions:
    """Walk a TCP options area the way a receiving stack does, never raising on its bytes."""
    area = bytes(area)
    options: list = []
    offsets: list[int] = []
    raws: list[bytes] = []
    seen_subtypes: set[int] = set()
    trailing = b""

    def add(at: int, value, raw: bytes) -> None:
        options.append(value)
        offsets.append(at)
        raws.append(raw)

    def bad(at: int, reason: Reason, raw: bytes) -> None:
        add(at, Malformed(at, reason, raw), raw)

    if len(area) > TCP_OPTIONS_MAX_LEN:
        # Recorded first, like the flat record: what follows the 40th byte is never walked.
        bad(TCP_OPTIONS_MAX_LEN, Reason.OPTIONS_TOO_LONG, b"")
        area, trailing = area[:TCP_OPTIONS_MAX_LEN], area[TCP_OPTIONS_MAX_LEN:]
    i = 0
    while i < len(area):
        kind = area[i]
        if kind == TCPOPT_EOL:
            add(i, Eol(), area[i:i + 1])
            trailing = area[i + 1:] + trailing
            break
        if kind == TCPOPT_NOP:
            add(i, Nop(), area[i:i + 1])
            i += 1
            continue
        if len(area) - i < 2:
            bad(i, Reason.TRUNCATED, area[i:])
            break
        length = area[i + 1]
        if length < 2:
            bad(i, Reason.BAD_OPTION_LENGTH, area[i:])
            break
        if length > len(area) - i:
            bad(i, Reason.TRUNCATED, area[i:])
            break
        raw = area[i:i + length]
        try:
            if kind == TCPOPT_MPTCP:
                value = parse_mptcp_option(raw)
                subtype = SUBTYPE_OF[type(value)]
                if subtype in seen_subtypes:
                    raise MalformedOption(Reason.DUPLICATE_SUBOPTION, subtype.name)
                seen_subtypes.add(subtype)
            elif kind in PLAIN_OPTION_TYPES:
                value = PLAIN_OPTION_TYPES[kind].parse(raw)
            else:
                value = UnknownOption.parse(raw)
        except MalformedOption as e:
            bad(i, e.reason, raw)
        else:
            add(i, value, raw)
        i += length
    return ParsedOptions(options=tuple(options), offsets=tuple(offsets), raw=tuple(raws), end=i,
                         trailing=trailing)
