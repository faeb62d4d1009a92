"""DsnAssembler edge cases, one scene per test (smoltcp assembler.rs style), on both twins.

Unless a test says otherwise: the stream starts at DSN 1000, the ring holds 16 bytes and
at most 4 out-of-order ranges. STREAM[i] is the byte at DSN 1000 + i.
"""

import pytest

from mptun import impl

START = 1000
CAP = 16
STREAM = bytes(range(65, 65 + 64))  # b"ABCD..."
M64 = 1 << 64


def seg(offset: int, length: int) -> tuple[int, bytes]:
    """(dsn, data) of the stream bytes [offset, offset + length)."""
    return START + offset, STREAM[offset:offset + length]


@pytest.fixture
def make(impl_kind):
    cls = impl.load("assembler", impl_kind).DsnAssembler

    def make(start=START, capacity=CAP, max_ranges=4):
        return cls(start, capacity, max_ranges)

    return make


@pytest.fixture
def asm(make):
    return make()


def counters(a) -> dict:
    return {
        "duplicate": a.duplicate_bytes,
        "overlap": a.overlap_bytes,
        "beyond": a.beyond_window_bytes,
        "evicted": a.evicted_bytes,
        "range_limit": a.range_limit_bytes,
    }


NO_DISCARDS = {"duplicate": 0, "overlap": 0, "beyond": 0, "evicted": 0, "range_limit": 0}


def discards(**nonzero) -> dict:
    return {**NO_DISCARDS, **nonzero}


# --- empty and in order ---------------------------------------------------------------------

def test_new_assembler_is_empty(asm):
    assert asm.readable() == 0
    assert asm.next_dsn == START
    assert asm.read_dsn == START
    assert asm.window() == CAP
    assert asm.capacity == CAP
    assert asm.ranges() == []
    assert asm.read(10) == b""
    assert counters(asm) == NO_DISCARDS


def test_insert_empty_data_changes_nothing(asm):
    assert asm.insert(START, b"") == 0
    assert asm.insert(START + 5, b"") == 0
    assert asm.next_dsn == START and asm.ranges() == []
    assert counters(asm) == NO_DISCARDS


def test_in_order_segment_is_readable(asm):
    assert asm.insert(*seg(0, 4)) == 4
    assert asm.readable() == 4
    assert asm.next_dsn == START + 4
    assert asm.read(100) == STREAM[:4]
    assert asm.read_dsn == START + 4


def test_in_order_segments_concatenate(asm):
    for off in range(0, 12, 3):
        assert asm.insert(*seg(off, 3)) == 3
    assert asm.next_dsn == START + 12
    assert asm.read(12) == STREAM[:12]


def test_fill_exactly_to_capacity(asm):
    assert asm.insert(*seg(0, CAP)) == CAP
    assert asm.window() == 0
    assert asm.read(CAP) == STREAM[:CAP]
    assert counters(asm) == NO_DISCARDS


# --- the window's far edge -----------------------------------------------------------------------

def test_segment_straddling_window_end_keeps_the_part_inside(asm):
    assert asm.insert(*seg(10, 10)) == 6
    assert asm.ranges() == [(START + 10, START + CAP)]
    assert counters(asm) == discards(beyond=4)


def test_segment_starting_at_window_end_is_refused(asm):
    assert asm.insert(*seg(CAP, 4)) == 0
    assert asm.ranges() == []
    assert counters(asm) == discards(beyond=4)


def test_full_window_refuses_the_next_byte_until_read(asm):
    asm.insert(*seg(0, CAP))
    assert asm.insert(*seg(CAP, 1)) == 0
    assert asm.read(1) == STREAM[:1]
    assert asm.insert(*seg(CAP, 1)) == 1
    assert asm.read(CAP) == STREAM[1:CAP + 1]


def test_dsn_far_ahead_is_beyond_window_not_wrapped(asm):
    assert asm.insert(START + (1 << 62), b"xy") == 0
    assert asm.insert(START + (1 << 63) - 1, b"xy") == 0
    assert counters(asm) == discards(beyond=4)


def test_out_of_order_byte_at_last_window_slot(asm):
    assert asm.insert(*seg(CAP - 1, 1)) == 1
    assert asm.ranges() == [(START + CAP - 1, START + CAP)]
    asm.insert(*seg(0, CAP - 1))
    assert asm.read(CAP) == STREAM[:CAP]


# --- holes ---------------------------------------------------------------------------------------------

def test_hole_then_fill(asm):
    assert asm.insert(*seg(4, 4)) == 4
    assert asm.readable() == 0
    assert asm.next_dsn == START
    assert asm.ranges() == [(START + 4, START + 8)]
    assert asm.insert(*seg(0, 4)) == 4
    assert asm.next_dsn == START + 8
    assert asm.ranges() == []
    assert asm.read(8) == STREAM[:8]


