"""The mptun daemon: applies the network configuration, then runs the event loop until SIGTERM.

One process per TUN. The loop waits on the TUN fd (packets to rewrite), the local listener (app
legs), the app and subflow sockets (bytes to move between them through mptun.core), and the
control socket (`mptun status`). `python -m mptun.daemon --config JSON --run-dir DIR` is what
`mptun up` starts; it reports "ready" or "error: <one line>" on --ready-fd. On SIGTERM it undoes
its configuration itself; after SIGKILL `mptun down` does (netcfg's journal).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from ipaddress import IPv4Address

from mptun import netcfg
from mptun.core.connection import (ABORTED, CLOSED, CONNECTING, ESTABLISHED, FALLBACK, MPTCP,
                                   TCP_ACK, TCP_RST, Connection, Subflow)
from mptun.core.counters import REASONS, Counters
from mptun.core.flows import AppLeg, FlowTable
from mptun.io.datapath import Datapath, PathIO
from mptun.wire import crypto

log = logging.getLogger("mptun")

IO_CHUNK = 256 * 1024
# NAT entries of a finished connection stay this long, so the last FIN/ACKs are translated.
LINGER = 30.0
TICK = 0.05
# The kernel socket keeps at most this much unsent: little data is stranded in a dead subflow.
NOTSENT_LOWAT = 1 << 20
CONNECT_TIMEOUT = 140.0     # the kernel gives up on a SYN after ~127 s (tcp_syn_retries 6)
APP_ACCEPT_TIMEOUT = 20.0   # the app's handshake with the listener takes one local round trip
TCP_NOTSENT_LOWAT = 25
SO_MARK = 36
# At shutdown the datapath keeps running this long at most, so the resets reach the apps and peers.
DRAIN_TIME = 0.2
DRAIN_QUIET = 0.05
# accept() failing (the fd limit): the socket is not watched for this long; one warning per period.
ACCEPT_PAUSE = 0.1
ACCEPT_WARN_EVERY = 10.0


def run_paths(run_dir: str, tun: str) -> dict[str, str]:
    return {k: os.path.join(run_dir, f"{tun}.{k}") for k in ("pid", "sock", "log")}


class ConnIO:
    """The sockets of one connection and what waits to be written to the app."""

    __slots__ = ("conn", "leg", "app", "socks", "app_out", "app_want_write", "sf_shut", "events", "finished",
                 "connected_at")

    def __init__(self, conn: Connection, leg: AppLeg):
        self.conn = conn
        self.leg = leg
        self.app: socket.socket | None = None
        self.socks: dict[Subflow, socket.socket] = {}
        self.app_out = b""
        self.app_want_write = False
        self.sf_shut = False
        self.events: dict[int, int] = {}     # fd -> registered selector events
        self.finished = False
        self.connected_at: float | None = None


class Daemon:
    def __init__(self, cfg: netcfg.NetConfig, run_dir: str, *, checksums: bool = False):
        self.cfg = cfg
        self.run_dir = run_dir
        self.files = run_paths(run_dir, cfg.tun_name)
        self.checksums = checksums
        self.counters = Counters()
        self.flows = FlowTable(cfg.layout.fake_block)
        self.sel = selectors.EpollSelector()
        self.conns: dict[int, ConnIO] = {}
        self.by_fd: dict[int, tuple] = {}
        self.stopping = False
        self.applied: netcfg.Applied | None = None
        self.paths: list[PathIO] = []
        self._next_id = 1
        self._tokens: set[int] = set()
        lo, hi = cfg.subflow_ports
        self._next_port = [lo] * len(cfg.interfaces)
        self._last_tick = 0.0
        self._last_sweep = 0.0
        self._paused: dict[str, float] = {}     # "listener"/"control" -> when to watch it again
        self._last_accept_warning = -ACCEPT_WARN_EVERY
        self.started = time.time()

    # ------------------------------------------------------------ setup and teardown

    def setup(self) -> None:
        cfg = self.cfg
        os.makedirs(self.run_dir, exist_ok=True)
        # The pid before any configuration: a `down` meanwhile finds this process and signals it.
        self._write_pid()
        try:
            self.applied = netcfg.up(cfg, journal_dir=self.run_dir)
        except BaseException:
            self._remove_pid()
            raise
        try:
            self._setup_rest()
        except BaseException:
            try:
                self._close_all()
            finally:
                try:
                    self.applied.down()
                finally:
                    self._remove_pid()
            raise

    def _write_pid(self) -> None:
        tmp = f"{self.files['pid']}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.files["pid"])

    def _remove_pid(self) -> None:
        try:
            with open(self.files["pid"]) as f:
                if f.read().strip() != str(os.getpid()):
                    return
            os.unlink(self.files["pid"])
        except (OSError, ValueError):
            pass

    def _setup_rest(self) -> None:
        cfg, applied = self.cfg, self.applied
        layout = applied.layout
        for i, iface in enumerate(applied.interfaces):
            mac = netcfg.resolve_gateway_mac(iface)
            eth = b""
            if mac:
                eth = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex(iface.mac.replace(":", ""))
            p = PathIO(index=i, ifname=iface.name, ifindex=iface.index, addr=iface.addr.ip.packed,
                       sub_addr=layout.subflow_addr(i).packed, eth=eth)
            p.open(vnet=applied.tun.vnet_hdr_size > 0)
            self.paths.append(p)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((str(layout.listener_addr), 0))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.listener_port = self.listener.getsockname()[1]
        self.dp = Datapath(applied.tun.fd, applied.tun.vnet_hdr_size, layout.tun_addr, layout.fake_block,
                           self.listener_port, self.paths, cfg.subflow_ports, self.flows, self.counters,
                           self._new_connection)
        try:
            os.unlink(self.files["sock"])
        except FileNotFoundError:
            pass
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(self.files["sock"])
        os.chmod(self.files["sock"], 0o600)
        self.control.listen(16)
        self.control.setblocking(False)
        self.sel.register(applied.tun.fd, selectors.EVENT_READ, ("tun", None))
        self.sel.register(self.listener, selectors.EVENT_READ, ("listener", None))
        self.sel.register(self.control, selectors.EVENT_READ, ("control", None))
        log.info("up on %s: tun %s, listener %s:%d, pid %d", ", ".join(cfg.interfaces), cfg.tun_name,
                 layout.listener_addr, self.listener_port, os.getpid())

    def _close_all(self) -> None:
        """Reset every live connection (the app and the peer are told), then close the rest."""
        try:
            self._abort_all()
        finally:
            for p in self.paths:
                p.close()
            for name in ("listener", "control"):
                s = getattr(self, name, None)
                if s is not None:
                    s.close()

    def _abort_all(self) -> None:
        dp = getattr(self, "dp", None)
        for c in list(self.conns.values()):
            if c.finished:
                continue        # its sockets are closed already; only its NAT entries linger
            try:
                leg = c.leg
                if leg.syn is not None and dp is not None:
                    # The app's SYN is still held: it gets a reset, as from its destination.
                    syn_seq = _syn_seq(leg.syn, dp.vnet)
                    if syn_seq is not None:
                        dp.inject_to_app(leg, 0, (syn_seq + 1) & 0xFFFFFFFF, TCP_RST | TCP_ACK)
                c.conn.abort("aborted_at_shutdown")
                self._teardown(c, reset=True)
            except Exception:
                log.exception("shutdown: conn %d", c.conn.id)
                c.finished = True
        if dp is not None:
            self._drain_tun(DRAIN_TIME)

    def _drain_tun(self, limit: float) -> None:
        """Translate and send what closing the sockets made (RSTs, MP_FASTCLOSE), bounded in time."""
        import select

        poller = select.poll()
        poller.register(self.dp.fd, select.POLLIN)
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready = poller.poll(min(left, DRAIN_QUIET) * 1000)
            if not ready:
                return      # quiet: the TUN is drained
            try:
                self.dp.poll()
            except Exception:
                log.exception("shutdown: datapath")
                return

    def teardown(self) -> None:
        try:
            self._close_all()
            for k in ("sock", "pid"):
                try:
                    os.unlink(self.files[k])
                except FileNotFoundError:
                    pass
        finally:
            if self.applied is not None:
                notes = self.applied.down()
                for n in notes:
                    log.info("down: %s", n)
            log.info("down; counters: %s", json.dumps(self.counters.snapshot()))

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for key, ev in self.sel.select(TICK):
                kind, obj = key.data
                try:
                    if kind == "tun":
                        self._on_tun()
                    elif kind == "app":
                        self._on_app(obj, ev)
                    elif kind == "sf":
                        self._on_subflow(obj[0], obj[1], ev)
                    elif kind == "listener":
                        self._on_accept()
                    elif kind == "control":
                        self._on_control()
                except Exception:
                    log.exception("while handling %s", kind)
                    self.counters["internal_errors"] += 1
            self._service_dirty()
            now = time.monotonic()
            if now - self._last_tick >= TICK:
                self._last_tick = now
                self._timers(now)

    def _on_tun(self) -> None:
        # A bounded number of batches per wakeup, so sockets get their turn.
        for _ in range(16):
            if self.dp.poll() < 64:
                break

    def _service_dirty(self) -> None:
        dirty = self.dp.dirty
        while dirty:
            conn = dirty.pop()
            c = self.conns.get(conn.id)
            if c is not None and not c.finished:
                self._service(c)

    def _timers(self, now: float) -> None:
        if self._paused:
            self._resume_paused(now)
        for c in list(self.conns.values()):
            conn = c.conn
            if c.finished:
                if c.leg.expires is not None and now >= c.leg.expires:
                    self.flows.remove(conn)
                    del self.conns[conn.id]
                    self._tokens.discard(conn.token)
                continue
            t = conn.next_timer()
            if t is not None and now >= t:
                self._service(c)
            elif conn.state == CONNECTING and now - conn.created > CONNECT_TIMEOUT:
                conn.abort("connect_timeouts")
                self._service(c)
            elif c.app is None and c.connected_at is not None and now - c.connected_at > APP_ACCEPT_TIMEOUT:
                # The app gave up while its SYN was held (its socket is gone, so the listener
                # never accepts): nobody will ever use this MPTCP connection.
                conn.abort("app_gone")
                self._service(c)

    # ------------------------------------------------------------ new connections

    def _new_connection(self, app_port: int, dst: bytes, dst_port: int, syn: bytes) -> AppLeg | None:
        """The app's first SYN: an MPTCP connection with subflow 0 towards its destination."""
        while True:
            key = crypto.new_key(os.urandom)
            token = crypto.key_token(key)
            if token not in self._tokens:   # RFC 8684 3.1: the token is unique among our connections
                break
        conn = Connection(self._next_id, key, time.monotonic(), self.counters, checksums=self.checksums)
        self._next_id += 1
        self.counters["connections"] += 1
        leg = self.flows.add_app(conn, app_port, dst, dst_port)
        leg.syn = syn
        c = ConnIO(conn, leg)
        self.conns[conn.id] = c
        self._tokens.add(token)
        if not self._open_subflow(c, 0):
            conn.abort("connect_errors")
            self._teardown(c)
        return leg

    def _open_subflow(self, c: ConnIO, path: int) -> bool:
        p = self.paths[path]
        lo, hi = self.cfg.subflow_ports
        span = hi - lo + 1
        for _ in range(span):
            port = self._next_port[path]
            self._next_port[path] = lo if port >= hi else port + 1
            if self.flows.port_in_use(path, port):
                continue
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as e:    # EMFILE at the fd limit: this connection fails, not the packet loop
                log.warning("subflow socket: %s", e)
                return False
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, self.cfg.fwmark)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
                s.bind((str(IPv4Address(p.sub_addr)), port))
            except OSError as e:
                s.close()
                if e.errno == errno.EADDRINUSE:
                    continue
                log.warning("subflow socket: %s", e)
                return False
            s.setblocking(False)
            sf = c.conn.new_subflow(path, port)
            # Known to the flow table before connect(): the kernel sends the SYN right away.
            self.flows.add_subflow(sf)
            err = s.connect_ex((str(IPv4Address(c.leg.dst)), c.leg.dst_port))
            if err not in (0, errno.EINPROGRESS):
                self.flows.by_subflow.pop((path, port), None)
                c.conn.subflows.remove(sf)
                s.close()
                if err == errno.EADDRNOTAVAIL:
                    continue    # that 4-tuple is still in TIME_WAIT: another port
                log.warning("subflow connect: %s", os.strerror(err))
                return False
            c.socks[sf] = s
            self.by_fd[s.fileno()] = ("sf", (c, sf))
            self._set_events(c, s, selectors.EVENT_WRITE, ("sf", (c, sf)))
            return True
        log.warning("no free subflow port on path %d", path)
        return False

    def _connected(self, c: ConnIO, sf: Subflow, s: socket.socket) -> None:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        conn = c.conn
        if err == 0:
            sf.established = True
            if conn.state == CONNECTING:
                conn.state = ESTABLISHED
                if conn.mode is None:
                    # The SYN/ACK went past the datapath without being seen (cannot happen
                    # unless the capture is broken): plain TCP is the safe reading.
                    conn.mode = FALLBACK
                    self.counters["fallback_unseen_synack"] += 1
                if conn.mode == FALLBACK:
                    log.info("conn %d to %s: fallback to TCP", conn.id, c.leg.dst_text)
                # The app's SYN goes on only now, so a refused or unreachable destination
                # looks to the app as it would without mptun.
                self.dp.release_syn(c.leg)
                c.connected_at = time.monotonic()
            self._service(c)
            return
        if conn.state == CONNECTING:
            leg = c.leg
            if err == errno.ECONNREFUSED:
                self.counters["refused"] += 1
                syn_seq = _syn_seq(leg.syn, self.dp.vnet)
                if syn_seq is not None:
                    self.dp.inject_to_app(leg, 0, (syn_seq + 1) & 0xFFFFFFFF, TCP_RST | TCP_ACK)
            elif err == errno.ETIMEDOUT:
                self.counters["connect_timeouts"] += 1
            else:
                self.counters["connect_errors"] += 1
                log.info("conn %d to %s: %s", conn.id, leg.dst_text, os.strerror(err))
            conn.state = ABORTED
            conn.error = errno.errorcode.get(err, str(err))
            self._teardown(c, reset=False)
        else:
            conn.abort("resets_from_peer")
            self._service(c)

    def _on_accept(self) -> None:
        for _ in range(256):
            try:
                s, (fip, fport) = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self._accept_failed("listener", e)
                return
            leg = self.flows.by_fake.get((socket.inet_aton(fip), fport))
            c = self.conns.get(leg.conn.id) if leg is not None else None
            if c is None or c.app is not None or c.finished:
                s.close()
                self.counters["unknown_flow"] += 1
                continue
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.app = s
            self._service(c)

    def _accept_failed(self, name: str, e: OSError) -> None:
        """accept() failed (EMFILE at the fd limit, ...): the connection stays queued in the kernel,
        so the socket would stay readable. Stop watching it for a while instead of spinning."""
        self.counters["accept_errors"] += 1
        now = time.monotonic()
        if now - self._last_accept_warning >= ACCEPT_WARN_EVERY:
            self._last_accept_warning = now
            log.warning("accept on the %s: %s (pausing it for %.0f ms)", name, e.strerror or e,
                        ACCEPT_PAUSE * 1000)
        if name not in self._paused:
            self.sel.unregister(getattr(self, name))
        self._paused[name] = now + ACCEPT_PAUSE

    def _resume_paused(self, now: float) -> None:
        for name, until in list(self._paused.items()):
            if now >= until:
                del self._paused[name]
                self.sel.register(getattr(self, name), selectors.EVENT_READ, (name, None))

    # ------------------------------------------------------------ moving bytes

    def _on_app(self, c: ConnIO, ev: int) -> None:
        conn = c.conn
        if ev & selectors.EVENT_READ and not conn.app_eof and conn.state not in (ABORTED, CLOSED):
            for _ in range(8):
                room = conn.app_room()
                if room <= 0:
                    break
                try:
                    data = c.app.recv(min(room, IO_CHUNK))
                except BlockingIOError:
                    break
                except OSError:
                    conn.abort("resets_from_app")
                    break
                if not data:
                    conn.on_app_eof()
                    break
                conn.app_data(data)
                if len(data) < min(room, IO_CHUNK):
                    break
        self._service(c)

    def _on_subflow(self, c: ConnIO, sf: Subflow, ev: int) -> None:
        s = c.socks.get(sf)
        if s is None:
            return
        if not sf.established:
            if ev & (selectors.EVENT_WRITE | selectors.EVENT_READ):
                self._connected(c, sf, s)
            return
        conn = c.conn
        if ev & selectors.EVENT_READ and not sf.eof and conn.state != ABORTED:
            for _ in range(8):
                room = conn.subflow_room()
                if room <= 0:
                    break
                try:
                    data = s.recv(min(room, IO_CHUNK))
                except BlockingIOError:
                    break
                except OSError:
                    conn.abort("resets_from_peer")
                    break
                if not data:
                    conn.on_subflow_eof(sf)
                    break
                conn.subflow_data(sf, data)
                if len(data) < min(room, IO_CHUNK):
                    break
        self._service(c)

    def _service(self, c: ConnIO) -> None:
        """Move what can move for one connection, send what mptun must send, then set interests."""
        if c.finished:
            return
        conn = c.conn
        if conn.state == ABORTED:
            self._teardown(c, reset=True)
            return
        if conn.state == CONNECTING:
            return
        for sf, s in c.socks.items():
            if not sf.established or sf.closed:
                continue
            while True:
                chunk = conn.next_chunk(sf)
                if chunk is None:
                    break
                try:
                    n = s.send(chunk, socket.MSG_EOR)
                except BlockingIOError:
                    break
                except OSError:
                    conn.abort("resets_from_peer")
                    self._teardown(c, reset=True)
                    return
                conn.chunk_written(sf, n)
                if n < len(chunk):
                    break
        if conn.mode == FALLBACK and conn.app_eof and conn.all_written() and not c.sf_shut:
            c.sf_shut = True
            for s in c.socks.values():
                _shutdown(s)
        if c.app is not None:
            self._flush_app(c)
            if conn.state == ABORTED:
                self._teardown(c, reset=True)
                return
            if not c.app_out and conn.app_should_get_fin():
                conn.app_shut = True
                _shutdown(c.app)
        now = time.monotonic()
        for seg in conn.control_segments(now):
            self.dp.send_control(seg, self.paths[seg.subflow.path], c.leg.dst, c.leg.dst_port)
        if conn.state == ABORTED:
            self._teardown(c, reset=True)
            return
        if conn.done():
            self._finish(c)
            return
        self._update_events(c)

    def _flush_app(self, c: ConnIO) -> None:
        conn = c.conn
        for _ in range(16):
            if not c.app_out:
                if not conn.app_pending():
                    return
                c.app_out = conn.take_for_app(IO_CHUNK)
            try:
                n = c.app.send(c.app_out)
            except BlockingIOError:
                return
            except OSError:
                conn.abort("resets_from_app")
                return
            c.app_out = c.app_out[n:]
            if c.app_out:
                return

    def _update_events(self, c: ConnIO) -> None:
        conn = c.conn
        if c.app is not None:
            ev = 0
            if not conn.app_eof and conn.app_room() > 0:
                ev |= selectors.EVENT_READ
            if c.app_out or (conn.app_pending() and not conn.app_shut):
                ev |= selectors.EVENT_WRITE
            self._set_events(c, c.app, ev, ("app", c))
        for sf, s in c.socks.items():
            if sf.closed:
                continue
            ev = 0
            if not sf.eof and conn.subflow_room() > 0:
                ev |= selectors.EVENT_READ
            if sf.chunk is not None or (conn.mode == MPTCP and conn.snd_nxt < conn.snd_end
                                         and (conn.peer_wnd_end is None or conn.snd_nxt < conn.peer_wnd_end)) \
                    or (conn.mode == FALLBACK and conn.send_buf):
                ev |= selectors.EVENT_WRITE
            self._set_events(c, s, ev, ("sf", (c, sf)))

    def _set_events(self, c: ConnIO, s: socket.socket, ev: int, data) -> None:
        fd = s.fileno()
        old = c.events.get(fd, 0)
        if ev == old:
            return
        if old == 0:
            self.sel.register(fd, ev, data)
        elif ev == 0:
            self.sel.unregister(fd)
        else:
            self.sel.modify(fd, ev, data)
        if ev:
            c.events[fd] = ev
        else:
            c.events.pop(fd, None)

    # ------------------------------------------------------------ the end of a connection

    def _finish(self, c: ConnIO) -> None:
        """Both directions done: close the sockets gracefully; the NAT entries linger."""
        c.conn.state = CLOSED
        self._close_sockets(c, reset=False)
        c.finished = True
        c.leg.expires = time.monotonic() + LINGER

    def _teardown(self, c: ConnIO, reset: bool = True) -> None:
        self._close_sockets(c, reset=reset)
        c.finished = True
        c.leg.expires = time.monotonic() + (LINGER if c.conn.mode is not None else 0.0)
        if c.conn.error:
            log.info("conn %d to %s: %s", c.conn.id, c.leg.dst_text, c.conn.error)

    def _close_sockets(self, c: ConnIO, reset: bool) -> None:
        for s in [c.app, *c.socks.values()]:
            if s is None:
                continue
            fd = s.fileno()
            if fd < 0:
                continue    # closed already (a finished connection)
            if fd in c.events:
                self.sel.unregister(fd)
                del c.events[fd]
            self.by_fd.pop(fd, None)
            if reset:
                # SO_LINGER 0: close sends a RST; on a subflow the datapath adds MP_FASTCLOSE.
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            s.close()
        for sf in c.socks:
            sf.closed = True
        c.app = None

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        conns = []
        for c in self.conns.values():
            d = c.conn.describe()
            d["dst"] = c.leg.dst_text
            d["app_port"] = c.leg.app_port
            conns.append(d)
        return {
            "pid": os.getpid(), "tun": self.cfg.tun_name, "interfaces": list(self.cfg.interfaces),
            "paths": [{"name": p.ifname, "addr": str(IPv4Address(p.addr))} for p in self.paths],
            "uptime": time.time() - self.started, "listener_port": self.listener_port,
            "connections": conns, "counters": self.counters.snapshot(),
            "rewrite": {k: v for k, v in self.dp.batch.counters().items() if v},
            "reasons": {k: REASONS[k] for k in self.counters.snapshot() if k in REASONS},
        }

    def _on_control(self) -> None:
        try:
            s, _ = self.control.accept()
        except BlockingIOError:
            return
        except OSError as e:
            self._accept_failed("control", e)
            return
        with s:
            s.settimeout(1.0)
            try:
                req = s.recv(4096).decode(errors="replace").strip()
                if req == "status":
                    reply = self.status()
                else:
                    reply = {"error": f"unknown request {req!r}"}
                s.sendall(json.dumps(reply).encode() + b"\n")
            except OSError as e:
                log.warning("control: %s", e)


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _syn_seq(syn: bytes | None, vnet: int) -> int | None:
    if not syn or len(syn) < vnet + 28:
        return None
    ihl = (syn[vnet] & 0x0F) * 4
    return struct.unpack_from("!I", syn, vnet + ihl + 4)[0]


