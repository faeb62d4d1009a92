"""Connections: the sockets of every connection and the bytes between them, moved through core's API only.

Each connection has an app socket (accepted by the listener) and subflow sockets. Readiness from the
event loop becomes core input calls (`app_data`, `subflow_data`, `subflow_connected`, ...); then
`service` moves what can move (`next_write`/`written`, `take_for_app`), runs `poll(now)`, carries
out the events core emitted and sets what each socket is watched for and when the connection's
timer fires. Nothing here decides MPTCP behaviour, and nothing assigns a core object's attributes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
import termios
import time
from collections.abc import Callable

from mptun.core.connection import Connection
from mptun.core.events import (Closed, CloseSubflow, ControlSegment, OpenSubflow, RefuseApp, ReleaseAppSyn,
                               ShutdownSubflow)
from mptun.core.mib import Counters
from mptun.core.subflow import Subflow
from mptun.core.token import TokenTable
from mptun.io import sockdiag, subflowio
from mptun.io.datapath import UNREACH_CODE_OF_ERRNO, Datapath
from mptun.io.loop import ERROR, READ, WRITE, EventLoop
from mptun.io.subflows import SubflowSockets
from mptun.nat.appleg import AppLeg, AppLegTable

log = logging.getLogger("mptun")

IO_CHUNK = 256 * 1024
# NAT entries of a finished connection stay this long, so the last FIN/ACKs are translated.
LINGER = 30.0
# Reads per readiness event before other sockets get their turn.
READS_PER_EVENT = 8
APP_WRITES_PER_SERVICE = 16

_CONNECT_FAILURES = {errno.ECONNREFUSED: "refused", errno.ETIMEDOUT: "connect_timeouts",
                     errno.EHOSTUNREACH: "unreachable", errno.ENETUNREACH: "unreachable"}
# While the app's SYN is held: how often to look whether the app still waits for its connect.
APP_SYN_CHECK = 1.0
# Waiting for the app to read everything before its leg gets our FIN: first recheck, and the most.
DRAIN_CHECK_FIRST = 0.005
DRAIN_CHECK_MAX = 0.25


class ConnIO:
    """The sockets of one connection and the bytes taken from core not yet written to the app."""

    __slots__ = ("conn", "leg", "app", "socks", "handlers", "app_out", "finished", "on_app", "app_hung_up",
                 "drain_wait", "timer_key", "drain_key", "expire_key", "on_timer")

    def __init__(self, conn: Connection, leg: AppLeg):
        self.conn = conn
        self.leg = leg
        self.app: socket.socket | None = None
        self.socks: dict[Subflow, socket.socket] = {}
        self.handlers: dict[Subflow, Callable[[int], None]] = {}
        self.app_out = b""
        self.finished = False
        self.on_app: Callable[[int], None] | None = None
        self.app_hung_up = False      # both directions of the app's leg are shut: nothing more to hear
        self.drain_wait = DRAIN_CHECK_FIRST
        self.timer_key = ("conn", conn.id)      # core's deadline (get_timer)
        self.drain_key = ("drain", conn.id)     # the next look at whether the app has read everything
        self.expire_key = ("expire", conn.id)   # the end of the NAT entries' linger
        self.on_timer: Callable[[float], None] | None = None

    def attach_app(self, s: socket.socket, handler: Callable[[int], None]) -> None:
        self.app = s
        self.on_app = handler

    def attach_subflow(self, sf: Subflow, s: socket.socket, handler: Callable[[int], None]) -> None:
        self.socks[sf] = s
        self.handlers[sf] = handler

    def hung_up(self) -> None:
        self.app_hung_up = True

    def drain_backoff(self) -> float:
        wait, self.drain_wait = self.drain_wait, min(self.drain_wait * 2, DRAIN_CHECK_MAX)
        return wait

    def take_app_bytes(self, n: int) -> None:
        self.app_out = self.app_out[n:]

    def refill_app_bytes(self, data: bytes) -> None:
        self.app_out = data

    def close_sockets(self, loop: EventLoop, reset: bool) -> None:
        for s in [self.app, *self.socks.values()]:
            if s is None or s.fileno() < 0:
                continue
            loop.forget(s.fileno())
            subflowio.close(s, reset)
        self.app = None
        self.finished = True


class Connections:
    def __init__(self, loop: EventLoop, dp: Datapath, legs: AppLegTable, subflows: SubflowSockets,
                 counters: Counters, new_connection: Callable[[float], Connection]):
        self.loop = loop
        self.dp = dp
        self.legs = legs
        self.subflows = subflows
        self.counters = counters
        self.tokens = TokenTable()
        self.new_connection = new_connection
        self.by_id: dict[int, ConnIO] = {}

    # ------------------------------------------------------------ new connections

    def on_app_syn(self, app_port: int, dst: bytes, dst_port: int, syn: bytes) -> None:
        """The app's first SYN (the datapath holds it): an MPTCP connection towards its destination."""
        old = self.legs.by_app.get((app_port, dst, dst_port))
        if old is not None:
            self._forget(self.by_id.get(old.conn.id))   # its port reused: the old one is over
        now = time.monotonic()
        conn = self.new_connection(now)
        self.counters["connections"] += 1
        self.tokens.add(conn)
        c = ConnIO(conn, self.legs.add(conn, app_port, dst, dst_port, syn))
        c.on_timer = lambda now: self.service(c)
        self.by_id[conn.id] = c
        conn.start(now)
        self.loop.call_at(("app_syn", conn.id), now + APP_SYN_CHECK, lambda now: self._check_app_waiting(c, now))
        self.service(c)

    def _check_app_waiting(self, c: ConnIO, now: float) -> None:
        """While the app's SYN is held: an app that gave up (closed its socket, its connect timed
        out) ends the connection, so the subflow's SYN retries stop."""
        if c.finished or not c.leg.holding_syn or self.by_id.get(c.conn.id) is not c:
            return
        leg = c.leg
        try:
            waiting = sockdiag.connecting(self.dp.tun_addr, leg.app_port, leg.dst, leg.dst_port)
        except OSError:
            waiting = True      # cannot tell: the kernel's SYN retries end it, as before
        if not waiting:
            c.conn.abort("app_gone")
            self.service(c)
            return
        self.loop.call_at(("app_syn", c.conn.id), now + APP_SYN_CHECK, lambda now: self._check_app_waiting(c, now))

    def on_accept(self, s: socket.socket, fake: bytes, fake_port: int) -> None:
        """The listener accepted an app leg (the app's handshake after its SYN was released)."""
        leg = self.legs.by_fake.get((fake, fake_port))
        c = self.by_id.get(leg.conn.id) if leg is not None else None
        if c is None or c.app is not None or c.finished:
            s.close()
            self.counters["unknown_flow"] += 1
            return
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.attach_app(s, lambda ev: self._on_app(c, ev))
        c.conn.on_app_accepted()
        self.service(c)

    # ------------------------------------------------------------ readiness

    def _on_app(self, c: ConnIO, ev: int) -> None:
        if ev & (READ | ERROR):
            self._read_app(c)
        if ev & ERROR and c.app is not None and not c.conn.over:
            # The app's leg failed (its RST: the app aborted, or exited with data unread), or
            # both its directions are shut and there is nothing more to hear from it.
            if c.app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._app_failed(c)
            else:
                c.hung_up()
        self.service(c)

    def _read_app(self, c: ConnIO) -> None:
        conn = c.conn
        for _ in range(READS_PER_EVENT):
            if not conn.wants_app_read():
                return
            want = min(conn.app_room(), IO_CHUNK)
            try:
                data = c.app.recv(want)
            except BlockingIOError:
                return
            except OSError:
                self._app_failed(c)
                return
            if not data:
                conn.on_app_eof()
                return
            conn.app_data(data)
            if len(data) < want:
                return

    def _app_failed(self, c: ConnIO) -> None:
        """The app's leg was reset. Bytes the app wrote before are still queued there (recv gives
        them before the error), and the kernel's MPTCP would have sent them: take them first."""
        conn = c.conn
        while conn.wants_app_read():
            try:
                data = c.app.recv(min(conn.app_room(), IO_CHUNK))
            except OSError:
                break
            if not data:
                break       # the end of a reset stream, not the app's FIN: no DATA_FIN follows
            conn.app_data(data)
        conn.app_reset(time.monotonic())

    def _on_subflow(self, c: ConnIO, sf: Subflow, ev: int) -> None:
        s = c.socks.get(sf)
        if s is None or c.finished:
            return
        conn = c.conn
        if not sf.sock_connected:
            if ev & (READ | WRITE):
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    conn.subflow_connected(sf, time.monotonic())
                else:
                    detail = errno.errorcode.get(err, str(err))
                    reason = _CONNECT_FAILURES.get(err, "connect_errors")
                    if reason == "connect_errors":
                        log.info("conn %d to %s: %s", conn.id, c.leg.dst_text, os.strerror(err))
                    conn.subflow_connect_failed(sf, reason, detail, UNREACH_CODE_OF_ERRNO.get(err))
            self.service(c)
            return
        if ev & WRITE:
            conn.subflow_writable(sf)
        if ev & READ:
            for _ in range(READS_PER_EVENT):
                if not conn.wants_subflow_read(sf) or conn.over:
                    break
                want = min(conn.subflow_room(sf), IO_CHUNK)
                try:
                    data = s.recv(want)
                except BlockingIOError:
                    break
                except OSError:
                    conn.subflow_reset(sf)
                    break
                if not data:
                    conn.subflow_eof(sf)
                    break
                conn.subflow_data(sf, data)
                if len(data) < want:
                    break
        self.service(c)

    def service_dirty(self) -> None:
        """Connections whose peer packets the datapath just passed: DATA_ACKs may have opened the window."""
        for conn in self.dp.take_dirty():
            c = self.by_id.get(conn.id)
            if c is not None:
                self.service(c)

    # ------------------------------------------------------------ moving bytes, carrying out events

    def service(self, c: ConnIO) -> None:
        """Move what can move for one connection, carry out what core asks, then set interests."""
        if c.finished:
            return
        conn = c.conn
        self._write_subflows(c)
        if c.app is not None and not conn.over:
            self._flush_app(c)
            if not conn.over and not c.app_out and conn.app_fin_due():
                self._end_app_leg(c)
        conn.poll(time.monotonic())
        if self._carry_out_all(c):
            return
        self._update_interest(c)

    def _end_app_leg(self, c: ConnIO) -> None:
        """The peer's stream is over and every byte of it is in the app's leg: the app gets our FIN
        once it has read them all. Before that, an app that exits with data unread resets its leg,
        which we hear and answer with MP_FASTCLOSE; after our FIN its kernel would drop such data
        silently (its socket is closed by then), and the peer would believe it was delivered."""
        if not self._app_drained(c):
            self.loop.call_at(c.drain_key, time.monotonic() + c.drain_backoff(), c.on_timer)
            return
        self.loop.cancel(c.drain_key)
        c.conn.app_fin_delivered()
        _shutdown(c.app)

    def _app_drained(self, c: ConnIO) -> bool:
        try:
            unsent = fcntl.ioctl(c.app.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            if struct.unpack("i", unsent)[0] > 0:
                return False        # still on its way into the app's socket
            leg = c.leg
            app = sockdiag.lookup(self.dp.tun_addr, leg.app_port, leg.dst, leg.dst_port)
        except OSError as e:
            self.counters["app_drain_unknown"] += 1
            log.debug("conn %d: cannot see the app's socket (%s): ending its leg now", c.conn.id, e)
            return True
        return app is None or app.rqueue == 0

    def _carry_out_all(self, c: ConnIO) -> bool:
        """Every event core has queued, including those that carrying one out caused; True if the
        connection is gone."""
        while events := c.conn.events():
            for event in events:
                if self._carry_out(c, event):
                    return True
        return False

    def _write_subflows(self, c: ConnIO) -> None:
        conn = c.conn
        if len(c.socks) > 1:
            subflowio.report_info(conn, c.socks)
        while (w := conn.next_write()) is not None:
            sf, data = w
            try:
                n = c.socks[sf].send(data, socket.MSG_EOR)
            except BlockingIOError:
                n = 0
            except OSError:
                conn.subflow_reset(sf)
                return
            conn.written(sf, n)

    def _flush_app(self, c: ConnIO) -> None:
        conn = c.conn
        for _ in range(APP_WRITES_PER_SERVICE):
            if not c.app_out:
                if not conn.app_pending():
                    return
                c.refill_app_bytes(conn.take_for_app(IO_CHUNK))
            try:
                n = c.app.send(c.app_out)
            except BlockingIOError:
                return
            except OSError:
                self._app_failed(c)
                return
            c.take_app_bytes(n)
            if c.app_out:
                return

    def _carry_out(self, c: ConnIO, event) -> bool:
        """One event of core's; True if the connection is gone (stop servicing it)."""
        if isinstance(event, ControlSegment):
            self.dp.send_control(event, self.dp.paths[event.subflow.path], *self.subflows.remote_of(event.subflow))
        elif isinstance(event, OpenSubflow):
            self._open_subflow(c, event)
        elif isinstance(event, CloseSubflow):
            self._close_subflow(c, event.subflow, event.reset)
        elif isinstance(event, ReleaseAppSyn):
            self.dp.release_syn(c.leg)
        elif isinstance(event, RefuseApp):
            self.dp.refuse_syn(c.leg, event.icmp_code)
        elif isinstance(event, ShutdownSubflow):
            s = c.socks.get(event.subflow)
            if s is not None:
                _shutdown(s)
        elif isinstance(event, Closed):
            self._close(c, event)
            return True
        return False

    def _open_subflow(self, c: ConnIO, ev: OpenSubflow) -> None:
        if ev.path >= len(self.dp.paths) or not self.dp.paths[ev.path].usable:
            c.conn.subflow_open_failed(ev.path, ev.remote_id)
            return
        dst = ev.addr if ev.addr is not None else c.leg.dst
        port = ev.port if ev.port is not None else c.leg.dst_port
        got = self.subflows.open(c.conn, ev.path, dst, port, ev.remote_id)
        if got is None:
            return
        sf, s = got
        c.attach_subflow(sf, s, lambda e: self._on_subflow(c, sf, e))
        self.loop.watch(s.fileno(), WRITE, c.handlers[sf])

    def _close_subflow(self, c: ConnIO, sf: Subflow, reset: bool) -> None:
        """One subflow's socket closes; the connection goes on. What it holds is read first."""
        s = c.socks.pop(sf, None)
        c.handlers.pop(sf, None)
        if s is None or s.fileno() < 0:
            return
        if sf.sock_connected:
            subflowio.read_out(c.conn, sf, s)
        self.loop.forget(s.fileno())
        subflowio.close(s, reset)

    def path_changed(self, path: int) -> None:
        """Path `path` went, came back or changed role: every connection hears it; before a path
        goes, its subflows are read out."""
        now = time.monotonic()
        for c in list(self.by_id.values()):
            if c.finished:
                continue
            conn = c.conn
            for sf, s in list(c.socks.items()):
                if sf.path == path and sf.sock_connected and not sf.closed:
                    subflowio.read_out(conn, sf, s)
            conn.path_changed(path, now)
            self.service(c)

    def _update_interest(self, c: ConnIO) -> None:
        conn = c.conn
        if c.app is not None:
            ev = READ if conn.wants_app_read() else 0
            if c.app_out or (conn.app_pending() and not conn.app_shut):
                ev |= WRITE
            if not conn.app_shut and not c.app_hung_up:
                ev |= ERROR     # the app may still reset its leg: we must hear it (MP_FASTCLOSE)
            self.loop.watch(c.app.fileno(), ev, c.on_app)
        for sf, s in c.socks.items():
            if sf.closed:
                continue
            if not sf.sock_connected:
                ev = WRITE      # connecting: writable when the handshake ends
            elif not sf.established:
                ev = 0          # a join waiting for the peer's fourth ACK (the datapath sees it)
            else:
                ev = (READ if conn.wants_subflow_read(sf) else 0) | (WRITE if conn.wants_write(sf) else 0)
            self.loop.watch(s.fileno(), ev, c.handlers[sf])
        self.loop.call_at(c.timer_key, conn.get_timer(), c.on_timer)

    # ------------------------------------------------------------ the end of a connection

    def _close(self, c: ConnIO, event: Closed) -> None:
        conn = c.conn
        if not event.reset:
            # Each subflow closes once the peer's FIN is in: the TIME_WAIT is the peer's, so the
            # 4-tuple can be used again at once (docs/datapath.md, "Subflow ports").
            now = time.monotonic()
            for s in c.socks.values():
                self.subflows.retire(self.loop, s, now)
            c.socks.clear()
        c.close_sockets(self.loop, reset=event.reset)
        self.loop.cancel(c.timer_key, c.drain_key)
        # NAT entries stay while the last FIN/ACKs (or RST) may pass; a connection that never
        # reached its peer has nothing in flight.
        linger = LINGER if conn.mode is not None else 0.0
        c.leg.expire_at(time.monotonic() + linger)
        self.loop.call_at(c.expire_key, c.leg.expires, lambda now: self._forget(c))
        if event.reason:
            log.info("conn %d to %s: %s", conn.id, c.leg.dst_text, event.reason)

    def _forget(self, c: ConnIO | None) -> None:
        if c is None or self.by_id.get(c.conn.id) is not c:
            return
        if not c.finished:
            c.close_sockets(self.loop, reset=True)
        conn = c.conn
        self.loop.cancel(c.timer_key, c.drain_key, c.expire_key)
        self.legs.remove(conn)
        for sf in conn.subflows:
            self.subflows.forget(sf)
        self.tokens.remove(conn)
        del self.by_id[conn.id]

    def abort_all(self, reason: str) -> None:
        """Reset every live connection (the app and the peer are told): mptun is going down."""
        for c in list(self.by_id.values()):
            if c.finished:
                continue        # its sockets are closed already; only its NAT entries linger
            try:
                if c.leg.holding_syn:
                    self.dp.refuse_syn(c.leg)    # the app's SYN is still held: a RST, as from its destination
                c.conn.abort(reason)
                self._carry_out_all(c)
                if not c.finished:
                    c.close_sockets(self.loop, reset=True)
            except Exception:
                log.exception("shutdown: conn %d", c.conn.id)
                c.close_sockets(self.loop, reset=True)

    def describe(self) -> list[dict]:
        out = []
        for c in self.by_id.values():
            d = c.conn.describe()
            d["dst"] = c.leg.dst_text
            d["app_port"] = c.leg.app_port
            out.append(d)
        return out


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass

