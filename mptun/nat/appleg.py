"""AppLegTable: the NAT entries of intercepted app connections, by the keys the datapath sees.

The app's 4-tuple (its port, destination) maps to a fake peer (an address and port of the fake
block) that the local listener sees instead; reverse by the fake pair. Entries linger after close
so the last FIN/ACKs are still translated; fake pairs are handed out in a cycle of ~2 billion, so a
pair is never reused while the listener may hold it in TIME_WAIT.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mptun.core.connection import Connection

FAKE_PORT_LO = 1024
FAKE_PORTS = 65536 - FAKE_PORT_LO


class AppLeg:
    """The NAT entry of one intercepted app connection."""

    __slots__ = ("conn", "app_port", "dst", "dst_port", "fake", "fake_port", "syn", "expires")

    def __init__(self, conn: Connection, app_port: int, dst: bytes, dst_port: int, fake: bytes, fake_port: int,
                 syn: bytes | None = None):
        self.conn = conn
        self.app_port = app_port
        self.dst = dst
        self.dst_port = dst_port
        self.fake = fake
        self.fake_port = fake_port
        self.syn = syn                       # the app's SYN, held until the upstream handshake is done
        self.expires: float | None = None    # set once the connection is over

    @property
    def dst_text(self) -> str:
        return f"{IPv4Address(self.dst)}:{self.dst_port}"

    @property
    def holding_syn(self) -> bool:
        return self.syn is not None

    def take_syn(self) -> bytes | None:
        """The held SYN, handed over once (released to the listener, or answered with a RST)."""
        syn, self.syn = self.syn, None
        return syn

    def expire_at(self, when: float) -> None:
        self.expires = when


class AppLegTable:
    def __init__(self, fake_block: IPv4Network):
        self._fake_base = int(fake_block.network_address) + 1
        self._fake_count = fake_block.num_addresses - 2
        assert self._fake_count > 0
        self._next_fake = 0
        self.by_app: dict[tuple[int, bytes, int], AppLeg] = {}
        self.by_fake: dict[tuple[bytes, int], AppLeg] = {}
        self.by_conn: dict[int, AppLeg] = {}    # connection id -> its app leg

    def _fake_pair(self) -> tuple[bytes, int]:
        while True:
            c = self._next_fake
            self._next_fake = (c + 1) % (self._fake_count * FAKE_PORTS)
            pair = ((self._fake_base + c % self._fake_count).to_bytes(4, "big"),
                    FAKE_PORT_LO + c // self._fake_count)
            if pair not in self.by_fake:
                return pair

    def add(self, conn: Connection, app_port: int, dst: bytes, dst_port: int, syn: bytes | None = None) -> AppLeg:
        key = (app_port, dst, dst_port)
        assert key not in self.by_app
        fake, fake_port = self._fake_pair()
        leg = AppLeg(conn, app_port, dst, dst_port, fake, fake_port, syn)
        self.by_app[key] = leg
        self.by_fake[(fake, fake_port)] = leg
        self.by_conn[conn.id] = leg
        return leg

    def remove(self, conn: Connection) -> None:
        leg = self.by_conn.pop(conn.id, None)
        if leg is not None:
            self.by_app.pop((leg.app_port, leg.dst, leg.dst_port), None)
            self.by_fake.pop((leg.fake, leg.fake_port), None)
