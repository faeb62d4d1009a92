"""mptun.wire.mptcp: every RFC 8684 suboption form round-trips on hand-written fixtures, each
malformed reason is named, parse_options() never raises and re-emits the exact bytes."""

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptun.wire import mptcp as w
from mptun.wire.tcpip import Eol, MalformedOption, Mss, Nop, Reason, Sack, SackPermitted, Timestamps, UnknownOption

from tests.unit.fixtures_mptcp import (
    LINUX,
    MALFORMED,
    PLAIN_OPTIONS,
    SUBOPTIONS,
    V4,
    dss_values,
    mutated_areas,
    option_areas,
    suboptions,
)

SETTINGS = settings(max_examples=400, deadline=None)


def by_name(fixtures):
    return pytest.mark.parametrize("fixture", fixtures, ids=[f.name for f in fixtures])


@by_name(SUBOPTIONS)
def test_suboption_fixture_parses_to_its_value_and_emits_the_same_bytes(fixture):
    value = w.parse_mptcp_option(fixture.raw)
    assert value == fixture.value
    assert type(value).parse(fixture.raw) == fixture.value
    assert value.emit() == fixture.raw
    assert value.buffer_len == len(fixture.raw)


@by_name(PLAIN_OPTIONS)
def test_plain_option_fixture_round_trips(fixture):
    parsed = w.parse_options(fixture.raw)
    assert parsed.options == (fixture.value,)
    assert fixture.value.emit() == fixture.raw
    assert fixture.value.buffer_len == len(fixture.raw)


@by_name(LINUX)
def test_linux_option_area_parses_cleanly_and_re_emits_identically(fixture):
    parsed = w.parse_options(fixture.raw)
    assert parsed.error == Reason.OK
    assert parsed.emit() == fixture.raw
    # and each MPTCP suboption alone re-emits to Linux's bytes: our layout is Linux's layout
    for offset, option in zip(parsed.offsets, parsed.options):
        assert option.emit() == fixture.raw[offset:offset + option.buffer_len]
    assert parsed.mptcp


def test_every_subtype_and_form_has_a_fixture():
    forms = {(type(f.value).__name__, getattr(f.value, "form", None)) for f in SUBOPTIONS}
    assert {name for name, _ in forms} == {cls.__name__ for cls in w.SUBOPTION_TYPES.values()}
    assert {form for name, form in forms if name == "MpCapable"} == set(w.MpcForm)
    assert {form for name, form in forms if name == "MpJoin"} == set(w.JoinForm)
    add_addr = {(f.value.address.version, f.value.port is not None, f.value.echo)
                for f in SUBOPTIONS if isinstance(f.value, w.AddAddr)}
    assert len(add_addr) == 8


# ---- one named test per malformed reason

def malformed(reason):
    fixtures = [m for m in MALFORMED if m.reason == reason]
    assert fixtures, f"no fixture for {reason.name}"
    return by_name(fixtures)


def check_malformed(fixture):
    parsed = w.parse_options(fixture.raw)
    assert parsed.error == fixture.reason
    assert parsed.malformed[0].offset == fixture.offset
    assert parsed.emit() == fixture.raw


@malformed(Reason.TRUNCATED)
def test_reason_truncated(fixture):
    check_malformed(fixture)


@malformed(Reason.BAD_OPTION_LENGTH)
def test_reason_bad_option_length(fixture):
    check_malformed(fixture)
    assert w.parse_options(fixture.raw).end == fixture.offset, "walking stops: the next option cannot be found"


@malformed(Reason.BAD_TCP_OPTION_LENGTH)
def test_reason_bad_tcp_option_length(fixture):
    check_malformed(fixture)


@malformed(Reason.BAD_SUBOPTION_LENGTH)
def test_reason_bad_suboption_length(fixture):
    check_malformed(fixture)


@malformed(Reason.UNKNOWN_SUBTYPE)
def test_reason_unknown_subtype(fixture):
    check_malformed(fixture)


@malformed(Reason.BAD_VERSION)
def test_reason_bad_version(fixture):
    check_malformed(fixture)


@malformed(Reason.DUPLICATE_SUBOPTION)
def test_reason_duplicate_suboption_keeps_the_first(fixture):
    check_malformed(fixture)
    assert w.parse_options(fixture.raw).first(w.Dss).data_ack == 0x11223344


@malformed(Reason.UNSUPPORTED_MPC_FLAGS)
def test_reason_unsupported_mpc_flags(fixture):
    check_malformed(fixture)


