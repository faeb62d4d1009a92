"""Path managers: on which paths, and towards which of the peer's addresses, a connection has subflows.

The Connection asks its path manager where the initial (MP_CAPABLE) subflow goes when it starts, and,
once the connection is MPTCP, which (path, peer address) pairs should have a subflow now. Paths are
the edge's interfaces by index (0 = the first named at `mptun up`); their state (usable or not,
backup or regular) is one PathTable the daemon shares with every connection and updates from
netlink and `mptun set`. Peer addresses are by the peer's address ID: 0 is the destination, others
come from its ADD_ADDR.

Address IDs are per local address (RFC 8684 3.4.1): 0 is the initial subflow's address; a joined
path uses its index + 1, so an ID stays the same for the life of the path whatever was removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Subflows per connection at most (live ones), whatever the peer advertises.
MAX_SUBFLOWS = 8


class PathManager(Protocol):
    def initial_path(self) -> int | None:
        """The path of the MP_CAPABLE subflow, or None when no path is usable."""

    def wanted(self, remotes: Iterable[int], live: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Once the connection is MPTCP: the (path, peer address ID) pairs to open MP_JOIN subflows
        on now. live: the pairs that have a subflow that is not closed."""

    def usable(self, path: int) -> bool:
        """The path can carry a subflow now."""

    def backup(self, path: int) -> bool:
        """Subflows on the path are backups: they carry data only while no regular one works."""


def address_id(path: int, initial: bool) -> int:
    return 0 if initial else path + 1


@dataclass
class PathState:
    usable: bool = True
    backup: bool = False


class PathTable:
    """Every path's state, shared by the daemon and all connections' path managers."""

    def __init__(self, states: Iterable[PathState]):
        self.states = list(states)

    def __len__(self) -> int:
        return len(self.states)

    def set_usable(self, path: int, usable: bool) -> bool:
        """True if it changed."""
        st = self.states[path]
        changed, st.usable = st.usable != usable, usable
        return changed

    def set_backup(self, path: int, backup: bool) -> bool:
        st = self.states[path]
        changed, st.backup = st.backup != backup, backup
        return changed


class SinglePath:
    """One subflow per connection, on the first usable path; no joins."""

    def __init__(self, usable: Sequence[int] = (0,)):
        self._usable = list(usable)

    def initial_path(self) -> int | None:
        return self._usable[0] if self._usable else None

    def wanted(self, remotes: Iterable[int], live: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        return []

    def usable(self, path: int) -> bool:
        return path in self._usable

    def backup(self, path: int) -> bool:
        return False


class FullMesh:
    """A subflow from every usable path to every address of the peer's (the destination, and what
    it advertised), up to max_subflows. The initial subflow goes on the first usable regular path,
    else the first usable backup."""

    def __init__(self, table: PathTable, max_subflows: int = MAX_SUBFLOWS):
        self.table = table
        self.max_subflows = max_subflows

    def initial_path(self) -> int | None:
        states = self.table.states
        for want_backup in (False, True):
            for i, st in enumerate(states):
                if st.usable and st.backup == want_backup:
                    return i
        return None

    def wanted(self, remotes: Iterable[int], live: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        have = set(live)
        room = self.max_subflows - len(live)
        out = []
        for remote in remotes:
            for i, st in enumerate(self.table.states):
                if room <= 0:
                    return out
                if st.usable and (i, remote) not in have:
                    out.append((i, remote))
                    room -= 1
        return out

    def usable(self, path: int) -> bool:
        return self.table.states[path].usable

    def backup(self, path: int) -> bool:
        return self.table.states[path].backup
