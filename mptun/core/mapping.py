"""MappingTable: one direction of one subflow's DSS mappings, subflow offset -> (DSN, length).

Offsets are relative subflow sequence numbers (RFC 8684 3.3.1: the first data byte is 1)
kept unwrapped as Python ints; the 32-bit values on the wire are expanded by the caller.
Mappings never overlap: a mapping that overlaps one already held is refused and counted.
"""

from __future__ import annotations

from bisect import bisect_right

# An infinite mapping (RFC 8684 3.3.1, data-level length 0): everything from its start on.
INFINITE = 1 << 62


class MappingTable:
    """Mappings in ascending subflow-offset order; lookups by offset, pruning from below."""

    __slots__ = ("_starts", "_entries", "conflicts", "duplicates", "version")

    def __init__(self):
        self.version = 0       # bumped by every change: callers cache what they derive from it
        self._starts: list[int] = []
        self._entries: list[tuple[int, int, int]] = []   # (start offset, dsn, length)
        self.conflicts = 0     # refused: overlapped a held mapping differently
        self.duplicates = 0    # the same mapping again (retransmissions, every GSO segment)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries)

    def add(self, start: int, dsn: int, length: int) -> bool:
        """Record start..start+length -> dsn; False if it was already held or overlaps another."""
        assert length > 0, "a mapping covers at least one byte"
        i = bisect_right(self._starts, start)
        if i:
            ps, pd, pl = self._entries[i - 1]
            if ps == start and pd == dsn and pl == length:
                self.duplicates += 1
                return False
            if ps + pl > start:
                # Linux repeats one mapping on every segment of a send; a different one
                # over the same bytes is a peer error (it would count DSSNotMatching).
                if not (ps == start and pd == dsn):
                    self.conflicts += 1
                    return False
                # The same mapping, longer or shorter: keep the longer one.
                if length > pl and (i == len(self._starts) or self._starts[i] >= start + length):
                    self._entries[i - 1] = (start, dsn, length)
                    self.version += 1
                    return True
                self.duplicates += 1
                return False
        if i < len(self._starts) and self._starts[i] < start + length:
            self.conflicts += 1
            return False
        self._starts.insert(i, start)
        self._entries.insert(i, (start, dsn, length))
        self.version += 1
        return True

    def lookup(self, offset: int) -> tuple[int, int, int] | None:
        """The mapping (start, dsn, length) that covers offset, or None."""
        i = bisect_right(self._starts, offset)
        if i:
            entry = self._entries[i - 1]
            if offset < entry[0] + entry[2]:
                return entry
        return None

    def prune_below(self, offset: int) -> None:
        """Forget mappings that end at or before offset (acknowledged, or read out)."""
        k = 0
        entries = self._entries
        while k < len(entries) and entries[k][0] + entries[k][2] <= offset:
            k += 1
        if k:
            del entries[:k]
            del self._starts[:k]
            self.version += 1

    def runs(self, lo: int, hi: int):
        """(dsn_start, dsn_end) of the mapped parts of offsets lo..hi, in offset order."""
        if hi <= lo:
            return
        i = max(0, bisect_right(self._starts, lo) - 1)
        entries = self._entries
        while i < len(entries):
            s, d, n = entries[i]
            if s >= hi:
                return
            a, b = max(s, lo), min(s + n, hi)
            if a < b:
                yield d + (a - s), d + (b - s)
            i += 1
