"""SubflowSockets: the kernel TCP sockets that carry subflows: port allocation per path, and the
(path, local port) -> Subflow table the datapath demultiplexes subflow packets by.

A subflow socket is bound to its path's internal address and a port of mptun's reserved range
(only those ports are captured on the interface), marked so policy routing sends it into the TUN.
"""

from __future__ import annotations

import errno
import logging
import socket
from ipaddress import IPv4Address

from mptun.core.connection import Connection
from mptun.core.mib import Counters
from mptun.core.subflow import Subflow
from mptun.io.paths import PathIO

log = logging.getLogger("mptun")

SO_MARK = 36
TCP_NOTSENT_LOWAT = 25
# The kernel socket keeps at most this much unsent: little data is stranded in a dead subflow.
NOTSENT_LOWAT = 1 << 20


class SubflowSockets:
    def __init__(self, paths: list[PathIO], port_range: tuple[int, int], fwmark: int, counters: Counters):
        self.paths = paths
        self.lo, self.hi = port_range
        self.fwmark = fwmark
        self.counters = counters
        self._next_port = [self.lo] * len(paths)
        self._by_port: dict[tuple[int, int], Subflow] = {}

    def lookup(self, path: int, port: int) -> Subflow | None:
        return self._by_port.get((path, port))

    def in_range(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def open(self, conn: Connection, path: int, dst: bytes, dst_port: int) -> tuple[Subflow, socket.socket] | None:
        """A connecting socket on path towards dst, known to conn and to the table; None if it could
        not be made (counted, and told to conn)."""
        got = self._connect(path, dst, dst_port)
        if got is None:
            conn.subflow_open_failed(path)
            return None
        s, port = got
        # Before the next datapath batch: the kernel has the SYN queued in the TUN already.
        sf = conn.subflow_opened(path, port)
        self.register(sf)
        return sf, s

    def register(self, sf: Subflow) -> None:
        """Packets of sf's port on its path belong to sf from now on."""
        key = (sf.path, sf.local_port)
        assert key not in self._by_port, "one subflow per (path, port)"
        self._by_port[key] = sf

    def _connect(self, path: int, dst: bytes, dst_port: int) -> tuple[socket.socket, int] | None:
        sub_addr = str(IPv4Address(self.paths[path].sub_addr))
        for _ in range(self.hi - self.lo + 1):
            port = self._next_port[path]
            self._next_port[path] = self.lo if port >= self.hi else port + 1
            if (path, port) in self._by_port:
                continue
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as e:    # EMFILE at the fd limit: this connection fails, not the packet loop
                return self._failed(f"subflow socket: {e}")
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, self.fwmark)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
                s.bind((sub_addr, port))
                s.setblocking(False)
            except OSError as e:
                s.close()
                if e.errno == errno.EADDRINUSE:
                    continue
                return self._failed(f"subflow socket: {e}")
            err = s.connect_ex((str(IPv4Address(dst)), dst_port))
            if err in (0, errno.EINPROGRESS):
                return s, port
            s.close()
            if err == errno.EADDRNOTAVAIL:
                continue    # that 4-tuple is still in TIME_WAIT: another port
            return self._failed(f"subflow connect: {errno.errorcode.get(err, err)}")
        self.counters["no_free_ports"] += 1
        log.warning("no free subflow port on path %d", path)
        return None

    def _failed(self, text: str) -> None:
        self.counters["subflow_open_failures"] += 1
        log.warning("%s", text)
        return None

    def forget(self, sf: Subflow) -> None:
        """The subflow's connection is gone for good: its port may be used again."""
        if self._by_port.get((sf.path, sf.local_port)) is sf:
            del self._by_port[(sf.path, sf.local_port)]
