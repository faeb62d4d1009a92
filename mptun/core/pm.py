"""Path managers: on which paths a connection opens subflows, and with which address IDs.

The Connection asks its path manager where the initial (MP_CAPABLE) subflow goes when it starts,
and which paths to join once it is MPTCP; later, path up/down and the peer's ADD_ADDR/REMOVE_ADDR
reach it too. Paths are the edge's interfaces by index (0 = the first named at `mptun up`).
Address IDs are per local address (RFC 8684 3.4.1): 0 is the initial subflow's address; a joined
path uses its index + 1, so an ID stays the same for the life of the path whatever was removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class PathManager(Protocol):
    def initial_path(self) -> int | None:
        """The path of the MP_CAPABLE subflow, or None when no path is usable."""

    def paths_to_join(self, used: Sequence[int]) -> list[int]:
        """Once the connection is MPTCP: paths to open MP_JOIN subflows on (used: paths with a subflow)."""


def address_id(path: int, initial: bool) -> int:
    return 0 if initial else path + 1


class SinglePath:
    """One subflow per connection, on the first usable path; no joins (today's behaviour)."""

    def __init__(self, usable: Sequence[int] = (0,)):
        self.usable = list(usable)

    def initial_path(self) -> int | None:
        return self.usable[0] if self.usable else None

    def paths_to_join(self, used: Sequence[int]) -> list[int]:
        return []
