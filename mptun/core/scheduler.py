"""Schedulers: which subflow gets the next chunk of the data stream. A protocol and a registry by name.

The send path asks `pick(send, candidates)` whenever new data may go out (it is within the peer's
data-level window); candidates are the subflows usable now (established, socket not full), in the
order they were opened. The send path cuts the chunk (one DSS mapping, < 64 KB) and records it.
`mptun up --scheduler NAME` will choose one; `first` is today's behaviour and the default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mptun.core.send import SendPath
    from mptun.core.subflow import Subflow


class Scheduler(Protocol):
    name: str

    def pick(self, send: SendPath, candidates: Sequence[Subflow]) -> Subflow | None:
        """The subflow for the next chunk, or None to send nothing now."""


class FirstUsable:
    """Fill the first usable subflow until its socket is full, then the next (one path: all of it)."""

    name = "first"

    def pick(self, send: SendPath, candidates: Sequence[Subflow]) -> Subflow | None:
        return candidates[0] if candidates else None


SCHEDULERS: dict[str, Callable[[], Scheduler]] = {}


def register(name: str, factory: Callable[[], Scheduler]) -> None:
    assert name not in SCHEDULERS, f"scheduler {name!r} registered twice"
    SCHEDULERS[name] = factory


def create(name: str) -> Scheduler:
    """A new scheduler instance by name; ValueError names the known ones."""
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(sorted(SCHEDULERS))})") from None


DEFAULT = FirstUsable.name
register(FirstUsable.name, FirstUsable)
