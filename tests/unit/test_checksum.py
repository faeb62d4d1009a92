"""Checksum primitives against an independent full recomputation (a word-by-word reference here,
and scapy's own IPv4/TCP checksum code), on both the compiled module and its pure twin."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.inet import IP, TCP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.utils import checksum as scapy_checksum

from mptun import impl
from tests.unit.reference import ref_checksum, ref_sum
from tests.unit.refusals import refusal_tests


# impl_kind is a plain string, safe to share between generated examples; no deadline, since
# tests make no timing assertions.
twins = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def ck(impl_kind):
    return impl.load("checksum", impl_kind)


def zero_tcp_check(segment: bytes) -> bytes:
    return segment[:16] + b"\0\0" + segment[18:]


blobs = st.binary(min_size=0, max_size=300)
addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
segments = st.binary(min_size=20, max_size=200)
u16 = st.integers(0, 0xFFFF)
edge16 = st.sampled_from([0x0000, 0xFFFF, 0x0001, 0xFFFE, 0x8000, 0x7FFF])
words = st.one_of(u16, edge16)


# --- sums -------------------------------------------------------------------------------------

def test_rfc1071_example(ck):
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
    assert ck.ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2


def test_known_ipv4_header(ck):
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ck.ipv4_header_checksum(hdr) == 0xB861
    assert ck.internet_checksum(hdr) == 0xB861


def test_empty_and_all_zero(ck):
    assert ck.ones_sum(b"") == 0
    assert ck.ones_sum(b"\0" * 7) == 0
    assert ck.internet_checksum(b"\0" * 64) == 0xFFFF


def test_all_ones(ck):
    # An all-ones buffer sums to -0 (0xffff), never to +0.
    assert ck.ones_sum(b"\xff" * 64) == 0xFFFF
    assert ck.ones_sum(b"\xff" * 65) == 0xFF00  # the odd byte is 0xff00
    assert ck.internet_checksum(b"\xff" * 64) == 0


def test_odd_length_pads_with_zero(ck):
    assert ck.ones_sum(b"\x12") == 0x1200
    assert ck.ones_sum(b"\x12\x34\x56") == 0x1234 + 0x5600


def test_fold(ck):
    assert ck.fold(0) == 0
    assert ck.fold(0xFFFF) == 0xFFFF
    assert ck.fold(0x10000) == 1
    assert ck.fold(0x1FFFE) == 0xFFFF
    assert ck.fold((1 << 64) - 1) == 0xFFFF
    with pytest.raises(OverflowError):
        ck.fold(-1)


@given(blobs, st.integers(0, 0xFFFF))
@twins
def test_sum_matches_reference(impl_kind, data, init):
    ck = impl.load("checksum", impl_kind)
    assert ck.ones_sum(data) == ref_sum(data)
    assert ck.ones_sum(data, init) == ref_sum(data + b"\0" * (len(data) % 2) + init.to_bytes(2, "big"))
    assert ck.internet_checksum(data) == ref_checksum(data)
    assert ck.internet_checksum(data) == scapy_checksum(data)


@given(st.binary(min_size=0, max_size=20000))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_sum_large_buffers(impl_kind, data):
    ck = impl.load("checksum", impl_kind)
    assert ck.ones_sum(data) == ref_sum(data)


def test_sum_accepts_buffers(ck):
    data = bytes(range(200))
    assert ck.ones_sum(bytearray(data)) == ck.ones_sum(memoryview(data)) == ref_sum(data)


@given(blobs, blobs)
@twins
def test_chaining_at_any_offset(impl_kind, a, b):
    ck = impl.load("checksum", impl_kind)
    chained = ck.ones_sum(b, ck.ones_sum(a), offset=len(a))
    assert chained == ref_sum(a + b)


# --- IPv4 header and TCP ------------------------------------------------------------------------

@given(st.integers(5, 15).flatmap(lambda ihl: st.binary(min_size=ihl * 4, max_size=ihl * 4)))
@twins
def test_ipv4_header_ignores_its_checksum_field(impl_kind, hdr):
    ck = impl.load("checksum", impl_kind)
    expected = ref_checksum(hdr[:10] + b"\0\0" + hdr[12:])
    assert ck.ipv4_header_checksum(hdr) == expected
    filled = hdr[:10] + expected.to_bytes(2, "big") + hdr[12:]
    assert ref_sum(filled) == 0xFFFF


@given(addr4, addr4, segments)
@twins
def test_tcp_v4_matches_scapy(impl_kind, src, dst, seg):
    ck = impl.load("checksum", impl_kind)
    ip = IP(src=".".join(map(str, src)), dst=".".join(map(str, dst)))
    assert ck.tcp_checksum_v4(src, dst, seg) == in4_chksum(6, ip, zero_tcp_check(seg))


@given(addr6, addr6, segments)
@twins
def test_tcp_v6_matches_scapy(impl_kind, src, dst, seg):
    ck = impl.load("checksum", impl_kind)
    import ipaddress
    ip = IPv6(src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst)), nh=6)
    assert ck.tcp_checksum_v6(src, dst, seg) == in6_chksum(6, ip, zero_tcp_check(seg))


@given(addr4, addr4, segments)
@twins
def test_partial_v4_completes_to_full(impl_kind, src, dst, seg):
    """A NEEDS_CSUM packet carries the folded pseudo-header sum; the device finishes it."""
    ck = impl.load("checksum", impl_kind)
    partial = ck.pseudo_partial_v4(src, dst, len(seg))
    assert partial == ref_sum(src + dst + b"\0\x06" + len(seg).to_bytes(2, "big"))
    buf = bytearray(seg[:16] + partial.to_bytes(2, "big") + seg[18:])
    done = ck.complete_partial(buf, 0, 16)
    assert done == ck.tcp_checksum_v4(src, dst, seg) == in4_chksum(
        6, IP(src=".".join(map(str, src)), dst=".".join(map(str, dst))), zero_tcp_check(seg))
    assert bytes(buf[16:18]) == done.to_bytes(2, "big")


@given(addr6, addr6, segments)
@twins
def test_partial_v6_completes_to_full(impl_kind, src, dst, seg):
    ck = impl.load("checksum", impl_kind)
    partial = ck.pseudo_partial_v6(src, dst, len(seg))
    assert partial == ref_sum(src + dst + len(seg).to_bytes(4, "big") + b"\0\0\0\x06")
    buf = bytearray(b"\xaa" * 3 + seg[:16] + partial.to_bytes(2, "big") + seg[18:])
    assert ck.complete_partial(buf, 3, 16) == ck.tcp_checksum_v6(src, dst, seg)


def test_pseudo_v6_length_above_16_bits(ck):
    src, dst = bytes(16), bytes(range(16))
    want = ref_sum(src + dst + (0x12345).to_bytes(4, "big") + b"\0\0\0\x06")
    assert ck.pseudo_partial_v6(src, dst, 0x12345) == want


# --- RFC 1624 incremental updates ---------------------------------------------------------------

def _replace_word(data: bytes, idx: int, new: int) -> bytes:
    return data[:2 * idx] + new.to_bytes(2, "big") + data[2 * idx + 2:]


@given(st.lists(words, min_size=1, max_size=40), st.data())
@twins
def test_update16_equals_recomputation(impl_kind, ws, data):
    ck = impl.load("checksum", impl_kind)
    buf = b"".join(w.to_bytes(2, "big") for w in ws)
    if ref_sum(buf) == 0:
        buf += b"\x00\x01"  # all-zero data has no valid ones-complement checksum to update
    idx = data.draw(st.integers(0, len(buf) // 2 - 1))
    new = data.draw(words)
    old = int.from_bytes(buf[2 * idx:2 * idx + 2], "big")
    new_buf = _replace_word(buf, idx, new)
    if ref_sum(new_buf) == 0:
        return
    assert ck.update16(ref_checksum(buf), old, new) == ref_checksum(new_buf)


def test_update16_edge_cases(ck):
    # Sums that hit -0 (0xffff) after the change: the stored checksum must become 0x0000, as a
    # full recomputation gives, not 0xffff (RFC 1624 section 3, the flaw of eqn. 2).
    before = bytes.fromhex("cd7a5555")
    after = bytes.fromhex("cd7a3285")
    assert ref_sum(after) == 0xFFFF
    assert ck.update16(ref_checksum(before), 0x5555, 0x3285) == 0x0000 == ref_checksum(after)
    # And back from a 0x0000 checksum.
    assert ck.update16(0x0000, 0x3285, 0x5555) == ref_checksum(before)
    # 0x0000 <-> 0xffff words are the same value in ones-complement arithmetic.
    data = bytes.fromhex("1234ffff")
    assert ck.update16(ref_checksum(data), 0xFFFF, 0x0000) == ref_checksum(bytes.fromhex("12340000"))
    assert ck.update16(ref_checksum(bytes.fromhex("12340000")), 0x0000, 0xFFFF) == ref_checksum(data)
    # No change, no effect.
    assert ck.update16(0xABCD, 0x1111, 0x1111) == 0xABCD


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), blobs)
@twins
def test_update32_and_addr4(impl_kind, old, new, rest):
    ck = impl.load("checksum", impl_kind)
    rest = rest + b"\x00\x07"  # never all zero
    if len(rest) % 2:
        rest += b"\0"
    before, after = old + rest, new + rest
    want = ref_checksum(after)
    c = ref_checksum(before)
    assert ck.update32(c, int.from_bytes(old, "big"), int.from_bytes(new, "big")) == want
    assert ck.update_addr4(c, old, new) == want


@given(addr6, addr6, blobs)
@twins
def test_update_addr6(impl_kind, old, new, rest):
    ck = impl.load("checksum", impl_kind)
    rest = b"\x00\x06" + rest + b"\0" * (len(rest) % 2)
    assert ck.update_addr6(ref_checksum(old + rest), old, new) == ref_checksum(new + rest)


@given(blobs, blobs, st.binary(min_size=2, max_size=60))
@twins
def test_update_sum_region(impl_kind, old_region, new_region, rest):
    ck = impl.load("checksum", impl_kind)
    old_region += b"\0" * (len(old_region) % 2)
    new_region += b"\0" * (len(new_region) % 2)
    rest = b"\x00\x06" + rest + b"\0" * (len(rest) % 2)  # the region starts at an even offset
    got = ck.update_sum(ref_checksum(rest + old_region), ck.ones_sum(old_region), ck.ones_sum(new_region))
    assert got == ref_checksum(rest + new_region)


def test_update_rejects_out_of_range(ck):
    with pytest.raises(OverflowError):
        ck.update16(0x10000, 0, 0)
    with pytest.raises(OverflowError):
        ck.update32(0, -1, 0)


# --- RFC 8684 DSS checksum --------------------------------------------------------------------

def ref_dss(dsn, ssn, length, payload):
    header = dsn.to_bytes(8, "big") + ssn.to_bytes(4, "big") + length.to_bytes(2, "big") + b"\0\0"
    return ref_checksum(header + payload)


def test_dss_verifies_to_zero(ck):
    """RFC 8684 3.3: the receiver sums pseudo-header (checksum in place of the zero) + payload."""
    dsn, ssn, payload = 0x0102030405060708, 1, b"hello, multipath"
    c = ck.dss_checksum(dsn, ssn, len(payload), payload)
    header = dsn.to_bytes(8, "big") + ssn.to_bytes(4, "big") + len(payload).to_bytes(2, "big")
    assert ref_sum(header + c.to_bytes(2, "big") + payload) == 0xFFFF


@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 32) - 1), u16, blobs)
@twins
def test_dss_matches_reference(impl_kind, dsn, ssn, length, payload):
    ck = impl.load("checksum", impl_kind)
    assert ck.dss_checksum(dsn, ssn, length, payload) == ref_dss(dsn, ssn, length, payload)
    assert ck.dss_checksum_from_sum(dsn, ssn, length, ck.ones_sum(payload)) == ref_dss(dsn, ssn, length, payload)


@given(st.lists(st.binary(min_size=0, max_size=100), min_size=1, max_size=6))
@twins
def test_dss_over_segments_of_odd_lengths(impl_kind, parts):
    """A mapping's payload spread over segments: chain per-segment sums by stream offset."""
    ck = impl.load("checksum", impl_kind)
    total, offset = 0, 0
    for part in parts:
        total = ck.ones_sum(part, total, offset=offset)
        offset += len(part)
    payload = b"".join(parts)
    assert ck.dss_checksum_from_sum(7, 3, len(payload), total) == ref_dss(7, 3, len(payload), payload)