def test_two_holes_filled_back_to_front(asm):
    asm.insert(*seg(2, 2))
    asm.insert(*seg(6, 2))
    assert asm.ranges() == [(START + 2, START + 4), (START + 6, START + 8)]
    assert asm.insert(*seg(4, 2)) == 2
    assert asm.ranges() == [(START + 2, START + 8)]
    assert asm.insert(*seg(0, 2)) == 2
    assert asm.ranges() == []
    assert asm.read(CAP) == STREAM[:8]


def test_fill_of_middle_hole_merges_neighbours(asm):
    asm.insert(*seg(2, 2))
    asm.insert(*seg(8, 2))
    assert asm.insert(*seg(4, 4)) == 4
    assert asm.ranges() == [(START + 2, START + 10)]


@pytest.mark.parametrize("held, new", [((6, 2), (3, 3)), ((3, 3), (6, 2))], ids=["next", "previous"])
def test_range_touching_a_held_range_merges(asm, held, new):
    asm.insert(*seg(*held))
    assert asm.insert(*seg(*new)) == new[1]
    assert asm.ranges() == [(START + 3, START + 8)]


def test_partial_fill_of_hole_front_joins_in_order_data(asm):
    asm.insert(*seg(6, 2))
    assert asm.insert(*seg(0, 3)) == 3
    assert asm.next_dsn == START + 3
    assert asm.ranges() == [(START + 6, START + 8)]


def test_out_of_order_data_does_not_move_next_dsn(asm):
    asm.insert(*seg(0, 2))
    asm.insert(*seg(5, 5))
    assert asm.next_dsn == START + 2
    assert asm.readable() == 2


# --- overlaps keep the first copy ----------------------------------------------------------------------

def test_overlap_front_of_held_range_keeps_first_copy(asm):
    asm.insert(*seg(4, 4))
    assert asm.insert(START + 2, b"xx" + b"yy") == 2  # DSN 2-3 new, 4-5 already held
    asm.insert(*seg(0, 2))
    assert asm.read(CAP) == STREAM[:2] + b"xx" + STREAM[4:8]
    assert counters(asm) == discards(overlap=2)


def test_overlap_back_of_held_range_keeps_first_copy(asm):
    asm.insert(*seg(4, 4))
    assert asm.insert(START + 6, b"zzzz") == 2
    asm.insert(*seg(0, 4))
    assert asm.read(CAP) == STREAM[:8] + b"zz"
    assert counters(asm) == discards(overlap=2)


def test_overlap_inside_held_range_is_all_discarded(asm):
    asm.insert(*seg(4, 6))
    assert asm.insert(START + 5, b"qqq") == 0
    assert asm.ranges() == [(START + 4, START + 10)]
    assert counters(asm) == discards(overlap=3)


def test_exact_duplicate_of_held_range_is_discarded(asm):
    asm.insert(*seg(4, 4))
    assert asm.insert(START + 4, b"????") == 0
    asm.insert(*seg(0, 4))
    assert asm.read(CAP) == STREAM[:8]
    assert counters(asm) == discards(overlap=4)


def test_segment_covering_a_held_range_fills_both_sides(asm):
    asm.insert(*seg(4, 2))
    assert asm.insert(START + 2, b"ab" + b"XX" + b"cd") == 4
    assert asm.ranges() == [(START + 2, START + 8)]
    asm.insert(*seg(0, 2))
    assert asm.read(CAP) == STREAM[:2] + b"ab" + STREAM[4:6] + b"cd"
    assert counters(asm) == discards(overlap=2)


def test_segment_spanning_several_ranges_fills_only_holes(asm):
    asm.insert(*seg(2, 1))
    asm.insert(*seg(5, 2))
    asm.insert(*seg(9, 1))
    assert asm.insert(START + 1, b"-" * 11) == 7  # DSN offsets 1..11, 4 of them held
    assert asm.ranges() == [(START + 1, START + 12)]
    asm.insert(*seg(0, 1))
    got = asm.read(CAP)
    assert got == (STREAM[0:1] + b"-" + STREAM[2:3] + b"--" + STREAM[5:7] + b"--"
                   + STREAM[9:10] + b"--")
    assert counters(asm) == discards(overlap=4)


# --- below next_dsn: duplicates, zero-window probes, retransmissions -----------------------

def test_duplicate_of_unread_in_order_data_is_discarded(asm):
    asm.insert(*seg(0, 6))
    assert asm.insert(START + 1, b"!!!") == 0
    assert asm.read(CAP) == STREAM[:6]
    assert counters(asm) == discards(duplicate=3)


def test_duplicate_of_delivered_data_is_discarded(asm):
    asm.insert(*seg(0, 6))
    asm.read(6)
    assert asm.insert(*seg(0, 6)) == 0
    assert asm.readable() == 0
    assert counters(asm) == discards(duplicate=6)


