"""SendBuffer: the app's bytes by DSN, from the oldest un-DATA_ACKed byte to the newest; the reinjection source.

[una, end) is held. [una, nxt) has been given to subflows, [nxt, end) waits for the scheduler.
`ack(dsn)` frees what the peer acknowledged at the data level; `slice(dsn, n)` reads any held range
again (a chunk for a subflow, or a range to reinject after a subflow died).
"""

from __future__ import annotations


class SendBuffer:
    __slots__ = ("_buf", "una", "nxt", "limit")

    def __init__(self, start_dsn: int, limit: int):
        self._buf = bytearray()
        self.una = start_dsn      # oldest byte not DATA_ACKed
        self.nxt = start_dsn      # next byte no subflow has been given
        self.limit = limit

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def end(self) -> int:
        return self.una + len(self._buf)

    def room(self) -> int:
        """How many more app bytes fit."""
        return max(0, self.limit - len(self._buf))

    def append(self, data) -> None:
        self._buf += data

    def slice(self, dsn: int, n: int) -> bytes:
        """Up to n held bytes from dsn on."""
        assert self.una <= dsn <= self.end, "only held bytes can be read"
        at = dsn - self.una
        return bytes(self._buf[at:at + n])

    def take_new(self, n: int) -> tuple[int, bytes]:
        """The next n bytes no subflow has had yet (fewer if fewer wait): (their DSN, the bytes)."""
        dsn = self.nxt
        data = self.slice(dsn, min(n, self.end - dsn))
        self.nxt = dsn + len(data)
        return dsn, data

    def take_at(self, dsn: int, n: int) -> bytes:
        """Up to n held bytes from dsn on, for a subflow (a copy, or a range again): nxt moves past them."""
        data = self.slice(dsn, min(n, self.end - dsn))
        if dsn + len(data) > self.nxt:
            self.nxt = dsn + len(data)
        return data

    def unsent(self) -> int:
        return self.end - self.nxt

    def ack(self, dsn: int) -> int:
        """Free everything below dsn (clamped to what is held); returns the bytes freed."""
        n = min(dsn, self.end) - self.una
        if n <= 0:
            return 0
        del self._buf[:n]
        self.una += n
        if self.nxt < self.una:
            self.nxt = self.una
        return n