@malformed(Reason.DATA_FIN_WITHOUT_MAPPING)
def test_reason_data_fin_without_mapping(fixture):
    check_malformed(fixture)


@malformed(Reason.OPTIONS_TOO_LONG)
def test_reason_options_too_long(fixture):
    check_malformed(fixture)
    assert w.parse_options(fixture.raw).end == 40


def test_every_reason_has_a_fixture():
    assert {m.reason for m in MALFORMED} == set(Reason) - {Reason.OK}


@pytest.mark.parametrize("fixture", [m for m in MALFORMED if m.raw[m.offset] == 30 and m.reason not in (
    Reason.TRUNCATED, Reason.BAD_OPTION_LENGTH, Reason.DUPLICATE_SUBOPTION)], ids=lambda m: m.name)
def test_suboption_parse_raises_malformed_option_with_the_same_reason(fixture):
    raw = fixture.raw[fixture.offset:fixture.offset + fixture.raw[fixture.offset + 1]]
    with pytest.raises(MalformedOption) as e:
        w.parse_mptcp_option(raw)
    assert e.value.reason == fixture.reason


def test_suboption_parse_refuses_a_length_byte_that_disagrees_with_its_bytes():
    with pytest.raises(MalformedOption) as e:
        w.Dss.parse(bytes.fromhex("1e 09 20 01 11223344"))
    assert e.value.reason == Reason.TRUNCATED
    with pytest.raises(MalformedOption) as e:
        w.Dss.parse(bytes.fromhex("1e 08 20 01 11223344 00"))
    assert e.value.reason == Reason.BAD_SUBOPTION_LENGTH


def test_parsing_the_wrong_subtype_is_a_programmer_error():
    with pytest.raises(AssertionError):
        w.Dss.parse(bytes.fromhex("1e 03 51"))


def test_add_addr_must_carry_the_hmac_exactly_when_not_echo():
    with pytest.raises(AssertionError):
        w.AddAddr(1, V4)
    with pytest.raises(AssertionError):
        w.AddAddr(1, V4, echo=True, truncated_hmac=1)


def test_dss_data_fin_and_checksum_need_a_mapping():
    with pytest.raises(AssertionError):
        w.Dss(data_ack=1, data_fin=True)
    with pytest.raises(AssertionError):
        w.Dss(data_ack=1, checksum=5)


# ---- DSS: every combination of its parts

DSS_COMBINATIONS = [(ack, dsn, checksum, data_fin) for ack in (None, 32, 64) for dsn in (None, 32, 64)
                    for checksum in (False, True) for data_fin in (False, True)
                    if dsn is not None or not (checksum or data_fin)]  # both belong to a mapping


@pytest.mark.parametrize("ack,dsn,checksum,data_fin", DSS_COMBINATIONS)
def test_dss_every_combination(ack, dsn, checksum, data_fin):
    value = w.Dss(data_ack=None if ack is None else (1 << ack) - 3, data_ack_64=ack != 32,
                  dsn=None if dsn is None else (1 << dsn) - 5, dsn_64=dsn != 32,
                  subflow_seq=None if dsn is None else 7, data_len=None if dsn is None else 1,
                  checksum=0xC5C5 if checksum else None, data_fin=data_fin)
    raw = value.emit()
    expected_len = 4 + {None: 0, 32: 4, 64: 8}[ack] + {None: 0, 32: 10, 64: 14}[dsn] + 2 * checksum
    assert len(raw) == raw[1] == expected_len == value.buffer_len
    assert len(raw) <= w.MPTCPOPT_DSS_MAX_LEN
    assert raw[3] == ((ack is not None) | (ack == 64) << 1 | (dsn is not None) << 2 | (dsn == 64) << 3
                      | data_fin << 4)
    assert w.Dss.parse(raw) == value


def test_dss_checksum_of_linux_data_fin():
    # from Linux (net.mptcp.checksum_enabled=1): a bare DATA_FIN, DSN e2c773b559f676ec, checksum d89e
    assert w.dss_checksum(0xE2C773B559F676EC, 0, 1, b"") == 0xD89E


def test_dss_checksum_uses_the_64_bit_dsn_even_for_a_32_bit_mapping():
    # RFC 8684 3.3.1: a 32-bit DSN on the wire is checksummed as its 64-bit value
    assert w.dss_checksum(0x1_0000_0005, 1, 3, b"abc") != w.dss_checksum(0x5, 1, 3, b"abc")