def test_zero_window_probe_mapped_one_below_is_discarded(asm):
    # Linux's probe carries the byte at snd_una but maps it to DSN snd_una - 1 (docs/netcfg.md,
    # "Peer behaviour the datapath relies on").
    asm.insert(*seg(0, 4))
    asm.read(4)
    assert asm.insert(START + 3, STREAM[4:5]) == 0
    assert asm.insert(*seg(4, 4)) == 4
    assert asm.read(CAP) == STREAM[4:8]
    assert counters(asm) == discards(duplicate=1)


def test_retransmission_straddling_next_dsn_keeps_only_the_new_tail(asm):
    asm.insert(*seg(0, 4))
    assert asm.insert(START + 2, b"##" + STREAM[4:7]) == 3
    assert asm.read(CAP) == STREAM[:7]
    assert counters(asm) == discards(duplicate=2)


def test_byte_just_below_the_start_is_discarded(asm):
    assert asm.insert(START - 1, b"x") == 0
    assert asm.next_dsn == START
    assert counters(asm) == discards(duplicate=1)


def test_dsn_far_behind_is_discarded_not_wrapped(asm):
    assert asm.insert((START - (1 << 62)) % M64, b"old") == 0
    assert asm.insert((START - (1 << 63)) % M64, b"x") == 0
    assert asm.ranges() == [] and asm.next_dsn == START
    assert counters(asm) == discards(duplicate=4)


# --- 64-bit DSN wrap ----------------------------------------------------------------------------------------

def test_in_order_across_dsn_wrap(make):
    a = make(start=M64 - 3)
    assert a.insert(M64 - 3, b"abc") == 3
    assert a.next_dsn == 0
    assert a.insert(0, b"def") == 3
    assert a.next_dsn == 3
    assert a.read(CAP) == b"abcdef"


def test_hole_across_dsn_wrap(make):
    a = make(start=M64 - 2)
    assert a.insert(1, b"d") == 1
    assert a.ranges() == [(1, 2)]
    assert a.insert(M64 - 2, b"ab") == 2
    assert a.insert(0, b"c") == 1
    assert a.next_dsn == 2 and a.ranges() == []
    assert a.read(CAP) == b"abcd"


def test_below_start_across_dsn_wrap(make):
    a = make(start=1)
    assert a.insert(M64 - 1, b"zz") == 0  # DSNs 2^64 - 1 and 0 both precede 1
    assert a.next_dsn == 1 and a.readable() == 0
    assert a.insert(M64 - 1, b"zzy") == 1  # only DSN 1 is new
    assert a.read(CAP) == b"y"
    assert a.duplicate_bytes == 4


def test_window_end_across_dsn_wrap(make):
    a = make(start=M64 - 8)
    assert a.insert(M64 - 1, b"x" * 20) == 9  # window is [2^64 - 8, 8)
    assert a.ranges() == [(M64 - 1, 8)]
    assert a.beyond_window_bytes == 11


# --- window accounting ----------------------------------------------------------------------------------

def test_window_shrinks_with_unread_data_and_reopens_on_read(asm):
    asm.insert(*seg(0, 10))
    assert asm.window() == CAP - 10
    asm.read(4)
    assert asm.window() == CAP - 6


def test_window_is_counted_from_next_dsn_not_reduced_by_out_of_order_data(asm):
    asm.insert(*seg(8, 4))
    assert asm.window() == CAP
    asm.insert(*seg(0, 2))
    assert asm.window() == CAP - 2


# --- the bound on out-of-order ranges -------------------------------------------------------------

def fill_ranges(a):
    """Four disjoint ranges at offsets 2, 5, 8, 11 (one byte each) in a max_ranges=4 assembler."""
    for off in (2, 5, 8, 11):
        assert a.insert(*seg(off, 1)) == 1
    assert len(a.ranges()) == 4


def test_max_ranges_reached_refuses_a_higher_range(asm):
    fill_ranges(asm)
    assert asm.insert(*seg(14, 1)) == 0
    assert len(asm.ranges()) == 4
    assert counters(asm) == discards(range_limit=1)


def test_full_range_table_accepts_bytes_that_extend_held_ranges(asm):
    fill_ranges(asm)
    assert asm.insert(*seg(0, 1)) == 1  # touches nothing but next_dsn: needs no record
    assert asm.insert(*seg(3, 1)) == 1  # merges with offset 2: needs no record
    assert len(asm.ranges()) == 4
    assert asm.insert(*seg(6, 1)) == 1  # merges with offset 5
    assert asm.insert(*seg(9, 1)) == 1  # merges with offset 8
    assert asm.ranges() == [(START + 2, START + 4), (START + 5, START + 7),
                            (START + 8, START + 10), (START + 11, START + 12)]
    assert counters(asm) == NO_DISCARDS


