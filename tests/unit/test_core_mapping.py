"""MappingTable: one direction of a subflow's DSS mappings, by relative subflow sequence number."""

from mptun.core.seqspace import unwrap32, unwrap64
from mptun.core.mapping import INFINITE, MappingTable


def test_lookup_inside_and_outside():
    t = MappingTable()
    assert t.add(1, 1000, 100)
    assert t.lookup(1) == (1, 1000, 100)
    assert t.lookup(100) == (1, 1000, 100)    # offset 100 is DSN 1099
    assert t.lookup(101) is None
    assert t.lookup(0) is None


def test_the_same_mapping_again_is_a_duplicate_not_a_conflict():
    t = MappingTable()
    t.add(1, 1000, 100)
    assert not t.add(1, 1000, 100)
    assert (t.duplicates, t.conflicts, len(t)) == (1, 0, 1)


def test_a_different_mapping_over_the_same_bytes_is_refused():
    t = MappingTable()
    t.add(1, 1000, 100)
    assert not t.add(50, 5000, 10)      # inside, another DSN
    assert not t.add(1, 2000, 100)      # same start, another DSN
    assert not t.add(90, 1089, 50)      # overlaps the end
    assert t.conflicts == 3
    assert list(t) == [(1, 1000, 100)]


def test_a_mapping_that_would_overlap_the_next_is_refused():
    t = MappingTable()
    t.add(101, 2000, 100)
    assert not t.add(1, 1000, 101)
    assert t.add(1, 1000, 100)
    assert list(t) == [(1, 1000, 100), (101, 2000, 100)]


def test_same_start_same_dsn_longer_replaces():
    t = MappingTable()
    t.add(1, 1000, 50)
    assert t.add(1, 1000, 100)
    assert list(t) == [(1, 1000, 100)]
    assert not t.add(1, 1000, 20)
    assert list(t) == [(1, 1000, 100)]


def test_out_of_order_arrival_keeps_order():
    t = MappingTable()
    t.add(201, 3000, 100)
    t.add(1, 1000, 100)
    t.add(101, 2000, 100)
    assert [e[0] for e in t] == [1, 101, 201]


def test_prune_below():
    t = MappingTable()
    for k in range(5):
        t.add(1 + 100 * k, 1000 * k, 100)
    t.prune_below(201)            # the first two end at 101 and 201
    assert [e[0] for e in t] == [201, 301, 401]
    t.prune_below(250)            # partly read: kept
    assert next(iter(t)) == (201, 2000, 100)


def test_runs_clip_to_the_range_and_skip_gaps():
    t = MappingTable()
    t.add(1, 1000, 100)
    t.add(101, 1100, 100)
    t.add(301, 5000, 100)         # a gap at 201..300
    assert list(t.runs(50, 150)) == [(1049, 1100), (1100, 1149)]
    assert list(t.runs(150, 350)) == [(1149, 1200), (5000, 5049)]
    assert list(t.runs(5, 5)) == []


def test_infinite_mapping_covers_everything_after():
    t = MappingTable()
    t.add(1, 1000, INFINITE)
    start, dsn, _ = t.lookup(10 ** 12)
    assert dsn + (10 ** 12 - start) == 1000 + 10 ** 12 - 1


def test_unwrap32_near_the_reference():
    assert unwrap32(10, 12) == 12
    assert unwrap32((1 << 32) - 5, 3) == (1 << 32) + 3           # forward across the wrap
    assert unwrap32((1 << 32) + 3, 0xFFFFFFFE) == (1 << 32) - 2  # backward across it
    assert unwrap32(5, 0xFFFFFFFF) == -1


def test_unwrap64_across_the_dsn_wrap():
    m = 1 << 64
    assert unwrap64(m - 10, 5) == m + 5
    assert unwrap64(m + 5, m - 10) == m - 10
    assert unwrap64(123, 123) == 123
