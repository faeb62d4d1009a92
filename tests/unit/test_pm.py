"""Path managers: where the initial subflow goes, which (path, peer address) pairs get joins, address
IDs, and the shared PathTable that netlink and `mptun set` change under every connection."""

from mptun.core import pm
from mptun.core.pm import FullMesh, PathState, PathTable, SinglePath


def test_address_ids_are_0_for_the_initial_subflow_and_index_plus_1_for_a_join():
    assert pm.address_id(0, True) == 0 and pm.address_id(3, True) == 0
    assert [pm.address_id(i, False) for i in range(3)] == [1, 2, 3]


def test_the_path_table_says_whether_a_change_changed_anything():
    t = PathTable([PathState(), PathState(backup=True)])
    assert len(t) == 2
    assert t.set_usable(0, False) and not t.set_usable(0, False) and t.set_usable(0, True)
    assert t.set_backup(0, True) and not t.set_backup(0, True)
    assert not t.set_backup(1, True) and t.set_backup(1, False)


def test_full_mesh_starts_on_the_first_usable_regular_path_else_the_first_usable_backup():
    t = PathTable([PathState(backup=True), PathState(usable=False), PathState()])
    fm = FullMesh(t)
    assert fm.initial_path() == 2
    t.set_usable(2, False)
    assert fm.initial_path() == 0
    t.set_usable(0, False)
    assert fm.initial_path() is None


def test_full_mesh_wants_a_subflow_from_every_usable_path_to_every_peer_address():
    t = PathTable([PathState(), PathState(), PathState(usable=False)])
    fm = FullMesh(t)
    assert fm.wanted([0], [(0, 0)]) == [(1, 0)]
    assert fm.wanted([0, 5], [(0, 0), (1, 0)]) == [(0, 5), (1, 5)]
    assert fm.wanted([0, 5], [(0, 0), (1, 0), (0, 5), (1, 5)]) == []
    t.set_usable(2, True)                                    # the table is shared: seen at once
    assert fm.wanted([0], [(0, 0), (1, 0)]) == [(2, 0)]
    assert fm.usable(2) and not fm.backup(2)
    t.set_backup(2, True)
    assert fm.backup(2)


def test_full_mesh_stays_within_its_subflow_limit_counting_the_live_ones():
    fm = FullMesh(PathTable([PathState(), PathState()]), max_subflows=3)
    assert fm.wanted([0, 5], [(0, 0)]) == [(1, 0), (0, 5)]
    assert fm.wanted([0, 5], [(0, 0), (1, 0), (0, 5)]) == []
    assert len(FullMesh(PathTable([PathState()] * 20)).wanted([0], [])) == pm.MAX_SUBFLOWS


def test_single_path_has_one_subflow_and_never_joins():
    sp = SinglePath()
    assert sp.initial_path() == 0 and sp.wanted([0, 5], [(0, 0)]) == []
    assert sp.usable(0) and not sp.usable(1) and not sp.backup(0)
    assert SinglePath(()).initial_path() is None
