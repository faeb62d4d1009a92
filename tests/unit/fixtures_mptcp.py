"""Byte fixtures for the option codecs: every RFC 8684 suboption form written by hand from the
RFC's figures, malformed options one per reason, plain TCP options, and option areas captured
from Linux 6.18's MPTCP (net/mptcp) to check the codecs against what a real peer sends.

Hex strings: spaces separate fields, as in the RFC figures.
"""

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from mptun.wire import mptcp as w
from mptun.wire.mptcp import (
    AddAddr,
    Dss,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoin,
    MpPrio,
    MpTcpRst,
    RemoveAddr,
)
from mptun.wire.tcpip import TCP_ACK as ACK
from mptun.wire.tcpip import TCP_FIN as FIN
from mptun.wire.tcpip import TCP_PSH as PSH
from mptun.wire.tcpip import TCP_RST as RST
from mptun.wire.tcpip import TCP_SYN as SYN
from mptun.wire.tcpip import Mss, Reason, Sack, SackPermitted, Timestamps, UnknownOption, WindowScale

KEY_A = 0xA1A2A3A4A5A6A7A8
KEY_B = 0x0102030405060708
HMAC64 = 0x0102030405060708
V4 = IPv4Address("198.18.0.1")
V6 = IPv6Address("2001:2::1")


@dataclass(frozen=True)
class Fixture:
    name: str
    hex: str
    value: object

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex)


