"""SubflowSockets: the kernel TCP sockets that carry subflows: port allocation per path, the
(path, local port, remote address, remote port) -> Subflow table the datapath demultiplexes
subflow packets by, and the graceful close of a finished subflow's socket.

A subflow socket is bound to its path's internal address and a port of mptun's reserved range
(only those ports are captured on the interface), marked so policy routing sends it into the TUN.
Uniqueness is per 4-tuple, as the kernel's: a local port is used again towards another remote
pair at once, and towards the same one as soon as the kernel lets the 4-tuple go (connect() says
EADDRNOTAVAIL while a socket or a TIME_WAIT holds it). A finished subflow is closed only once
the peer's FIN is in, so the TIME_WAIT falls on the peer and the 4-tuple is free again at once
(docs/datapath.md, "Subflow ports").
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
from ipaddress import IPv4Address

from mptun.core.connection import SUBFLOW_WINDOW, Connection
from mptun.core.mib import Counters
from mptun.core.subflow import Subflow
from mptun.io.loop import ERROR, READ, EventLoop
from mptun.io.paths import PathIO

log = logging.getLogger("mptun")

SO_MARK = 36
TCP_NOTSENT_LOWAT = 25
# The kernel socket keeps at most this much unsent: little data is stranded in a dead subflow.
NOTSENT_LOWAT = 1 << 20
# A finished subflow waits at most this long for the peer's FIN before it is closed anyway (then
# its TIME_WAIT is ours). Linux closes its subflows as soon as its connection is closed.
RETIRE_WAIT = 2.0

Key = tuple[int, int, bytes, int]


class SubflowSockets:
    def __init__(self, paths: list[PathIO], port_range: tuple[int, int], fwmark: int, counters: Counters):
        self.paths = paths
        self.lo, self.hi = port_range
        self.fwmark = fwmark
        self.counters = counters
        self._next_port = [self.lo] * len(paths)
        self._by_tuple: dict[Key, Subflow] = {}
        self._remote: dict[Subflow, tuple[bytes, int]] = {}
        self._retiring = itertools.count()

    def lookup(self, path: int, lport: int, raddr: bytes, rport: int) -> Subflow | None:
        return self._by_tuple.get((path, lport, raddr, rport))

    def remote_of(self, sf: Subflow) -> tuple[bytes, int]:
        """The address and port sf is connected to."""
        return self._remote[sf]

    def in_range(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def open(self, conn: Connection, path: int, dst: bytes, dst_port: int,
             remote_id: int = 0) -> tuple[Subflow, socket.socket] | None:
        """A connecting socket on path towards dst:dst_port, known to conn and to the table; None if
        it could not be made (counted, and told to conn)."""
        got = self._connect(path, dst, dst_port)
        if got is None:
            conn.subflow_open_failed(path, remote_id)
            return None
        s, port = got
        # Before the next datapath batch: the kernel has the SYN queued in the TUN already.
        sf = conn.subflow_opened(path, port, remote_id)
        self.register(sf, dst, dst_port)
        return sf, s

    def register(self, sf: Subflow, raddr: bytes, rport: int) -> None:
        """Packets of sf's 4-tuple belong to sf from now on. The kernel let the 4-tuple be connected,
        so an entry still holding it is of a subflow whose socket is gone: it is replaced."""
        key = (sf.path, sf.local_port, raddr, rport)
        if key in self._by_tuple:
            self.counters["subflow_tuples_reused"] += 1
        self._by_tuple[key] = sf
        self._remote[sf] = (raddr, rport)

    def _connect(self, path: int, dst: bytes, dst_port: int) -> tuple[socket.socket, int] | None:
        sub_addr = str(IPv4Address(self.paths[path].sub_addr))
        dst_text = str(IPv4Address(dst))
        for _ in range(self.hi - self.lo + 1):
            port = self._next_port[path]
            self._next_port[path] = self.lo if port >= self.hi else port + 1
            held = self._by_tuple.get((path, port, dst, dst_port))
            if held is not None and not (held.closed or held.conn.over):
                continue    # a live subflow's socket has it: connect would fail
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as e:    # EMFILE at the fd limit: this connection fails, not the packet loop
                return self._failed(f"subflow socket: {e}")
            try:
                # SO_REUSEADDR: the port may be bound by other subflows to other remote pairs.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, self.fwmark)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, SUBFLOW_WINDOW)
                s.bind((sub_addr, port))
                s.setblocking(False)
            except OSError as e:
                s.close()
                if e.errno == errno.EADDRINUSE:
                    continue
                return self._failed(f"subflow socket: {e}")
            err = s.connect_ex((dst_text, dst_port))
            if err in (0, errno.EINPROGRESS):
                return s, port
            s.close()
            if err == errno.EADDRNOTAVAIL:
                # The 4-tuple is still held (a socket closing, or our TIME_WAIT): another port.
                self.counters["subflow_tuples_busy"] += 1
                continue
            return self._failed(f"subflow connect: {errno.errorcode.get(err, err)}")
        self.counters["no_free_ports"] += 1
        log.warning("no free subflow port on path %d towards %s:%d", path, dst_text, dst_port)
        return None

    def _failed(self, text: str) -> None:
        self.counters["subflow_open_failures"] += 1
        log.warning("%s", text)
        return None

    def forget(self, sf: Subflow) -> None:
        """The subflow's connection is gone for good: its 4-tuple is no longer translated."""
        remote = self._remote.pop(sf, None)
        if remote is None:
            return
        key = (sf.path, sf.local_port, *remote)
        if self._by_tuple.get(key) is sf:
            del self._by_tuple[key]

    # ------------------------------------------------------------ closing

    def retire(self, loop: EventLoop, s: socket.socket, now: float) -> None:
        """Close a finished subflow's socket once the peer's FIN has arrived: closing in CLOSE_WAIT
        makes ours the passive close, so the TIME_WAIT is the peer's and the 4-tuple is free again
        as soon as the peer acknowledges our FIN. At most RETIRE_WAIT later it is closed anyway.
        The datapath still translates its last packets (its table entry lingers)."""
        key = ("retire", next(self._retiring))
        fd = s.fileno()

        def close(now: float = 0.0) -> None:
            loop.cancel(key)
            if s.fileno() >= 0:
                loop.forget(s.fileno())
                s.close()

        def timed_out(now: float) -> None:
            self.counters["subflow_close_timeouts"] += 1
            close()

        def readable(ev: int) -> None:
            if _peer_done(s):
                close()

        if _peer_done(s):
            close()
            return
        loop.watch(fd, READ | ERROR, readable)
        loop.call_at(key, now + RETIRE_WAIT, timed_out)


def _peer_done(s: socket.socket) -> bool:
    """True once the socket has the peer's FIN (or failed). Bytes after both DATA_FINs mean nothing
    to anyone: they are discarded."""
    for _ in range(8):
        try:
            if not s.recv(65536):
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True
    return False
