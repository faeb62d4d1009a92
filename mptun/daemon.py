"""The mptun daemon: process lifecycle and wiring. Applies the network configuration, runs the event loop until SIGTERM.

One process per TUN. `python -m mptun.daemon --config JSON --run-dir DIR` is what `mptun up`
starts; it reports "ready" or "error: <one line>" on --ready-fd. On SIGTERM it resets every live
connection and undoes its configuration itself; after SIGKILL `mptun down` does (netcfg's journal).
The parts it wires together are in mptun/io (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from ipaddress import IPv4Address

from mptun import netcfg
from mptun.core import pm
from mptun.core import scheduler as _sched
from mptun.core.connection import Connection
from mptun.core.mib import Counters, meaning
from mptun.io.connio import Connections
from mptun.io.control import AcceptGuard, ControlServer
from mptun.io.datapath import Datapath
from mptun.io.loop import READ, EventLoop
from mptun.io.pathmon import PathMonitor
from mptun.io.paths import PathIO, paths_from_applied
from mptun.io.subflows import SubflowSockets
from mptun.nat.appleg import AppLegTable

log = logging.getLogger("mptun")

# At shutdown the datapath keeps running this long at most, so the resets reach the apps and peers.
DRAIN_TIME = 0.2
DRAIN_QUIET = 0.05
# TUN batches per wakeup, so sockets get their turn.
TUN_BATCHES_PER_WAKEUP = 16
ACCEPTS_PER_WAKEUP = 256


def run_paths(run_dir: str, tun: str) -> dict[str, str]:
    return {k: os.path.join(run_dir, f"{tun}.{k}") for k in ("pid", "sock", "log")}


class Daemon:
    def __init__(self, cfg: netcfg.NetConfig, run_dir: str, *, checksums: bool = False,
                 scheduler: str = _sched.DEFAULT, backup: tuple[str, ...] = ()):
        self.cfg = cfg
        self.run_dir = run_dir
        self.files = run_paths(run_dir, cfg.tun_name)
        self.checksums = checksums
        self.scheduler = scheduler
        self.backup = set(backup)
        self.path_table: pm.PathTable | None = None
        self.monitor: PathMonitor | None = None
        self.counters = Counters()
        self.loop = EventLoop(self.counters)
        self.legs = AppLegTable(cfg.layout.fake_block)
        self.applied: netcfg.Applied | None = None
        self.paths: list[PathIO] = []
        self.listener: socket.socket | None = None
        self.control: ControlServer | None = None
        self.dp: Datapath | None = None
        self.conns: Connections | None = None
        self._next_id = 1
        self.started = time.time()

    def stop(self) -> None:
        self.loop.stop()

    # ------------------------------------------------------------ setup and teardown

    def setup(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        # The pid before any configuration: a `down` meanwhile finds this process and signals it.
        self._write_pid()
        try:
            self.applied = netcfg.up(self.cfg, journal_dir=self.run_dir)
        except BaseException:
            self._remove_pid()
            raise
        try:
            self._wire()
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

    def _wire(self) -> None:
        cfg, applied = self.cfg, self.applied
        layout = applied.layout
        self.paths = paths_from_applied(applied, vnet=applied.tun.vnet_hdr_size > 0)
        for p in self.paths:
            p.set_role(p.ifname in self.backup)
        self.path_table = pm.PathTable(pm.PathState(p.usable, p.backup) for p in self.paths)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((str(layout.listener_addr), 0))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.listener_port = self.listener.getsockname()[1]
        self._listener_guard = AcceptGuard(self.loop, "listener")
        subflows = SubflowSockets(self.paths, cfg.subflow_ports, cfg.fwmark, self.counters)
        self.dp = Datapath(applied.tun.fd, applied.tun.vnet_hdr_size, layout.tun_addr, layout.fake_block,
                           self.listener_port, self.paths, self.legs, subflows, self.counters, self._on_app_syn,
                           option_headroom=cfg.option_headroom)
        self.conns = Connections(self.loop, self.dp, self.legs, subflows, self.counters, self._new_connection)
        self.control = ControlServer(self.loop, self.files["sock"], {"status": self.status, "set": self.set_role})
        self.monitor = PathMonitor(applied, self.paths, self._on_path_change, self.loop)
        self.loop.watch(self.monitor.fileno(), READ, lambda ev: self.monitor.on_readable())
        self.loop.watch(self.dp.fileno(), READ, self._on_tun)
        self.loop.watch(self.listener.fileno(), READ, self._on_listener)
        self.loop.after_io = self.conns.service_dirty
        log.info("up on %s: tun %s, listener %s:%d, pid %d", ", ".join(cfg.interfaces), cfg.tun_name,
                 layout.listener_addr, self.listener_port, os.getpid())

    def _close_all(self) -> None:
        """Reset every live connection (the app and the peer are told), then close the rest."""
        try:
            if self.conns is not None:
                self.conns.abort_all("aborted_at_shutdown")
                self._drain_tun(DRAIN_TIME)
        finally:
            if self.monitor is not None:
                self.monitor.close()
            for p in self.paths:
                p.close()
            if self.listener is not None:
                self.listener.close()
            if self.control is not None:
                self.control.close()

    def _drain_tun(self, limit: float) -> None:
        """Translate and send what closing the sockets made (RSTs, MP_FASTCLOSE), bounded in time."""
        poller = select.poll()
        poller.register(self.dp.fileno(), select.POLLIN)
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not poller.poll(min(left, DRAIN_QUIET) * 1000):
                return      # quiet: the TUN is drained
            try:
                self.dp.poll()
            except Exception:
                log.exception("shutdown: datapath")
                return

    def teardown(self) -> None:
        try:
            self._close_all()
            try:
                os.unlink(self.files["pid"])
            except FileNotFoundError:
                pass
        finally:
            if self.applied is not None:
                for n in self.applied.down():
                    log.info("down: %s", n)
            log.info("down; counters: %s", json.dumps(self.counters.snapshot()))

    # ------------------------------------------------------------ wiring

    def run(self) -> None:
        self.loop.wake_on_signals()
        self.loop.run()

    def _on_tun(self, ev: int) -> None:
        for _ in range(TUN_BATCHES_PER_WAKEUP):
            if self.dp.poll() < 64:
                break

    def _on_listener(self, ev: int) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                s, (fip, fport) = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self._listener_guard.failed(self.listener, e, self._on_listener, time.monotonic())
                return
            self.conns.on_accept(s, socket.inet_aton(fip), fport)

    def _on_app_syn(self, app_port: int, dst: bytes, dst_port: int, syn: bytes) -> None:
        self.conns.on_app_syn(app_port, dst, dst_port, syn)

    def _on_path_change(self, index: int, usable: bool) -> None:
        p = self.paths[index]
        log.info("path %s: %s", p.ifname, f"usable, {IPv4Address(p.addr)}" if usable else "unusable")
        self.path_table.set_usable(index, usable)
        self.dp.refresh_paths()
        self.conns.path_changed(index)

    def set_role(self, ifname: str, role: str) -> dict:
        """`mptun set IFACE backup|regular`: the live connections send MP_PRIO on its subflows."""
        if role not in ("backup", "regular"):
            raise ValueError(f"role must be backup or regular, not {role!r}")
        for p in self.paths:
            if p.ifname == ifname:
                break
        else:
            raise ValueError(f"{ifname} is not one of mptun's interfaces ({', '.join(x.ifname for x in self.paths)})")
        p.set_role(role == "backup")
        if self.path_table.set_backup(p.index, p.backup):
            log.info("path %s: %s", ifname, role)
            self.conns.path_changed(p.index)
        return {"interface": ifname, "role": role, "connections": len(self.conns.by_id)}

    def _new_connection(self, now: float) -> Connection:
        conn = Connection(self._next_id, self.conns.tokens.new_key(os.urandom), now, self.counters,
                          checksums=self.checksums, scheduler=_sched.create(self.scheduler),
                          path_manager=pm.FullMesh(self.path_table),
                          rand32=lambda: int.from_bytes(os.urandom(4), "big"))
        self._next_id += 1
        return conn

    def status(self) -> dict:
        snapshot = self.counters.snapshot()
        return {
            "pid": os.getpid(), "tun": self.cfg.tun_name, "interfaces": list(self.cfg.interfaces),
            "scheduler": self.scheduler,
            "paths": [{"name": p.ifname, "addr": str(IPv4Address(p.addr)) if p.addr else None, "usable": p.usable,
                       "role": "backup" if p.backup else "regular"} for p in self.paths],
            "uptime": time.time() - self.started, "listener_port": self.listener_port,
            "connections": self.conns.describe(), "counters": snapshot,
            "rewrite": self.dp.rewrite_counters(),
            "reasons": {k: m for k in snapshot if (m := meaning(k)) is not None},
        }


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
    p.add_argument("--scheduler", default=_sched.DEFAULT, choices=sorted(_sched.SCHEDULERS))
    p.add_argument("--backup", action="append", default=[], metavar="IFACE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mptun[%(process)d] %(levelname)s %(message)s")
    _raise_fd_limit()
    stop = {"flag": False}
    daemon: Daemon | None = None

    def on_signal(signum, frame):
        stop["flag"] = True
        if daemon is not None:
            daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        cfg = netcfg.NetConfig(**json.loads(args.config))
        daemon = Daemon(cfg, args.run_dir, checksums=args.checksums, scheduler=args.scheduler,
                        backup=tuple(args.backup))
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