# Every suboption form. Byte 2 is subtype << 4 | low nibble; kind 0x1e = 30.
SUBOPTIONS = [
    # 3.1 MP_CAPABLE: version 1, flags A B C D E F G H; keys, data-level length, checksum by length
    Fixture("mpc_syn", "1e 04 01 01", MpCapable.syn(0x01)),
    Fixture("mpc_syn_checksum_required", "1e 04 01 81", MpCapable.syn(0x81)),
    Fixture("mpc_syn_no_more_subflows", "1e 04 01 21", MpCapable.syn(0x21)),
    Fixture("mpc_syn_future_version", "1e 04 02 01", MpCapable.syn(0x01, version=2)),
    Fixture("mpc_synack", "1e 0c 01 01 0102030405060708", MpCapable.synack(KEY_B)),
    Fixture("mpc_ack", "1e 14 01 01 a1a2a3a4a5a6a7a8 0102030405060708", MpCapable.ack(KEY_A, KEY_B)),
    Fixture("mpc_ack_data", "1e 16 01 01 a1a2a3a4a5a6a7a8 0102030405060708 05dc",
            MpCapable.ack_data(KEY_A, KEY_B, 1500)),
    Fixture("mpc_ack_data_checksum", "1e 18 01 81 a1a2a3a4a5a6a7a8 0102030405060708 05dc beef",
            MpCapable.ack_data(KEY_A, KEY_B, 1500, checksum=0xBEEF, flags=0x81)),
    # 3.2 MP_JOIN: SYN (token, nonce), SYN/ACK (64-bit HMAC, nonce), ACK (160-bit HMAC)
    Fixture("join_syn", "1e 0c 10 03 deadbeef 01020304", MpJoin.syn(3, 0xDEADBEEF, 0x01020304)),
    Fixture("join_syn_backup", "1e 0c 11 03 deadbeef 01020304", MpJoin.syn(3, 0xDEADBEEF, 0x01020304, backup=True)),
    Fixture("join_synack", "1e 10 10 00 0102030405060708 a0b0c0d0", MpJoin.synack(0, HMAC64, 0xA0B0C0D0)),
    Fixture("join_synack_backup", "1e 10 11 07 0102030405060708 a0b0c0d0",
            MpJoin.synack(7, HMAC64, 0xA0B0C0D0, backup=True)),
    Fixture("join_ack", "1e 18 10 00 000102030405060708090a0b0c0d0e0f10111213", MpJoin.ack(bytes(range(20)))),
    # 3.3 DSS: flags F m M a A; DATA_ACK 4/8, DSN 4/8, subflow seq 4, data-level length 2, checksum 2
    Fixture("dss_empty", "1e 04 20 00", Dss()),
    Fixture("dss_ack32", "1e 08 20 01 11223344", Dss(data_ack=0x11223344, data_ack_64=False)),
    Fixture("dss_ack64", "1e 0c 20 03 1122334455667788", Dss(data_ack=0x1122334455667788)),
    Fixture("dss_map32", "1e 0e 20 04 aabbccdd 00000001 0578",
            Dss(dsn=0xAABBCCDD, dsn_64=False, subflow_seq=1, data_len=1400)),
    Fixture("dss_map64", "1e 12 20 0c 0102030405060708 00000001 0578", Dss(dsn=KEY_B, subflow_seq=1, data_len=1400)),
    Fixture("dss_map32_checksum", "1e 10 20 04 aabbccdd 00000001 0578 1234",
            Dss(dsn=0xAABBCCDD, dsn_64=False, subflow_seq=1, data_len=1400, checksum=0x1234)),
    Fixture("dss_map64_checksum", "1e 14 20 0c 0102030405060708 00000001 0578 1234",
            Dss(dsn=KEY_B, subflow_seq=1, data_len=1400, checksum=0x1234)),
    Fixture("dss_ack32_map32", "1e 12 20 05 11223344 aabbccdd 00000001 0578",
            Dss(data_ack=0x11223344, data_ack_64=False, dsn=0xAABBCCDD, dsn_64=False, subflow_seq=1, data_len=1400)),
    Fixture("dss_ack64_map32", "1e 16 20 07 1122334455667788 aabbccdd 00000001 0578",
            Dss(data_ack=0x1122334455667788, dsn=0xAABBCCDD, dsn_64=False, subflow_seq=1, data_len=1400)),
    Fixture("dss_ack32_map64_checksum", "1e 18 20 0d 11223344 0102030405060708 00000001 0578 1234",
            Dss(data_ack=0x11223344, data_ack_64=False, dsn=KEY_B, subflow_seq=1, data_len=1400, checksum=0x1234)),
    Fixture("dss_ack64_map64", "1e 1a 20 0f 1122334455667788 0102030405060708 00000001 0578",
            Dss(data_ack=0x1122334455667788, dsn=KEY_B, subflow_seq=1, data_len=1400)),
    Fixture("dss_ack64_map64_checksum", "1e 1c 20 0f 1122334455667788 0102030405060708 00000001 0578 1234",
            Dss(data_ack=0x1122334455667788, dsn=KEY_B, subflow_seq=1, data_len=1400, checksum=0x1234)),
    # 3.3.3: a DATA_FIN on a packet without data maps subflow seq 0, data-level length 1
    Fixture("dss_data_fin_bare", "1e 1a 20 1f 1122334455667788 0102030405060708 00000000 0001",
            Dss(data_ack=0x1122334455667788, dsn=KEY_B, subflow_seq=0, data_len=1, data_fin=True)),
    Fixture("dss_data_fin_with_data", "1e 12 20 15 11223344 aabbccdd 00000064 0100",
            Dss(data_ack=0x11223344, data_ack_64=False, dsn=0xAABBCCDD, dsn_64=False, subflow_seq=100,
                data_len=256, data_fin=True)),
    Fixture("dss_data_fin_checksum", "1e 14 20 1c 0102030405060708 00000000 0001 abcd",
            Dss(dsn=KEY_B, subflow_seq=0, data_len=1, checksum=0xABCD, data_fin=True)),
    # 3.3.1: data-level length 0 is the infinite mapping
    Fixture("dss_infinite_mapping", "1e 12 20 0c 0102030405060708 00000000 0000", Dss(dsn=KEY_B, subflow_seq=0, data_len=0)),
    # 3.4.1 ADD_ADDR: E flag, address ID, address, port if any, truncated HMAC exactly when E = 0
    Fixture("add_addr_v4", "1e 10 30 01 c6120001 0102030405060708", AddAddr(1, V4, truncated_hmac=HMAC64)),
    Fixture("add_addr_v4_port", "1e 12 30 02 c6120001 1f90 0102030405060708",
            AddAddr(2, V4, port=8080, truncated_hmac=HMAC64)),
    Fixture("add_addr_v6", "1e 1c 30 03 20010002000000000000000000000001 0102030405060708",
            AddAddr(3, V6, truncated_hmac=HMAC64)),
    Fixture("add_addr_v6_port", "1e 1e 30 04 20010002000000000000000000000001 01bb 0102030405060708",
            AddAddr(4, V6, port=443, truncated_hmac=HMAC64)),
    Fixture("add_addr_v4_echo", "1e 08 31 01 c6120001", AddAddr(1, V4, echo=True)),
    Fixture("add_addr_v4_port_echo", "1e 0a 31 02 c6120001 1f90", AddAddr(2, V4, port=8080, echo=True)),
    Fixture("add_addr_v6_echo", "1e 14 31 03 20010002000000000000000000000001", AddAddr(3, V6, echo=True)),
    Fixture("add_addr_v6_port_echo", "1e 16 31 04 20010002000000000000000000000001 01bb",
            AddAddr(4, V6, port=443, echo=True)),
    # 3.4.2 REMOVE_ADDR: one or more address IDs
    Fixture("remove_addr_one", "1e 04 40 05", RemoveAddr((5,))),
    Fixture("remove_addr_three", "1e 06 40 01 02 03", RemoveAddr((1, 2, 3))),
    # 3.3.8 MP_PRIO: B flag only (RFC 8684 dropped RFC 6824's address ID)
    Fixture("mp_prio_backup", "1e 03 51", MpPrio(True)),
    Fixture("mp_prio_regular", "1e 03 50", MpPrio(False)),
    # 3.7 MP_FAIL: 64-bit DSN
    Fixture("mp_fail", "1e 0c 60 00 0102030405060708", MpFail(KEY_B)),
    # 3.5 MP_FASTCLOSE: the receiver's key
    Fixture("mp_fastclose", "1e 0c 70 00 a1a2a3a4a5a6a7a8", MpFastclose(KEY_A)),
    # 3.6 MP_TCPRST: U V W T flags, reason code
    Fixture("mp_tcprst_transient", "1e 04 81 02", MpTcpRst(reason=2, flags=0x1)),
    Fixture("mp_tcprst_middlebox", "1e 04 80 06", MpTcpRst(reason=6)),
    Fixture("mp_tcprst_all_flags", "1e 04 8f 01", MpTcpRst(reason=1, flags=0xF)),
]

