"""Wrap-safe sequence arithmetic (mptun seq): named edge cases, each on the compiled and the pure twin."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptun import impl

M32 = 1 << 32
M64 = 1 << 64
H32 = 1 << 31
H64 = 1 << 63


@pytest.fixture
def seq(impl_kind):
    return impl.load("seq", impl_kind)


# --- 32-bit subflow sequence numbers ---------------------------------------------------

def test_before32_plain(seq):
    assert seq.before32(1, 2)
    assert not seq.before32(2, 1)


def test_before32_equal_is_neither_before_nor_after(seq):
    for v in (0, 1, H32, M32 - 1):
        assert not seq.before32(v, v)
        assert not seq.after32(v, v)


def test_before32_across_wrap(seq):
    assert seq.before32(M32 - 1, 0)
    assert seq.before32(M32 - 10, 5)
    assert not seq.before32(0, M32 - 1)


def test_after32_across_wrap(seq):
    assert seq.after32(0, M32 - 1)
    assert seq.after32(5, M32 - 10)
    assert not seq.after32(M32 - 1, 0)


def test_before32_just_under_half_space(seq):
    assert seq.before32(0, H32 - 1)
    assert seq.after32(H32 - 1, 0)
    assert not seq.before32(H32 - 1, 0)


def test_before32_just_over_half_space_flips(seq):
    # b is more than half the space ahead of a, so it is taken to be behind.
    assert not seq.before32(0, H32 + 1)
    assert seq.after32(0, H32 + 1)


def test_before32_exactly_half_space_is_ambiguous_both_ways(seq):
    # As Linux before()/after(): the signed distance -2^31 is negative in both directions,
    # so each value is both before and after the other. Live windows stay far below this.
    assert seq.before32(0, H32) and seq.before32(H32, 0)
    assert seq.after32(0, H32) and seq.after32(H32, 0)


def test_diff32_signs_and_wrap(seq):
    assert seq.diff32(5, 3) == 2
    assert seq.diff32(3, 5) == -2
    assert seq.diff32(0, M32 - 1) == 1
    assert seq.diff32(M32 - 1, 0) == -1
    assert seq.diff32(7, 7) == 0


def test_diff32_half_space_extremes(seq):
    assert seq.diff32(H32 - 1, 0) == H32 - 1
    assert seq.diff32(H32, 0) == -H32
    assert seq.diff32(0, H32) == -H32


def test_between32_inclusive_ends(seq):
    assert seq.between32(10, 10, 20)
    assert seq.between32(20, 10, 20)
    assert seq.between32(15, 10, 20)
    assert not seq.between32(9, 10, 20)
    assert not seq.between32(21, 10, 20)


def test_between32_window_across_wrap(seq):
    low, high = M32 - 5, 4
    for inside in (M32 - 5, M32 - 1, 0, 4):
        assert seq.between32(inside, low, high)
    for outside in (M32 - 6, 5, H32):
        assert not seq.between32(outside, low, high)


def test_between32_single_point_window(seq):
    assert seq.between32(7, 7, 7)
    assert not seq.between32(8, 7, 7)


def test_32bit_arguments_out_of_range_raise(seq):
    with pytest.raises(OverflowError):
        seq.before32(M32, 0)
    with pytest.raises(OverflowError):
        seq.diff32(-1, 0)
    with pytest.raises(OverflowError):
        seq.between32(0, 0, M32)


# --- 64-bit data sequence numbers ----------------------------------------------------------

def test_before64_plain(seq):
    assert seq.before64(1, 2)
    assert not seq.before64(2, 1)
    assert seq.after64(2, 1)


def test_before64_equal(seq):
    for v in (0, H64, M64 - 1):
        assert not seq.before64(v, v)
        assert not seq.after64(v, v)


def test_before64_across_wrap(seq):
    assert seq.before64(M64 - 1, 0)
    assert seq.after64(0, M64 - 1)
    assert seq.before64(M64 - 100, 100)


def test_before64_half_space_boundary(seq):
    assert seq.before64(0, H64 - 1)
    assert not seq.before64(0, H64 + 1)
    assert seq.before64(0, H64) and seq.before64(H64, 0)


def test_before64_does_not_truncate_to_32_bits(seq):
    # A 32-bit compare would call these equal or reversed.
    assert seq.before64(0, M32)
    assert seq.after64(M32 + 1, 2)


def test_diff64_signs_and_wrap(seq):
    assert seq.diff64(0, M64 - 1) == 1
    assert seq.diff64(M64 - 1, 0) == -1
    assert seq.diff64(H64, 0) == -H64
    assert seq.diff64(M32, 0) == M32


def test_between64_window_across_wrap(seq):
    assert seq.between64(0, M64 - 2, 3)
    assert seq.between64(M64 - 2, M64 - 2, 3)
    assert seq.between64(3, M64 - 2, 3)
    assert not seq.between64(4, M64 - 2, 3)
    assert not seq.between64(M64 - 3, M64 - 2, 3)


def test_64bit_arguments_out_of_range_raise(seq):
    with pytest.raises(OverflowError):
        seq.before64(M64, 0)
    with pytest.raises(OverflowError):
        seq.after64(0, -1)


# --- expanding a 4-byte DSN or DATA_ACK (RFC 8684 3.3.1) --------------------------------

def test_expand_exact_match(seq):
    assert seq.expand_dsn32(0x1234_5678_9ABC_DEF0, 0x9ABC_DEF0) == 0x1234_5678_9ABC_DEF0


def test_expand_slightly_ahead_and_behind(seq):
    expected = (7 << 32) + 1000
    assert seq.expand_dsn32(expected, 1500) == (7 << 32) + 1500
    assert seq.expand_dsn32(expected, 500) == (7 << 32) + 500


def test_expand_forward_across_32bit_wrap(seq):
    # Expected just below a 2^32 boundary, the 4-byte value just past it: upper half +1.
    expected = (7 << 32) + M32 - 10
    assert seq.expand_dsn32(expected, 5) == (8 << 32) + 5


def test_expand_backward_across_32bit_wrap(seq):
    # A retransmission from just before the boundary, seen after it: upper half -1.
    expected = (8 << 32) + 5
    assert seq.expand_dsn32(expected, M32 - 10) == (7 << 32) + M32 - 10


def test_expand_forward_across_64bit_wrap(seq):
    assert seq.expand_dsn32(M64 - 10, 5) == 5


def test_expand_backward_across_64bit_wrap(seq):
    assert seq.expand_dsn32(5, M32 - 10) == M64 - 10


def test_expand_half_space_boundary(seq):
    expected = 10 << 32
    assert seq.expand_dsn32(expected, H32 - 1) == expected + H32 - 1
    # Exactly 2^31 away is taken as behind (a documented tie-break).
    assert seq.expand_dsn32(expected, H32) == expected - H32
    assert seq.expand_dsn32(expected, H32 + 1) == expected - H32 + 1


def test_expand_out_of_range_raises(seq):
    with pytest.raises(OverflowError):
        seq.expand_dsn32(0, M32)
    with pytest.raises(OverflowError):
        seq.expand_dsn32(M64, 0)


# --- properties against plain integer arithmetic ----------------------------------------

u32 = st.integers(0, M32 - 1)
u64 = st.integers(0, M64 - 1)


both_kinds = pytest.mark.parametrize("kind", impl.KINDS)


@both_kinds
@pytest.mark.parametrize("bits", (32, 64))
@given(data=st.data())
def test_before_matches_the_signed_distance(kind, bits, data):
    seq = impl.load("seq", kind)
    before, after, diff = (getattr(seq, f"{name}{bits}") for name in ("before", "after", "diff"))
    space, half = 1 << bits, 1 << (bits - 1)
    a = data.draw(st.integers(0, space - 1), label="a")
    d = data.draw(st.integers(-(half - 1), half - 1), label="d")
    b = (a + d) % space
    assert before(a, b) == (d > 0)
    assert after(a, b) == (d < 0)
    assert diff(b, a) == d


@both_kinds
@given(expected=u64, d=st.integers(-(H32 - 1), H32 - 1))
def test_expand_recovers_any_dsn_within_half_the_32bit_space(kind, expected, d):
    seq = impl.load("seq", kind)
    actual = (expected + d) % M64
    assert seq.expand_dsn32(expected, actual % M32) == actual


@both_kinds
@given(seq_=u32, low=u32, span=u32)
def test_between32_matches_offset_from_low(kind, seq_, low, span):
    seq = impl.load("seq", kind)
    high = (low + span) % M32
    assert seq.between32(seq_, low, high) == ((seq_ - low) % M32 <= span)


@given(a=u64, b=u64)
def test_twins_agree_on_64bit_compares(a, b):
    fast, pure = impl.load("seq", "fast"), impl.load("seq", "pure")
    assert fast.before64(a, b) == pure.before64(a, b)
    assert fast.after64(a, b) == pure.after64(a, b)
    assert fast.diff64(a, b) == pure.diff64(a, b)
    assert fast.expand_dsn32(a, b % M32) == pure.expand_dsn32(a, b % M32)