def test_dss_data_fin_counts_in_length(ck):
    # A DATA_FIN adds one to the data-level length (RFC 8684 3.3.3), and so to the pseudo-header.
    payload = b"x" * 10
    assert ck.dss_checksum(100, 1, 11, payload) == ref_dss(100, 1, 11, payload)
    assert ck.dss_checksum(100, 1, 11, payload) != ck.dss_checksum(100, 1, 10, payload)


# --- twins agree --------------------------------------------------------------------------------

@given(blobs, st.integers(0, 1), addr4, addr4, segments, u16, u16, u16)
@settings(deadline=None)
def test_fast_and_pure_agree(data, offset, src, dst, seg, check, old, new):
    fast, pure = impl.load("checksum", "fast"), impl.load("checksum", "pure")
    for name, args in [
        ("ones_sum", (data, 0, offset)),
        ("internet_checksum", (data,)),
        ("tcp_checksum_v4", (src, dst, seg)),
        ("pseudo_partial_v4", (src, dst, len(seg))),
        ("update16", (check, old, new)),
        ("update_addr4", (check, src, dst)),
        ("dss_checksum", (1 << 40, 5, len(data), data)),
    ]:
        assert getattr(fast, name)(*args) == getattr(pure, name)(*args), name


# --- caller errors --------------------------------------------------------------------------------