def test_dss_checksum_verifies_to_zero_over_header_and_data():
    from mptun.wire.tcpip import ones_complement_sum
    import struct
    csum = w.dss_checksum(12345, 1, 5, b"hello")
    assert ones_complement_sum(struct.pack("!QIHH", 12345, 1, 5, csum) + b"hello") == 0xFFFF


# ---- the whole-area parser

def test_parse_options_keeps_order_offsets_and_unknown_kinds():
    area = bytes.fromhex("01 01 080a 00000001 00000002 fe04abcd 1e082001 11223344 1e0351 00 0000")
    parsed = w.parse_options(area)
    assert parsed.options == (Nop(), Nop(), Timestamps(1, 2), UnknownOption(254, b"\xab\xcd"),
                              w.Dss(data_ack=0x11223344, data_ack_64=False), w.MpPrio(True), Eol())
    assert parsed.offsets == (0, 1, 2, 12, 16, 24, 27)
    assert parsed.end == 27 and parsed.trailing == b"\x00\x00"
    assert parsed.mptcp == (w.Dss(data_ack=0x11223344, data_ack_64=False), w.MpPrio(True))
    assert parsed.first(Timestamps) == Timestamps(1, 2) and parsed.first(Mss) is None
    assert parsed.first(SackPermitted) is None
    assert parsed.emit() == area


def test_parse_options_first_of_a_repeated_plain_option_wins():
    parsed = w.parse_options(Mss(1000).emit() + Mss(1400).emit())
    assert parsed.first(Mss) == Mss(1000) and parsed.error == Reason.OK


def test_parse_options_keeps_walking_after_a_malformed_suboption():
    parsed = w.parse_options(bytes.fromhex("1e 04 90 00 02 04 05b4"))
    assert parsed.error == Reason.UNKNOWN_SUBTYPE and parsed.first(Mss) == Mss(1460)


def test_parse_options_of_nothing():
    parsed = w.parse_options(b"")
    assert parsed.options == () and parsed.end == 0 and parsed.error == Reason.OK


def test_sack_blocks():
    assert w.parse_options(bytes.fromhex("0101 050a 00000010 00000020")).first(Sack) == Sack(((16, 32),))


@given(st.binary(max_size=60))
@SETTINGS
def test_parse_options_never_raises_and_re_emits_any_bytes(area):
    parsed = w.parse_options(area)
    assert parsed.emit() == area
    assert all(o.reason != Reason.OK for o in parsed.malformed)


@given(mutated_areas())
@SETTINGS
def test_parse_options_never_raises_on_near_misses(area):
    assert w.parse_options(area).emit() == area


@given(st.binary(min_size=1, max_size=45).map(lambda b: b"\x1e" + b))
@SETTINGS
def test_parse_mptcp_option_raises_only_malformed_option(data):
    try:
        value = w.parse_mptcp_option(data)
    except MalformedOption as e:
        assert e.reason != Reason.OK
    else:
        assert w.parse_mptcp_option(value.emit()) == value


@given(suboptions)
@SETTINGS
def test_emit_then_parse_gives_the_value_back(value):
    raw = value.emit()
    assert len(raw) == raw[1] == value.buffer_len
    assert w.parse_mptcp_option(raw) == value


@given(dss_values())
@SETTINGS
def test_dss_emit_then_parse(value):
    assert w.Dss.parse(value.emit()) == value


@given(option_areas)
@SETTINGS
def test_well_formed_areas_parse_without_error_unless_a_suboption_repeats(area):
    parsed = w.parse_options(area)
    assert parsed.emit() == area
    assert {m.reason for m in parsed.malformed} <= {Reason.DUPLICATE_SUBOPTION}


# ---- the constants here are the ones in the C contract

def test_constants_match_mptcpopt_pxd():
    pxd = (Path(__file__).parents[2] / "src" / "fastpath" / "mptcpopt.pxd").read_text()
    declared = dict(re.findall(r"^\s+([A-Z][A-Z0-9_]+) = (0x[0-9A-F]+|\d+)\b", pxd, re.M))
    shared = [n for n in declared if hasattr(w, n)]
    assert len(shared) > 40
    for name in shared:
        assert getattr(w, name) == int(declared[name], 0), name
    for reason in Reason:
        assert int(declared[f"REASON_{reason.name}"]) == reason