def test_full_range_table_evicts_top_range_when_new_range_is_lower(make):
    a = make(max_ranges=2)
    a.insert(*seg(6, 2))
    a.insert(*seg(12, 3))
    assert a.insert(*seg(2, 1)) == 1
    assert a.ranges() == [(START + 2, START + 3), (START + 6, START + 8)]
    assert counters(a) == discards(evicted=3)
    # The evicted bytes can simply arrive again later.
    assert a.insert(*seg(12, 3)) == 0
    assert a.range_limit_bytes == 3


def test_full_range_table_still_accepts_in_order_and_merging_data(asm):
    fill_ranges(asm)
    assert asm.insert(*seg(0, 2)) == 2  # reaches offset 2: absorbs that range
    assert asm.next_dsn == START + 3
    assert len(asm.ranges()) == 3
    assert counters(asm) == NO_DISCARDS


def test_zero_max_ranges_accepts_only_in_order_data(make):
    a = make(max_ranges=0)
    assert a.insert(*seg(4, 2)) == 0
    assert a.range_limit_bytes == 2
    assert a.insert(*seg(0, 4)) == 4
    assert a.read(CAP) == STREAM[:4]


# --- reading -------------------------------------------------------------------------------------------------------

def test_read_partial_leaves_the_rest(asm):
    asm.insert(*seg(0, 10))
    assert asm.read(3) == STREAM[:3]
    assert asm.readable() == 7
    assert asm.read_dsn == START + 3
    assert asm.read(100) == STREAM[3:10]


def test_read_zero_returns_nothing(asm):
    asm.insert(*seg(0, 4))
    assert asm.read(0) == b""
    assert asm.readable() == 4


def test_read_negative_length_is_a_caller_error(asm):
    with pytest.raises(ValueError):
        asm.read(-1)


def test_read_stops_at_the_first_hole(asm):
    asm.insert(*seg(0, 3))
    asm.insert(*seg(5, 3))
    assert asm.read(CAP) == STREAM[:3]
    assert asm.read(CAP) == b""


def test_read_into_a_smaller_buffer(asm):
    asm.insert(*seg(0, 10))
    buf = bytearray(4)
    assert asm.read_into(buf) == 4
    assert bytes(buf) == STREAM[:4]
    assert asm.readable() == 6


def test_read_into_a_larger_buffer_fills_a_prefix(asm):
    asm.insert(*seg(0, 5))
    buf = bytearray(b"." * 8)
    assert asm.read_into(memoryview(buf)) == 5
    assert bytes(buf) == STREAM[:5] + b"..."


def test_read_into_an_empty_buffer(asm):
    asm.insert(*seg(0, 5))
    assert asm.read_into(bytearray()) == 0
    assert asm.readable() == 5


def test_interleaved_reads_and_inserts_wrap_the_ring(asm):
    out = bytearray()
    for off in range(0, 48, 6):  # 48 bytes through a 16-byte ring
        assert asm.insert(*seg(off, 6)) == 6
        out += asm.read(6)
    assert bytes(out) == STREAM[:48]
    assert counters(asm) == NO_DISCARDS


def test_out_of_order_data_across_the_ring_end(asm):
    asm.insert(*seg(0, 12))
    assert asm.read(12) == STREAM[:12]  # the ring's read position is now 12
    assert asm.insert(*seg(18, 6)) == 6  # stored across the ring's end
    assert asm.insert(*seg(12, 6)) == 6
    assert asm.read(CAP) == STREAM[12:24]


# --- inputs -------------------------------------------------------------------------------------------------------------

def test_insert_accepts_bytes_bytearray_and_memoryview(asm):
    assert asm.insert(START, b"ab") == 2
    assert asm.insert(START + 2, bytearray(b"cd")) == 2
    assert asm.insert(START + 4, memoryview(b"xxef")[2:]) == 2
    assert asm.read(CAP) == b"abcdef"


def test_bad_construction_is_a_caller_error(make):
    with pytest.raises(ValueError):
        make(capacity=0)
    with pytest.raises(ValueError):
        make(max_ranges=-1)
    with pytest.raises(OverflowError):
        make(start=M64)


def test_dsn_outside_64_bits_is_a_caller_error(asm):
    with pytest.raises(OverflowError):
        asm.insert(M64, b"x")
    with pytest.raises(OverflowError):
        asm.insert(-1, b"x")


def test_none_is_not_data_or_a_buffer(asm):
    # The compiled memoryview arguments would take None as an empty buffer and return 0.
    asm.insert(START, b"ab")
    with pytest.raises(TypeError):
        asm.insert(START + 2, None)
    with pytest.raises(TypeError):
        asm.read_into(None)
    assert asm.read(CAP) == b"ab"
