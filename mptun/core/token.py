"""TokenTable: the MPTCP tokens of the live connections (RFC 8684 3.1: unique per host; MP_JOIN finds its connection by token)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mptun.wire import crypto

if TYPE_CHECKING:
    from mptun.core.connection import Connection


class TokenTable:
    __slots__ = ("_by_token",)

    def __init__(self):
        self._by_token: dict[int, Connection] = {}

    def new_key(self, random_bytes: Callable[[int], bytes]) -> int:
        """A fresh 64-bit key whose token no live connection has (RFC 8684 3.1)."""
        while True:
            key = crypto.new_key(random_bytes)
            if crypto.key_token(key) not in self._by_token:
                return key

    def add(self, conn: Connection) -> None:
        assert conn.token not in self._by_token, "tokens are unique (new_key)"
        self._by_token[conn.token] = conn

    def remove(self, conn: Connection) -> None:
        if self._by_token.get(conn.token) is conn:
            del self._by_token[conn.token]

    def lookup(self, token: int) -> Connection | None:
        """The connection an MP_JOIN's token names (RFC 8684 3.2), or None."""
        return self._by_token.get(token)