PLAIN_OPTIONS = [
    Fixture("mss", "02 04 05b4", Mss(1460)),
    Fixture("window_scale", "03 03 07", WindowScale(7)),
    Fixture("window_scale_above_14_kept", "03 03 0f", WindowScale(15)),
    Fixture("sack_permitted", "04 02", SackPermitted()),
    Fixture("sack_one_block", "05 0a 00000001 00000064", Sack(((1, 100),))),
    Fixture("sack_four_blocks", "05 22 00000001 00000002 00000003 00000004 00000005 00000006 fffffff0 00000010",
            Sack(((1, 2), (3, 4), (5, 6), (0xFFFFFFF0, 0x10)))),
    Fixture("timestamps", "08 0a 00000001 00000002", Timestamps(1, 2)),
    Fixture("unknown_experimental", "fe 06 f989 0102", UnknownOption(254, bytes.fromhex("f9890102"))),
    Fixture("unknown_md5", "13 12 000102030405060708090a0b0c0d0e0f", UnknownOption(19, bytes(range(16)))),
    Fixture("unknown_empty_body", "22 02", UnknownOption(34, b"")),
]


@dataclass(frozen=True)
class MalformedFixture:
    name: str
    hex: str       # a whole options area; the malformed option starts at `offset`
    reason: Reason
    offset: int = 0

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex)