# Arguments whose lengths or offsets the compiled wrappers would otherwise trust: each must raise
# ValueError on both twins, also under `python -O` (which strips assert statements, while the
# build turns Cython's bounds checks off).
BAD_CALLS = [
    ("ipv4 header short", lambda ck: ck.ipv4_header_checksum(bytes(19))),
    ("ipv4 header not words", lambda ck: ck.ipv4_header_checksum(bytes(22))),
    ("ipv4 header long", lambda ck: ck.ipv4_header_checksum(bytes(64))),
    ("pseudo v4 src", lambda ck: ck.pseudo_partial_v4(bytes(3), bytes(4), 20)),
    ("pseudo v4 dst", lambda ck: ck.pseudo_partial_v4(bytes(4), bytes(16), 20)),
    ("pseudo v6 src", lambda ck: ck.pseudo_partial_v6(bytes(4), bytes(16), 20)),
    ("pseudo v6 dst", lambda ck: ck.pseudo_partial_v6(bytes(16), bytes(15), 20)),
    ("tcp v4 src", lambda ck: ck.tcp_checksum_v4(bytes(0), bytes(4), bytes(20))),
    ("tcp v4 segment", lambda ck: ck.tcp_checksum_v4(bytes(4), bytes(4), bytes(19))),
    ("tcp v6 dst", lambda ck: ck.tcp_checksum_v6(bytes(16), bytes(4), bytes(20))),
    ("tcp v6 segment", lambda ck: ck.tcp_checksum_v6(bytes(16), bytes(16), bytes(0))),
    ("update addr4", lambda ck: ck.update_addr4(0, bytes(4), bytes(3))),
    ("update addr6", lambda ck: ck.update_addr6(0, bytes(4), bytes(16))),
    ("ones_sum offset", lambda ck: ck.ones_sum(b"ab", 0, -1)),
    ("partial end past buffer", lambda ck: ck.complete_partial(bytearray(40), 20, 16, 41)),
    ("partial field past end", lambda ck: ck.complete_partial(bytearray(40), 20, 16, 37)),
    ("partial field past buffer", lambda ck: ck.complete_partial(bytearray(40), 20, 19)),
    ("partial start negative", lambda ck: ck.complete_partial(bytearray(40), -4, 16)),
    ("partial offset negative", lambda ck: ck.complete_partial(bytearray(40), 20, -30)),
    ("partial end before start", lambda ck: ck.complete_partial(bytearray(40), 20, 0, 10)),
]


(test_bad_lengths_and_offsets_raise_value_error,
 test_bad_lengths_and_offsets_raise_value_error_under_python_O) = refusal_tests("checksum", __name__, BAD_CALLS)


def test_complete_partial_leaves_the_buffer_alone_when_refused(ck):
    buf = bytearray(range(40))
    for start, offset, end in ((20, -30, None), (20, 19, None), (20, 16, 41), (-4, 16, None)):
        with pytest.raises(ValueError):
            ck.complete_partial(buf, start, offset, end)
    assert buf == bytearray(range(40))


def test_none_is_not_a_buffer(ck):
    for call in (lambda: ck.ones_sum(None), lambda: ck.internet_checksum(None),
                 lambda: ck.pseudo_partial_v4(None, bytes(4), 20), lambda: ck.complete_partial(None, 0, 0)):
        with pytest.raises(TypeError):
            call()
