"""mptcpopt twins (compiled mptcpopt.pxd and its pure twin): the flat TcpOptions record and the
emitters, on the hand-written and Linux fixtures, and fast == pure on generated inputs."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptun import impl
from tests.unit.refusals import refusal_tests
from mptun.wire import mptcp as w
from mptun.wire.tcpip import Reason

from tests.unit.fixtures_mptcp import (
    LINUX,
    MALFORMED,
    SUBOPTIONS,
    dss_values,
    emit_with,
    mutated_areas,
    option_areas,
    suboptions,
    u16,
    u64,
)

SETTINGS = settings(max_examples=400, deadline=None)
FAST, PURE = impl.load("mptcpopt", "fast"), impl.load("mptcpopt", "pure")
HAS_MSS, HAS_WSCALE, HAS_SACK_PERMITTED, HAS_SACK, HAS_TIMESTAMPS, HAS_MPTCP, HAS_UNKNOWN, HAS_EOL = (
    1 << i for i in range(8))


@pytest.fixture
def opt(impl_kind):
    return impl.load("mptcpopt", impl_kind)


def test_reason_names_are_the_wire_reasons(opt):
    assert opt.REASON_NAMES == tuple(r.name for r in Reason)


EMITTABLE = [f for f in SUBOPTIONS if getattr(f.value, "version", 1) == w.MPTCP_VERSION]


@pytest.mark.parametrize("fixture", EMITTABLE, ids=[f.name for f in EMITTABLE])
def test_emitter_writes_the_fixture_bytes(opt, fixture):
    assert emit_with(opt, fixture.value) == fixture.raw


@pytest.mark.parametrize("fixture", SUBOPTIONS, ids=[f.name for f in SUBOPTIONS])
def test_fixture_sets_its_suboption_bit_and_position(opt, fixture):
    record = opt.parse_options(fixture.raw)
    subtype = w.SUBTYPE_OF[type(fixture.value)]
    assert record["error"] == 0
    assert record["suboptions"] == 1 << subtype
    assert record["present"] == HAS_MPTCP
    assert (record["mptcp_count"], record["mptcp_offset"], record["mptcp_len"], record["mptcp_subtype"]) == (
        1, [0], [len(fixture.raw)], [subtype])
    assert record["end"] == len(fixture.raw)
    assert record == PURE.parse_options(fixture.raw) == FAST.parse_options(fixture.raw)


@pytest.mark.parametrize("fixture", LINUX, ids=[f.name for f in LINUX])
def test_linux_capture_reads_as_by_hand(opt, fixture):
    record = opt.parse_options(fixture.raw)
    assert record["error"] == 0 and record["malformed_count"] == 0
    for field, value in fixture.expect.items():
        assert record[field] == value, field


@pytest.mark.parametrize("fixture", MALFORMED, ids=[m.name for m in MALFORMED])
def test_malformed_fixture_reason_and_offset(opt, fixture):
    record = opt.parse_options(fixture.raw)
    assert (Reason(record["error"]), record["error_offset"]) == (fixture.reason, fixture.offset)
    assert record["malformed_count"] >= 1


# ---- field by field, read from the RFC figures

def test_mp_capable_ack_data_with_checksum_fields(opt):
    r = opt.parse_options(bytes.fromhex("1e 18 01 81 a1a2a3a4a5a6a7a8 0102030405060708 05dc beef"))
    assert (r["mpc_form"], r["mpc_version"], r["mpc_flags"]) == (4, 1, 0x81)
    assert (r["mpc_sender_key"], r["mpc_receiver_key"]) == (0xA1A2A3A4A5A6A7A8, 0x0102030405060708)
    assert (r["mpc_data_len"], r["mpc_has_checksum"], r["mpc_checksum"]) == (1500, True, 0xBEEF)


def test_mp_capable_future_version_on_syn_is_accepted(opt):
    r = opt.parse_options(bytes.fromhex("1e 04 05 01"))
    assert (r["error"], r["mpc_form"], r["mpc_version"]) == (0, 1, 5)


def test_mp_join_synack_fields(opt):
    r = opt.parse_options(bytes.fromhex("1e 10 11 07 0102030405060708 a0b0c0d0"))
    assert (r["join_form"], r["join_backup"], r["join_address_id"]) == (2, True, 7)
    assert (r["join_truncated_hmac"], r["join_nonce"]) == (0x0102030405060708, 0xA0B0C0D0)


def test_dss_32_bit_fields_are_kept_as_sent(opt):
    r = opt.parse_options(bytes.fromhex("1e 12 20 05 11223344 aabbccdd 00000001 0578"))
    assert r["dss_flags"] == 0x05
    assert (r["data_ack"], r["dsn"], r["subflow_seq"], r["data_len"]) == (0x11223344, 0xAABBCCDD, 1, 1400)
    assert not r["dss_has_checksum"]


def test_dss_meaningless_width_bits_are_dropped_from_the_record(opt):
    # 'a' without 'A' and 'm' without 'M' say nothing (RFC 8684 3.3)
    assert opt.parse_options(bytes.fromhex("1e 04 20 0a"))["dss_flags"] == 0


def test_add_addr_v6_port_fields(opt):
    r = opt.parse_options(bytes.fromhex("1e 1e 30 04 20010002000000000000000000000001 01bb 0102030405060708"))
    assert (r["add_addr_id"], r["add_addr_echo"], r["add_addr_ipv6"]) == (4, False, True)
    assert r["add_addr_address"] == bytes.fromhex("20010002000000000000000000000001")
    assert (r["add_addr_has_port"], r["add_addr_port"], r["add_addr_hmac"]) == (True, 443, 0x0102030405060708)


def test_remove_addr_prio_fail_fastclose_tcprst_together(opt):
    area = bytes.fromhex("1e 06 40 01 02 03  1e 03 51  1e 0c 60 00 0102030405060708  1e 04 81 02")
    r = opt.parse_options(area)
    assert r["error"] == 0 and r["suboptions"] == (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8)
    assert (r["remove_ids"], r["prio_backup"], r["fail_dsn"]) == (b"\x01\x02\x03", True, 0x0102030405060708)
    assert (r["tcprst_flags"], r["tcprst_reason"]) == (1, 2)
    assert r["mptcp_offset"] == [0, 6, 9, 21] and r["mptcp_subtype"] == [4, 5, 6, 8]
    r = opt.parse_options(bytes.fromhex("1e 0c 70 00 a1a2a3a4a5a6a7a8"))
    assert r["fastclose_receiver_key"] == 0xA1A2A3A4A5A6A7A8


def test_plain_options_of_a_linux_syn(opt):
    r = opt.parse_options(bytes.fromhex("020405b4 0402 080a abf95097 00000000 01 03030a 1e040101"))
    assert r["present"] == HAS_MSS | HAS_SACK_PERMITTED | HAS_TIMESTAMPS | HAS_WSCALE | HAS_MPTCP
    assert (r["mss"], r["mss_offset"], r["wscale"], r["wscale_offset"]) == (1460, 0, 10, 17)
    assert (r["tsval"], r["tsecr"], r["ts_offset"]) == (0xABF95097, 0, 6)
    assert r["mptcp_offset"] == [20]


def test_sack_count_and_offset(opt):
    r = opt.parse_options(bytes.fromhex("0101 051a 00000001 00000002 00000003 00000004 00000005 00000006"))
    assert (r["sack_count"], r["sack_offset"], r["present"]) == (3, 2, HAS_SACK)


def test_unknown_kinds_and_eol(opt):
    r = opt.parse_options(bytes.fromhex("fe04abcd 1302 00 ffff"))
    assert (r["present"], r["unknown_count"], r["end"]) == (HAS_UNKNOWN | HAS_EOL, 2, 6)


def test_first_error_is_kept_and_all_are_counted(opt):
    r = opt.parse_options(bytes.fromhex("1e 04 90 00  02 03 05  1e 04 00 01"))
    assert (r["error"], r["error_offset"], r["malformed_count"]) == (Reason.UNKNOWN_SUBTYPE, 0, 3)
    assert r["mptcp_count"] == 2 and r["mptcp_subtype"] == [9, 0]


def test_every_mptcp_option_gets_a_slot_in_a_full_area(opt):
    r = opt.parse_options(b"\x1e\x02" * 20)
    assert r["mptcp_count"] == 20 and r["mptcp_subtype"] == [0xFF] * 20 and r["malformed_count"] == 20


# ---- emitters

def test_emit_dss_without_mapping_refuses_data_fin(opt):
    assert opt.emit_dss(has_data_ack=True, data_ack=1, data_fin=True) == b""


def test_emit_dss_checksum_needs_a_mapping(opt):
    assert opt.emit_dss(has_data_ack=True, data_ack=1, has_checksum=True, checksum=5) == bytes.fromhex(
        "1e 08 20 01 00000001")


def test_emit_dss_32_bit_forms_write_the_low_32_bits(opt):
    raw = opt.emit_dss(True, 0x1_2345_6789, False, True, 0xAB_0000_0001, False, 9, 10)
    assert raw == bytes.fromhex("1e 12 20 05 23456789 00000001 00000009 000a")


def test_emit_remove_addr_refuses_no_ids_and_too_many(opt):
    assert opt.emit_remove_addr(b"") == b""
    assert opt.emit_remove_addr(bytes(38)) == b""
    assert len(opt.emit_remove_addr(bytes(37))) == 40


@pytest.mark.parametrize("has_ack,ack_64,has_map,dsn_64,csum", [
    (a, a64, m, m64, c) for a in (0, 1) for a64 in (0, 1) for m in (0, 1) for m64 in (0, 1) for c in (0, 1)])
def test_dss_length_matches_what_is_emitted(opt, has_ack, ack_64, has_map, dsn_64, csum):
    raw = opt.emit_dss(bool(has_ack), 1, bool(ack_64), bool(has_map), 2, bool(dsn_64), 3, 4, False, bool(csum), 5)
    assert len(raw) == raw[1] == opt.dss_length(has_ack, ack_64, has_map, dsn_64, csum) <= 28
    record = opt.parse_options(raw)
    assert record["error"] == 0 and record["dss_has_checksum"] == bool(has_map and csum)


# ---- fast == pure on generated inputs, and neither crashes

@given(st.binary(max_size=48))
@SETTINGS
def test_twins_agree_on_any_bytes(area):
    assert FAST.parse_options(area) == PURE.parse_options(area)


@given(mutated_areas())
@SETTINGS
def test_twins_agree_on_near_misses(area):
    assert FAST.parse_options(area) == PURE.parse_options(area)


@given(option_areas)
@SETTINGS
def test_twins_agree_on_well_formed_areas(area):
    record = FAST.parse_options(area)
    assert record == PURE.parse_options(area)
    assert Reason(record["error"]) in (Reason.OK, Reason.DUPLICATE_SUBOPTION)


@given(suboptions)
@SETTINGS
def test_twin_emitters_agree_and_parse_back(value):
    if isinstance(value, w.MpCapable) and value.form == w.MpcForm.SYN and value.version != 1:
        value = w.MpCapable.syn(value.flags)
    raw = emit_with(FAST, value)
    assert raw == emit_with(PURE, value) == value.emit()
    assert FAST.parse_options(raw) == PURE.parse_options(raw)
    assert FAST.parse_options(raw)["suboptions"] == 1 << w.SUBTYPE_OF[type(value)]


@given(dss_values())
@SETTINGS
def test_emit_dss_then_parse_gives_the_fields_back(value):
    raw = emit_with(FAST, value)
    r = FAST.parse_options(raw)
    assert (r["dss_flags"], r["data_ack"], r["dsn"]) == (value.flags, value.data_ack or 0, value.dsn or 0)
    assert (r["subflow_seq"], r["data_len"]) == (value.subflow_seq or 0, value.data_len or 0)
    assert (r["dss_has_checksum"], r["dss_checksum"]) == (value.checksum is not None, value.checksum or 0)


@given(st.sampled_from([
    lambda m, a, b, c: m.emit_mp_capable_synack(a & 0xFF | 1, b),
    lambda m, a, b, c: m.emit_mp_capable_ack_data(a & 0xBF | 1, b, c, a & 0xFFFF, bool(a & 1), b & 0xFFFF),
    lambda m, a, b, c: m.emit_mp_join_synack(bool(a & 1), a & 0xFF, b, c & 0xFFFFFFFF),
    lambda m, a, b, c: m.emit_mp_fail(b),
    lambda m, a, b, c: m.emit_mp_fastclose(c),
    lambda m, a, b, c: m.emit_mp_tcprst(a & 0xFF, (a >> 8) & 0xFF),
    lambda m, a, b, c: m.emit_add_addr(a & 0xFF, bool(a & 1), b.to_bytes(8, "big")[:4], True, a & 0xFFFF, c),
]), u16, u64, u64)
@SETTINGS
def test_twin_emitters_agree_on_raw_arguments(emit, a, b, c):
    assert emit(FAST, a, b, c) == emit(PURE, a, b, c)


# --- caller errors --------------------------------------------------------------------------------

# The compiled emitters copy 20 bytes of hmac and 4 or 16 of address whatever their length: these
# must raise ValueError on both twins, also under `python -O` (which strips assert statements).
BAD_CALLS = [
    ("join ack hmac short", lambda m: m.emit_mp_join_ack(bytes(19))),
    ("join ack hmac long", lambda m: m.emit_mp_join_ack(bytes(21))),
    ("join ack hmac empty", lambda m: m.emit_mp_join_ack(b"")),
    ("add_addr empty", lambda m: m.emit_add_addr(1, False, b"")),
    ("add_addr 5 bytes", lambda m: m.emit_add_addr(1, False, bytes(5))),
    ("add_addr 15 bytes", lambda m: m.emit_add_addr(1, True, bytes(15), True, 80)),
]


(test_bad_hmac_and_address_lengths_raise_value_error,
 test_bad_hmac_and_address_lengths_raise_value_error_under_python_O) = refusal_tests("mptcpopt", __name__, BAD_CALLS)


def test_good_hmac_and_address_lengths_still_emit(opt):
    assert len(opt.emit_mp_join_ack(bytes(range(20)))) == 24
    assert opt.emit_add_addr(1, True, bytes(4))[:2] == bytes([30, 8])
    assert opt.emit_add_addr(1, True, bytes(16))[:2] == bytes([30, 20])


def test_present_bits_are_on_both_twins(opt):
    assert (opt.HAS_MSS, opt.HAS_WSCALE, opt.HAS_SACK_PERMITTED, opt.HAS_SACK, opt.HAS_TIMESTAMPS, opt.HAS_MPTCP,
            opt.HAS_UNKNOWN, opt.HAS_EOL) == (HAS_MSS, HAS_WSCALE, HAS_SACK_PERMITTED, HAS_SACK, HAS_TIMESTAMPS,
                                               HAS_MPTCP, HAS_UNKNOWN, HAS_EOL)
    assert opt.SUBTYPE_NONE == 0xFF