# ---------------------------------------------------------------- process entry

def _raise_fd_limit() -> None:
    """Three descriptors per connection and more: the soft limit goes up to the hard one."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    except (ValueError, OSError) as e:
        log.warning("cannot raise the open file limit: %s", e)


def _ready(fd: int | None, text: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mptun.daemon")
    p.add_argument("--config", required=True, help="NetConfig fields as JSON")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--checksums", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mptun[%(process)d] %(levelname)s %(message)s")
    _raise_fd_limit()
    stop = {"flag": False}
    daemon: Daemon | None = None

    def on_signal(signum, frame):
        stop["flag"] = True
        if daemon is not None:
            daemon.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        cfg = netcfg.NetConfig(**json.loads(args.config))
        daemon = Daemon(cfg, args.run_dir, checksums=args.checksums)
        daemon.setup()
    except netcfg.NetcfgError as e:
        _ready(args.ready_fd, f"error: {e}")
        return 1
    except Exception as e:  # one line for the user; the traceback goes to the log
        log.exception("setup failed")
        _ready(args.ready_fd, f"error: {type(e).__name__}: {e}".splitlines()[0])
        return 1
    _ready(args.ready_fd, "ready")
    try:
        if not stop["flag"]:
            daemon.run()
    finally:
        daemon.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