# One or more per reason code.
MALFORMED = [
    MalformedFixture("mptcp_body_past_area", "1e 14 01 01 a1a2", Reason.TRUNCATED),
    MalformedFixture("length_byte_missing", "01 01 02", Reason.TRUNCATED, offset=2),
    MalformedFixture("timestamps_cut", "08 0a 00000001", Reason.TRUNCATED),
    MalformedFixture("length_zero", "1e 00 0000", Reason.BAD_OPTION_LENGTH),
    MalformedFixture("length_one", "01 08 01 00", Reason.BAD_OPTION_LENGTH, offset=1),
    MalformedFixture("mss_of_3", "02 03 05 00", Reason.BAD_TCP_OPTION_LENGTH),
    MalformedFixture("wscale_of_4", "03 04 0700", Reason.BAD_TCP_OPTION_LENGTH),
    MalformedFixture("sack_permitted_of_3", "04 03 00 00", Reason.BAD_TCP_OPTION_LENGTH),
    MalformedFixture("sack_without_block", "05 02 0000", Reason.BAD_TCP_OPTION_LENGTH),
    MalformedFixture("sack_of_7", "05 07 0000000000 00", Reason.BAD_TCP_OPTION_LENGTH),
    MalformedFixture("timestamps_of_8", "08 08 000000010000", Reason.BAD_TCP_OPTION_LENGTH),
    MalformedFixture("mptcp_without_subtype", "1e 02 0000", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("mpc_of_13", "1e 0d 01 01 0102030405060708 00 000000", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("mpc_of_3", "1e 03 01 00", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("join_of_20", "1e 14 10 00" + "00" * 16, Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("dss_ack32_in_6", "1e 06 20 01 1122", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("dss_ack_with_checksum_bytes", "1e 0a 20 01 11223344 1234", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("dss_of_3", "1e 03 20 00", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("add_addr_echo_with_hmac", "1e 10 31 01 c6120001 0102030405060708", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("add_addr_without_hmac", "1e 08 30 01 c6120001", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("add_addr_of_9", "1e 09 31 01 c6120001 00 000000", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("remove_addr_without_id", "1e 03 40 00", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("mp_prio_rfc6824_with_address_id", "1e 04 51 05", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("mp_fail_of_11", "1e 0b 60 00 01020304050607 00", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("mp_fastclose_of_13", "1e 0d 70 00 0102030405060708 00 000000", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("mp_tcprst_of_5", "1e 05 80 00 00 000000", Reason.BAD_SUBOPTION_LENGTH),
    MalformedFixture("subtype_9", "1e 04 90 00", Reason.UNKNOWN_SUBTYPE),
    MalformedFixture("subtype_experimental", "1e 04 f0 00", Reason.UNKNOWN_SUBTYPE),
    MalformedFixture("mpc_version_0_syn", "1e 04 00 01", Reason.BAD_VERSION),
    MalformedFixture("mpc_rfc6824_syn_with_key", "1e 0c 00 01 0102030405060708", Reason.BAD_VERSION),
    MalformedFixture("mpc_ack_version_2", "1e 14 02 01 a1a2a3a4a5a6a7a8 0102030405060708", Reason.BAD_VERSION),
    MalformedFixture("dss_twice", "1e 08 20 01 11223344 1e 08 20 01 55667788", Reason.DUPLICATE_SUBOPTION, offset=8),
    MalformedFixture("mpc_without_h", "1e 04 01 00", Reason.UNSUPPORTED_MPC_FLAGS),
    MalformedFixture("mpc_only_unknown_algorithm", "1e 04 01 02", Reason.UNSUPPORTED_MPC_FLAGS),
    MalformedFixture("mpc_extensibility", "1e 04 01 41", Reason.UNSUPPORTED_MPC_FLAGS),
    MalformedFixture("dss_data_fin_without_mapping", "1e 08 20 11 11223344", Reason.DATA_FIN_WITHOUT_MAPPING),
    MalformedFixture("area_of_44", "01" * 44, Reason.OPTIONS_TOO_LONG, offset=40),
]


@dataclass(frozen=True)
class LinuxCapture:
    """A whole TCP options area as Linux 6.18's MPTCP sent it (netns, veth, defaults;
    `checksum` runs had net.mptcp.checksum_enabled=1), with the TCP flags it rode on."""

    name: str
    tcp_flags: int
    hex: str
    expect: dict  # flat-record fields (mptcpopt.parse_options) read by hand from the bytes

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex)


LINUX = [
    LinuxCapture("mpc_syn", SYN, "020405b4 0402 080a abf95097 00000000 01 03030a 1e040101",
                 {"mss": 1460, "wscale": 10, "tsval": 0xABF95097, "mpc_form": 1, "mpc_version": 1, "mpc_flags": 0x01}),
    LinuxCapture("mpc_synack", SYN | ACK, "020405b4 0402 080a 8af2edc2 abf95097 01 03030a 1e0c0101 e4586de28a80b6de",
                 {"mpc_form": 2, "mpc_sender_key": 0xE4586DE28A80B6DE}),
    LinuxCapture("mpc_ack", ACK, "0101 080a abf95097 8af2edc2 1e140101 b26ace23971ef44e e4586de28a80b6de",
                 {"mpc_form": 3, "mpc_sender_key": 0xB26ACE23971EF44E, "mpc_receiver_key": 0xE4586DE28A80B6DE}),
    LinuxCapture("join_syn", SYN, "020405b4 0402 080a 6a85dc24 00000000 01 03030a 1e0c1007 5a269cd5 6f1125fc",
                 {"join_form": 1, "join_address_id": 7, "join_token": 0x5A269CD5, "join_nonce": 0x6F1125FC}),
    LinuxCapture("join_synack", SYN | ACK,
                 "020405b4 0402 080a 5571d1df 6a85dc24 01 03030a 1e101005 bc0c6124e35fe72c 1c0cff79",
                 {"join_form": 2, "join_address_id": 5, "join_truncated_hmac": 0xBC0C6124E35FE72C,
                  "join_nonce": 0x1C0CFF79}),
    LinuxCapture("join_ack", ACK, "0101 080a 6a85dc24 5571d1df 1e181000 ab10622f55cee0564342d838ea71fcfaa744010d",
                 {"join_form": 3, "join_hmac": bytes.fromhex("ab10622f55cee0564342d838ea71fcfaa744010d")}),
    LinuxCapture("dss_ack32", ACK, "0101 080a 8af2edc2 abf95097 1e082001 156e0b97",
                 {"dss_flags": 0x01, "data_ack": 0x156E0B97}),
    LinuxCapture("dss_ack64", ACK, "0101 080a 8af2edc2 abf95097 1e0c2003 d992f46c156e0f7f",
                 {"dss_flags": 0x03, "data_ack": 0xD992F46C156E0F7F}),
    LinuxCapture("dss_ack32_map64", ACK | PSH,
                 "0101 080a a94ac59f 17734dd8 1e16200d 10be07ea c56f50f1d245ef3d 00000001 000a 0101",
                 {"dss_flags": 0x0D, "data_ack": 0x10BE07EA, "dsn": 0xC56F50F1D245EF3D, "subflow_seq": 1,
                  "data_len": 10}),
    LinuxCapture("dss_ack32_map64_checksum", ACK | PSH,
                 "0101 080a 72d6e58e c19f5416 1e18200d 59f67304 6b99e4f51c5ffc75 000103c9 0020 6c8b",
                 {"dss_flags": 0x0D, "dsn": 0x6B99E4F51C5FFC75, "subflow_seq": 0x103C9, "data_len": 32,
                  "dss_has_checksum": True, "dss_checksum": 0x6C8B}),
    LinuxCapture("dss_data_fin", ACK,
                 "0101 080a abf955ba 8af2efc3 1e16201d 76a25e0a d992f46c15711cbf 00000000 0001 0101",
                 {"dss_flags": 0x1D, "dsn": 0xD992F46C15711CBF, "subflow_seq": 0, "data_len": 1}),
    LinuxCapture("dss_data_fin_ack64", ACK,
                 "0101 080a 8af2f421 abf956f6 1e1a201f d992f46c15711cc0 2bf7f7ba76a261f2 00000000 0001 0101",
                 {"dss_flags": 0x1F, "data_ack": 0xD992F46C15711CC0, "dsn": 0x2BF7F7BA76A261F2, "data_len": 1}),
    LinuxCapture("dss_data_fin_checksum", ACK,
                 "0101 080a c19f5873 72d6e9eb 1e1c201f 6b99e4f51c6209d6 e2c773b559f676ec 00000000 0001 d89e",
                 {"dss_flags": 0x1F, "dsn": 0xE2C773B559F676EC, "data_len": 1, "dss_checksum": 0xD89E}),
    LinuxCapture("dss_and_remove_addr", ACK,
                 "0101 080a 8af2efc3 abf95298 1e0c2003 d992f46c15711cbf 1e044005",
                 {"suboptions": 0x14, "data_ack": 0xD992F46C15711CBF, "remove_ids": b"\x05"}),
    LinuxCapture("dss_and_mp_prio", ACK, "0101 080a 6a85de19 5571d3d4 1e082001 76a25e0a 1e035101",
                 {"suboptions": 0x24, "prio_backup": True}),
    LinuxCapture("add_addr", ACK, "0101 080a 8af2edc2 abf95097 1e103005 c612c902 c7d5a3ecf42941ee",
                 {"add_addr_id": 5, "add_addr_address": bytes([198, 18, 201, 2]), "add_addr_hmac": 0xC7D5A3ECF42941EE}),
    LinuxCapture("add_addr_echo", ACK, "0101 080a abf95097 8af2edc2 1e083105 c612c902",
                 {"add_addr_id": 5, "add_addr_echo": True}),
    LinuxCapture("fastclose_and_tcprst", ACK | RST, "0101 080a a94ac6ce 17734dd8 1e0c7000 abe95be8db149672 1e048000",
                 {"suboptions": 0x180, "fastclose_receiver_key": 0xABE95BE8DB149672, "tcprst_flags": 0,
                  "tcprst_reason": 0}),
]


def emit_with(mod, value) -> bytes:
    """A value type's bytes from the twin's emitter (the C signature, minus the buffer)."""
    if isinstance(value, w.MpCapable):
        if value.form == w.MpcForm.SYN:
            assert value.version == w.MPTCP_VERSION, "the emitters always send version 1"
            return mod.emit_mp_capable_syn(value.flags)
        if value.form == w.MpcForm.SYNACK:
            return mod.emit_mp_capable_synack(value.flags, value.sender_key)
        if value.form == w.MpcForm.ACK:
            return mod.emit_mp_capable_ack(value.flags, value.sender_key, value.receiver_key)
        return mod.emit_mp_capable_ack_data(value.flags, value.sender_key, value.receiver_key, value.data_len,
                                            value.checksum is not None, value.checksum or 0)
    if isinstance(value, w.MpJoin):
        if value.form == w.JoinForm.SYN:
            return mod.emit_mp_join_syn(value.backup, value.address_id, value.token, value.nonce)
        if value.form == w.JoinForm.SYNACK:
            return mod.emit_mp_join_synack(value.backup, value.address_id, value.truncated_hmac, value.nonce)
        return mod.emit_mp_join_ack(value.hmac)
    if isinstance(value, w.Dss):
        return mod.emit_dss(value.data_ack is not None, value.data_ack or 0, value.data_ack_64,
                            value.dsn is not None, value.dsn or 0, value.dsn_64, value.subflow_seq or 0,
                            value.data_len or 0, value.data_fin, value.checksum is not None, value.checksum or 0)
    if isinstance(value, w.AddAddr):
        return mod.emit_add_addr(value.address_id, value.echo, value.address.packed, value.port is not None,
                                 value.port or 0, value.truncated_hmac or 0)
    if isinstance(value, w.RemoveAddr):
        return mod.emit_remove_addr(bytes(value.address_ids))
    if isinstance(value, w.MpPrio):
        return mod.emit_mp_prio(value.backup)
    if isinstance(value, w.MpFail):
        return mod.emit_mp_fail(value.dsn)
    if isinstance(value, w.MpFastclose):
        return mod.emit_mp_fastclose(value.receiver_key)
    if isinstance(value, w.MpTcpRst):
        return mod.emit_mp_tcprst(value.flags, value.reason)
    raise AssertionError(value)


# ---- hypothesis strategies: every value a codec can emit

from hypothesis import strategies as st  # noqa: E402

from mptun.wire.tcpip import Nop  # noqa: E402

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
# H set and B clear: anything else is refused on parse (RFC 8684 3.1)
mpc_flags = u8.map(lambda f: (f | 0x01) & ~0x40)
addresses = st.one_of(st.builds(IPv4Address, u32), st.builds(IPv6Address, st.integers(0, (1 << 128) - 1)))


@st.composite
def dss_values(draw):
    has_ack, has_map = draw(st.booleans()), draw(st.booleans())
    ack_64, dsn_64 = draw(st.booleans()), draw(st.booleans())
    return Dss(
        data_ack=draw(u64 if ack_64 else u32) if has_ack else None, data_ack_64=ack_64 if has_ack else True,
        dsn=draw(u64 if dsn_64 else u32) if has_map else None, dsn_64=dsn_64 if has_map else True,
        subflow_seq=draw(u32) if has_map else None, data_len=draw(u16) if has_map else None,
        checksum=draw(st.one_of(st.none(), u16)) if has_map else None,
        data_fin=draw(st.booleans()) if has_map else False)


@st.composite
def add_addr_values(draw):
    echo = draw(st.booleans())
    return AddAddr(draw(u8), draw(addresses), port=draw(st.one_of(st.none(), u16)), echo=echo,
                   truncated_hmac=None if echo else draw(u64))


suboptions = st.one_of(
    st.builds(MpCapable.syn, flags=mpc_flags, version=st.integers(1, 15)),
    st.builds(MpCapable.synack, u64, flags=mpc_flags),
    st.builds(MpCapable.ack, u64, u64, flags=mpc_flags),
    st.builds(MpCapable.ack_data, u64, u64, u16, checksum=st.one_of(st.none(), u16), flags=mpc_flags),
    st.builds(MpJoin.syn, u8, u32, u32, backup=st.booleans()),
    st.builds(MpJoin.synack, u8, u64, u32, backup=st.booleans()),
    st.builds(MpJoin.ack, st.binary(min_size=20, max_size=20)),
    dss_values(),
    add_addr_values(),
    st.builds(RemoveAddr, st.lists(u8, min_size=1, max_size=37).map(tuple)),
    st.builds(MpPrio, st.booleans()),
    st.builds(MpFail, u64),
    st.builds(MpFastclose, u64),
    st.builds(MpTcpRst, reason=u8, flags=st.integers(0, 15)),
)

plain_options = st.one_of(
    st.just(Nop()),
    st.builds(Mss, u16),
    st.builds(WindowScale, u8),
    st.just(SackPermitted()),
    st.builds(Sack, st.lists(st.tuples(u32, u32), min_size=1, max_size=4).map(tuple)),
    st.builds(Timestamps, u32, u32),
    st.builds(UnknownOption, u8.filter(lambda k: k not in (0, 1, 2, 3, 4, 5, 8, 30)), st.binary(max_size=10)),
)


def _fit(options: list) -> bytes:
    """The options' bytes, dropping options from the end until they fit in 40 bytes."""
    while sum(o.buffer_len for o in options) > 40:
        options = options[:-1]
    return b"".join(o.emit() for o in options)


# Well-formed option areas (suboptions may repeat: a repeat is a DUPLICATE_SUBOPTION)
option_areas = st.lists(st.one_of(suboptions, plain_options), max_size=8).map(_fit)


@st.composite
def mutated_areas(draw):
    """A well-formed area with a few bytes overwritten, cut, or extended: near-misses reach every branch."""
    area = bytearray(draw(option_areas))
    for _ in range(draw(st.integers(0, 3))):
        if area:
            area[draw(st.integers(0, len(area) - 1))] = draw(u8)
    if draw(st.booleans()):
        area = area[:draw(st.integers(0, len(area)))]
    return bytes(area) + draw(st.binary(max_size=6))
