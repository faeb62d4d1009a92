"""Multipath benchmark: mptun vs the kernel's own MPTCP client vs plain TCP, on the same two-path labs.

Sections (--only): aggregation (one connection's goodput over A 50 Mbit/s 20 ms RTT + B 30 Mbit/s
80 ms RTT, both ways, every mptun scheduler), simult (the cases of the kernel selftest simult_flows.sh
against its time bound) and failover (goodput every 100 ms while path A's interface goes down and comes
back). Writes results.json and PNG plots to --out, prints a markdown table; asserts nothing. Needs root.

Each lab's client has the kernel's MPTCP configured as its users must (source routing, `ip mptcp
endpoint add <eth1 address> dev eth1 subflow`, `ip mptcp limits set` on client and server); the clients
take turns: the kernel (IPPROTO_MPTCP app socket), plain TCP, mptun (`mptun up eth0 eth1 [--scheduler
S]`, plain TCP app socket). The server is the kernel's MPTCP in the lab's server namespace. Both apps
run in this process (sockets made inside the namespaces), so arrival times are app-level at whichever
end receives, and the server's kernel is asked about every connection (MPTCP_SUBFLOW_ADDRS while it
runs, `ss -Mtni` mid-transfer).

    scripts/bench.sh [--quick] [--only aggregation,simult,failover] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from mptun.lab import Lab, PathSpec  # noqa: E402
from mptun.lab.kstats import counters_delta, group_ss_subflows, mptcp_counters, ss_mptcp  # noqa: E402
from mptun.lab.netns import LabError, run  # noqa: E402
from mptun.lab.peer import socket_in_netns  # noqa: E402
from mptun.lab.peerserver import KernelView  # noqa: E402
from mptun.lab.topology import SERVER4, new_name, path_addrs  # noqa: E402
from tests.netns.mptun_helpers import MptunRunner  # noqa: E402

SECTIONS = ("aggregation", "simult", "failover")
WANTED_SCHEDULERS = ("lowrtt", "roundrobin", "redundant", "blest")
PORT = 5800
IO_TIMEOUT = 30.0            # any socket call blocked this long fails the run (bounded everything)
CHUNK = 64 * 1024            # send granularity: a duration-based sender stops within one chunk
PAYLOAD = random.Random(8).randbytes(1 << 20)
TICK = 0.1                   # failover sampling period, seconds
HALF_RATE_WINDOW = 0.5       # failover: goodput is averaged over this long to tell "back at half rate"
MAIN_PID = os.getpid()
# Set by SIGINT/SIGTERM. The handler raises KeyboardInterrupt too, but a raise that lands in a place
# Python ignores exceptions (an at-fork hook of pyroute2's helpers) is lost: the loops check this.
STOP = threading.Event()
GOALS = {"aggregation_fraction_min": 0.95, "simult_within_bound": True, "failover_gap_s_max": 0.3,
         "failover_half_rate_s_max": 0.5, "failover_return_s_max": 1.0}

# The aggregation and failover lab; delay is one way, so RTT is twice it.
AGG_PATHS = (PathSpec.symmetric(rate_mbit=50, delay_ms=10), PathSpec.symmetric(rate_mbit=30, delay_ms=40))
# simult_flows.sh: netem "rate R delay D" on the egress of both ends of each link (so each direction
# gets rate R and one-way delay D), netem's default queue of 1000 packets, 16 MB one way while 80 KB
# go the other way, then reversed.
SIMULT_CASES = (
    ("balanced bwidth", 10, 10, 0, 0),
    ("balanced bwidth with unbalanced delay", 10, 10, 1, 25),
    ("unbalanced bwidth", 15, 5, 0, 0),
    ("unbalanced bwidth with unbalanced delay", 15, 5, 1, 25),
    ("unbalanced bwidth with opposed, unbalanced delay", 15, 5, 25, 1),
)
SIMULT_LARGE = 2 * 2048 * 4096    # the selftest's size: 16 MiB
SIMULT_SMALL = 20 * 4096          # 80 KiB
NETEM_QUEUE_BYTES = 1000 * 1500
SIMULT_SLACK_S = 0.05             # the selftest adds 50 ms more (not part of the bound reported here)
KERNEL_CONFIG = ["ip mptcp limits set subflows 2 add_addr_accepted 2  (client and server)",
                 "ip mptcp endpoint add 198.18.2.2 dev eth1 subflow  (client)",
                 "ip rule add from <eth i address> table 100+i; default route of eth i in it  (client)"]


# ---------------------------------------------------------------- one connection, both ends here

class Side:
    """One end of a connection: sends its plan (bytes, or for some seconds), receives until EOF.

    The side that sends more half-closes as soon as it is done; the other only after it has the
    peer's EOF: a DATA_FIN early in a connection keeps the kernel's path manager from adding subflows.
    """

    def __init__(self, sock: socket.socket, send_bytes: int, send_seconds: float | None, first_to_close: bool,
                 view: KernelView | None):
        self.sock = sock
        self.send_bytes = send_bytes
        self.send_seconds = send_seconds
        self.first_to_close = first_to_close
        self.view = view
        self.view_lock = threading.Lock()
        self.received = 0
        self.arrivals: list[tuple[float, int]] = []
        self.sent = 0
        self.sha_in = hashlib.sha256()
        self.sha_out = hashlib.sha256()
        self.eof = threading.Event()
        self.errors: list[str] = []

    def sample(self) -> None:
        if self.view is not None:
            with self.view_lock:
                self.view.maybe_sample()

    def send(self, t0: float) -> None:
        mem = memoryview(PAYLOAD)
        try:
            deadline = None if self.send_seconds is None else t0 + self.send_seconds
            off = 0
            while (self.sent < self.send_bytes) if deadline is None else (time.monotonic() < deadline):
                n = CHUNK if deadline is not None else min(CHUNK, self.send_bytes - self.sent)
                if off + n > len(mem):
                    off = 0
                self.sock.sendall(mem[off:off + n])
                self.sha_out.update(mem[off:off + n])
                off += n
                self.sent += n
                self.sample()
            if not self.first_to_close and not self.eof.wait(IO_TIMEOUT * 4):
                raise TimeoutError("no EOF from the peer")
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.errors.append(f"send: {type(e).__name__}: {e}")

    def recv(self) -> None:
        buf = bytearray(256 * 1024)
        mem = memoryview(buf)
        try:
            while n := self.sock.recv_into(buf):
                self.received += n
                self.arrivals.append((time.monotonic(), self.received))
                self.sha_in.update(mem[:n])
                self.sample()
        except OSError as e:
            self.errors.append(f"recv: {type(e).__name__}: {e}")
        self.eof.set()


@dataclass
class Event:
    """Something done at t0 + at during a transfer; `done_at` is when it finished (monotonic)."""

    at: float
    name: str
    action: object
    done_at: float | None = None
    result: object = None


@dataclass
class Transfer:
    """What one connection did: both sides, the events fired, the samples taken every TICK."""

    t0: float                 # just before the client's connect()
    connected: float          # connect() returned
    client: Side
    server: Side
    events: list[Event]
    samples: list[dict] = field(default_factory=list)
    error: str | None = None


class Bench:
    """One lab with a listening kernel-MPTCP server; runs connections from the three clients."""

    def __init__(self, paths: list[PathSpec]):
        self.paths = list(paths)
        self.lab = Lab(self.paths, name=new_name("mpb"), source_routing=True)
        self.listener: socket.socket | None = None
        self.mptun: MptunRunner | None = None
        self.run_dir = tempfile.mkdtemp(prefix="mptun-mpbench-")

    def __enter__(self) -> Bench:
        self.lab.up()
        try:
            self.lab.enable_kernel_mptcp()
            self.listener = socket_in_netns(self.lab.server, socket.AF_INET, mptcp=True)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((SERVER4, PORT))
            self.listener.listen(8)
            self.listener.settimeout(IO_TIMEOUT)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.mptun_down()
            if self.listener is not None:
                self.listener.close()
        finally:
            self.lab.down()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def kernel_config(self) -> dict:
        out = {}
        for where, ns in (("client", self.lab.client), ("server", self.lab.server)):
            out[where] = {"endpoints": run(ns, ["ip", "mptcp", "endpoint", "show"]).stdout.strip(),
                          "limits": run(ns, ["ip", "mptcp", "limits", "show"]).stdout.strip()}
        return out

    # -- mptun

    def mptun_up(self, scheduler: str | None) -> None:
        self.mptun_down()
        self.mptun = MptunRunner(self.lab.client, self.run_dir)
        self.mptun.up("eth0", "eth1", extra=("--scheduler", scheduler) if scheduler else ())

    def mptun_down(self, keep_log: bool = False) -> dict | None:
        """mptun's status counters just before `down` (None if it was not up), and the tail of its
        log if keep_log or if the daemon no longer answers."""
        if self.mptun is None:
            return None
        runner, self.mptun = self.mptun, None
        out: dict = {}
        try:
            out["counters"] = runner.status().get("counters")
        except Exception as e:  # the daemon died: its log says why
            out["error"], keep_log = f"status: {e}", True
        if keep_log:
            out["log_tail"] = runner.log()[-3000:]
        runner.stop()
        return out

    # -- one connection

    def transfer(self, kernel: bool, *, up_bytes: int = 0, down_bytes: int = 0, seconds: float | None = None,
                 direction: str | None = None, events: list[Event] | None = None, sample: bool = False,
                 timeout: float = 120.0) -> Transfer:
        """One connection from the client (an MPTCP socket if kernel, else plain TCP) to the server.

        Byte counts, or with `seconds` the `direction` ('up' or 'down') sends for that long. Events
        run at their time (from the connect call); with sample, every TICK the receiving side's byte
        count and both paths' counters are recorded.
        """
        if seconds is not None:
            up_s, down_s = (seconds, None) if direction == "up" else (None, seconds)
            up_first = direction == "up"
        else:
            up_s = down_s = None
            up_first = up_bytes >= down_bytes
        csock = socket_in_netns(self.lab.client, socket.AF_INET, mptcp=kernel)
        ssock = None
        try:
            csock.settimeout(IO_TIMEOUT)
            t0 = time.monotonic()
            csock.connect((SERVER4, PORT))
            connected = time.monotonic()
            ssock, _ = self.listener.accept()
            ssock.settimeout(IO_TIMEOUT)
            client = Side(csock, up_bytes, up_s, up_first, KernelView(csock) if kernel else None)
            server = Side(ssock, down_bytes, down_s, not up_first, KernelView(ssock))
            for side in (client, server):
                side.sample()
            tr = Transfer(t0, connected, client, server, sorted(events or [], key=lambda e: e.at))
            threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in (
                (client.send, (t0,)), (client.recv, ()), (server.send, (t0,)), (server.recv, ()))]
            for t in threads:
                t.start()
            receiver = server if (direction == "up" if seconds is not None else up_first) else client
            self._drive(tr, threads, receiver, sample, t0 + timeout)
            for side in (client, server):
                if side.view is not None:
                    side.view.sample()
            return tr
        finally:
            for s in (csock, ssock):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)  # wakes a thread still blocked on it
                    except OSError:
                        pass
                    s.close()

    def _drive(self, tr: Transfer, threads, receiver: Side, sample: bool, deadline: float) -> None:
        """Wait for the transfer's threads, firing its events on time and sampling every TICK."""
        key = "up_bytes" if receiver is tr.server else "down_bytes"
        pending = list(tr.events)
        next_tick = tr.t0
        while any(t.is_alive() for t in threads):
            check_stop()
            now = time.monotonic()
            if now >= deadline:
                tr.error = f"not finished after {deadline - tr.t0:.0f} s"
                break
            while pending and now >= tr.t0 + pending[0].at:
                ev = pending.pop(0)
                try:
                    ev.result = ev.action()
                except Exception as e:  # recorded: the run goes on, the figure says what broke
                    ev.result = f"error: {type(e).__name__}: {e}"
                ev.done_at = now = time.monotonic()
            if sample and now >= next_tick:
                paths = [self.lab.path_counters(i)[key] for i in range(len(self.paths))]
                tr.samples.append({"t": time.monotonic() - tr.t0, "app_bytes": receiver.received,
                                   "path_bytes": paths})
                while next_tick <= time.monotonic():
                    next_tick += TICK
            wake = min([now + 0.05] + ([next_tick] if sample else []) + [tr.t0 + e.at for e in pending[:1]])
            time.sleep(max(0.0, wake - time.monotonic()))
        for t in threads:
            t.join(1.0)

    def ss_probe(self) -> dict:
        """`ss -Mtni` in the server namespace: the subflows of each MPTCP connection on PORT."""
        conns = [g for g in group_ss_subflows(ss_mptcp(self.lab.server)) if g["local"][1] == PORT]
        return {"connections": len(conns),
                "subflows": [len(g["subflow_sockets"]) for g in conns],
                "subflow_peers": [[list(s["peer"]) for s in g["subflow_sockets"]] for g in conns],
                "fallback": [g["mptcp_fallback"] for g in conns]}

    def path_totals(self) -> list[dict]:
        return [self.lab.path_counters(i) for i in range(len(self.paths))]


def side_summary(side: Side, other: Side) -> dict:
    return {"bytes_in": side.received, "intact": side.received == other.sent
            and side.sha_in.hexdigest() == other.sha_out.hexdigest(), "errors": side.errors}


def record(bench: Bench, tr: Transfer, before_paths: list[dict], mib_before: dict) -> dict:
    """The parts of a transfer every section reports: integrity, the server's kernel view, path bytes."""
    after = bench.path_totals()
    view = tr.server.view.as_dict()
    out = {
        "client_received": side_summary(tr.client, tr.server),
        "server_received": side_summary(tr.server, tr.client),
        "server_kernel": {k: view[k] for k in ("mptcp", "subflow_count", "max_concurrent_subflows",
                                               "fallback_errno")}
                         | {"subflow_peers": [s["remote"] for s in view["subflows"]]},
        "path_bytes": [{k: a[k] - b[k] for k in ("up_bytes", "down_bytes")} for a, b in zip(after, before_paths)],
        "server_mib_delta": counters_delta(mib_before, mptcp_counters(bench.lab.server)),
        "error": tr.error,
    }
    if tr.client.view is not None:
        cview = tr.client.view.as_dict()
        out["client_kernel"] = {k: cview[k] for k in ("mptcp", "subflow_count", "max_concurrent_subflows")}
    for ev in tr.events:
        if ev.name == "ss":
            out["server_ss"] = ev.result
    return out


def clients(schedulers: list[str | None]) -> list[tuple[str, str | None]]:
    """(client kind, scheduler) in run order: the kernel, plain TCP, then mptun per scheduler."""
    return [("kernel", None), ("tcp", None)] + [("mptun", s) for s in schedulers]


def label(kind: str, scheduler: str | None) -> str:
    return f"mptun {scheduler}" if kind == "mptun" and scheduler else kind


def with_client(bench: Bench, kind: str, scheduler: str | None, fn, **base) -> dict:
    """{client, scheduler, **base, **fn()}, fn run with the client set up as kind (mptun: up before,
    down after, its counters kept). A run that fails is kept with its error; the others go on."""
    check_stop()
    result = {"client": kind, "scheduler": scheduler, **base}
    try:
        if kind == "mptun":
            bench.mptun_up(scheduler)
        result.update(fn())
    except (AssertionError, OSError, LabError, subprocess.SubprocessError) as e:
        result["error"] = f"{type(e).__name__}: {e}"[:3000]
    finally:
        if kind == "mptun":
            result["mptun"] = bench.mptun_down(keep_log=bool(result.get("error")))
    return result


def one_run(bench: Bench, kind: str, probe_at: float, **kw) -> tuple[Transfer, dict]:
    before, mib = bench.path_totals(), mptcp_counters(bench.lab.server)
    events = list(kw.pop("events", [])) + [Event(probe_at, "ss", bench.ss_probe)]
    tr = bench.transfer(kind == "kernel", events=events, **kw)
    return tr, record(bench, tr, before, mib)


# ---------------------------------------------------------------- sections

def window_goodput(side: Side, t0: float, start: float, end: float) -> float:
    """Mbit/s of app bytes that arrived in (t0 + start, t0 + end]."""
    lo = hi = 0
    for t, total in side.arrivals:
        if t <= t0 + start:
            lo = total
        if t <= t0 + end:
            hi = total
    return (hi - lo) * 8 / (end - start) / 1e6


def aggregation(cfg, schedulers) -> dict:
    nominal = sum(p.up.rate_mbit for p in AGG_PATHS)
    runs = []
    with Bench(AGG_PATHS) as bench:
        kconf = bench.kernel_config()
        for kind, sched in clients(schedulers):
            for direction in cfg.directions:
                def go(direction=direction):
                    tr, rec = one_run(bench, kind, cfg.agg_seconds / 2, seconds=cfg.agg_seconds,
                                      direction=direction, timeout=cfg.agg_seconds + cfg.grace)
                    receiver = tr.server if direction == "up" else tr.client
                    good = window_goodput(receiver, tr.t0, cfg.agg_omit, cfg.agg_seconds)
                    last = receiver.arrivals[-1][0] - tr.t0 if receiver.arrivals else 0.0
                    return {"goodput_mbit": round(good, 2), "fraction": round(good / nominal, 4),
                            "whole_run_mbit": round(receiver.received * 8 / last / 1e6, 2) if last else 0.0,
                            **rec}
                runs.append(with_client(bench, kind, sched, go, direction=direction))
                log(f"aggregation {label(kind, sched)} {direction}: {runs[-1].get('fraction')} of {nominal:g}"
                    + (f" ({runs[-1]['error']})" if runs[-1].get("error") else ""))
    return {"lab": bench.lab.name, "paths": [p.describe() for p in AGG_PATHS], "nominal_mbit": nominal,
            "seconds": cfg.agg_seconds,
            "omit_s": cfg.agg_omit, "kernel_config": kconf, "runs": runs,
            "definition": "app goodput between omit_s and seconds after connect(), over nominal_mbit",
            "ceiling": "tbf counts whole Ethernet frames: a full frame (1514 bytes) carries 1448 bytes of TCP "
                       "payload (0.956), 1428 with a 20-byte DSS option (0.943)"}


def simult_bound(size: int, rate_a: float, rate_b: float) -> float:
    """simult_flows.sh's time limit without its 50 ms slack: size*8*10/9/(rateA+rateB) + 0.4 s."""
    return size * 8 * 10 / 9 / ((rate_a + rate_b) * 1e6) + 0.4


def simult(cfg, schedulers) -> dict:
    cases = []
    for name, ra, rb, da, db in SIMULT_CASES[:cfg.simult_cases]:
        paths = [PathSpec.symmetric(ra, da, queue_bytes=NETEM_QUEUE_BYTES),
                 PathSpec.symmetric(rb, db, queue_bytes=NETEM_QUEUE_BYTES)]
        bound = simult_bound(cfg.simult_large, ra, rb)
        with Bench(paths) as bench:
            kconf = bench.kernel_config()
            # The selftest's order: 16 MB from the server first, then the reverse direction.
            for direction in [d for d in ("down", "up") if d in cfg.directions]:
                large_up = direction == "up"
                case = {"case": name + (" - reverse direction" if large_up else ""), "rates_mbit": [ra, rb],
                        "one_way_delay_ms": [da, db], "large_direction": direction, "large_bytes": cfg.simult_large,
                        "small_bytes": SIMULT_SMALL, "bound_s": round(bound, 3), "lab": bench.lab.name,
                        "kernel_config": kconf,
                        "runs": []}
                for kind, sched in clients(schedulers[:1]):
                    def go():
                        up, down = ((cfg.simult_large, SIMULT_SMALL) if large_up else (SIMULT_SMALL, cfg.simult_large))
                        # 4 x the bound: a one-path client (about 2x) finishes, a stalled one is cut off
                        tr, rec = one_run(bench, kind, min(1.5, bound / 2), up_bytes=up, down_bytes=down,
                                          timeout=bound * 4 + cfg.grace)
                        ends = [s.arrivals[-1][0] for s in (tr.client, tr.server) if s.arrivals]
                        end = max(ends) if ends and tr.error is None else None
                        # From connect() returning, as the selftest's mptcp_connect -T measures.
                        t = None if end is None else end - tr.connected
                        return {"time_s": None if t is None else round(t, 3),
                                "time_from_connect_call_s": None if end is None else round(end - tr.t0, 3),
                                "pass": t is not None and t <= bound and rec["client_received"]["intact"]
                                and rec["server_received"]["intact"], **rec}
                    case["runs"].append(with_client(bench, kind, sched, go))
                    r = case["runs"][-1]
                    log(f"simult {case['case']} {label(kind, sched)}: {r.get('time_s')} s (bound {bound:.2f})"
                        + (f" ({r['error']})" if r.get("error") else ""))
                cases.append(case)
    return {"selftest": "tools/testing/selftests/net/mptcp/simult_flows.sh", "queue_bytes": NETEM_QUEUE_BYTES,
            "selftest_extra_slack_s": SIMULT_SLACK_S, "cases": cases,
            "definition": "time_s: from the client's connect() returning (as the selftest's mptcp_connect -T "
                          "measures) to the last byte of both directions arriving at the apps; "
                          "bound = size*8*10/9/(rateA+rateB) + 0.4 s"}


def path_down(lab: Lab, i: int):
    """Path i's interface switched off in the client (like WiFi turned off)."""
    def down():
        run(lab.client, ["ip", "link", "set", lab.client_iface(i), "down"])
    return down


def path_back(lab: Lab, i: int):
    """The interface comes back up and is configured again, as a DHCP client or NetworkManager would:
    `ip link set down` flushed its routes (and its IPv6 address), `up` alone brings back neither."""
    a, dev, table = path_addrs(i), lab.client_iface(i), str(100 + i)
    batch = "\n".join([
        f"link set {dev} up",
        f"addr replace {a['client6']}/64 dev {dev}",       # the family follows from the address
        f"route replace default via {a['router4']} dev {dev} metric {100 + i}",
        f"route replace default via {a['router6']} dev {dev} metric {100 + i}",
        f"route replace default via {a['router4']} dev {dev} table {table}",
        f"route replace default via {a['router6']} dev {dev} table {table}",
    ]) + "\n"

    def back():
        run(lab.client, ["ip", "-force", "-batch", "-"], input=batch)
    return back


def restore(action) -> None:
    try:
        action()
    except LabError as e:   # the run's own event already recorded it; the next run would show it too
        log(f"restoring path A: {e}")


def failover_metrics(samples: list[dict], arrivals: list[tuple[float, int]], t0: float, t_down: float,
                     t_up: float, surviving_mbit: float) -> dict:
    """The three failover figures, from the app's arrival times and the TICK samples (times from t0)."""
    gap, prev = 0.0, None
    for t, _ in arrivals:
        t -= t0
        if prev is not None and t > t_down and prev <= t_up:
            gap = max(gap, t - max(prev, t_down))
        prev = t
    if prev is not None and prev < t_up and samples:   # stalled while A was down, until the end
        gap = max(gap, samples[-1]["t"] - max(prev, t_down))
    # Goodput over the 0.5 s from each sample on (bursty arrivals make single 100 ms samples noisy);
    # back at half rate from the first sample after which every such window, until A returns, is.
    windows = []
    for k, a in enumerate(samples):
        if a["t"] < t_down:
            continue
        b = next((b for b in samples[k + 1:] if b["t"] >= a["t"] + HALF_RATE_WINDOW), None)
        if b is None or b["t"] > t_up:
            break
        windows.append((a["t"], (b["app_bytes"] - a["app_bytes"]) * 8 / (b["t"] - a["t"]) / 1e6))
    half = None
    for t, rate in windows:
        if rate < surviving_mbit / 2:
            half = None
        elif half is None:
            half = t - t_down
    back = None
    for a, b in zip(samples, samples[1:]):
        if a["t"] >= t_up and b["path_bytes"][0] - a["path_bytes"][0] >= 15_000:
            back = b["t"] - t_up
            break
    return {"gap_s": round(gap, 3), "half_rate_s": None if half is None else round(half, 3),
            "return_s": None if back is None else round(back, 3)}


def failover(cfg, schedulers) -> dict:
    before, down_for, after = cfg.fail_before, cfg.fail_down, cfg.fail_after
    total = before + down_for + after
    surviving = AGG_PATHS[1].up.rate_mbit
    runs = []
    with Bench(AGG_PATHS) as bench:
        lab, kconf = bench.lab, bench.kernel_config()
        for direction in cfg.fail_directions:
            others = [("kernel", None), ("tcp", None)][:cfg.fail_clients]
            for kind, sched in [("mptun", s) for s in schedulers[:1]] + others:
                def go():
                    events = [Event(before - 0.5, "ss", bench.ss_probe), Event(before, "down", path_down(lab, 0)),
                              Event(before + down_for, "up", path_back(lab, 0)),
                              Event(total - 0.3, "ss_after", bench.ss_probe)]
                    pb, mib = bench.path_totals(), mptcp_counters(lab.server)
                    try:
                        tr = bench.transfer(kind == "kernel", seconds=total, direction=direction, events=events,
                                            sample=True, timeout=total + cfg.grace)
                    finally:
                        restore(path_back(lab, 0))   # path A is up for the next run whatever happened
                    rec = record(bench, tr, pb, mib)
                    receiver = tr.server if direction == "up" else tr.client
                    ev = {e.name: e for e in tr.events}
                    t_down = (ev["down"].done_at or tr.t0 + before) - tr.t0
                    t_up = (ev["up"].done_at or tr.t0 + before + down_for) - tr.t0
                    return {"t_down": round(t_down, 3), "t_up": round(t_up, 3),
                            **failover_metrics(tr.samples, receiver.arrivals, tr.t0, t_down, t_up, surviving),
                            "server_ss_after_return": ev["ss_after"].result,
                            "event_errors": {e.name: e.result for e in tr.events if isinstance(e.result, str)},
                            "samples": [{"t": round(s["t"], 3), "app_bytes": s["app_bytes"],
                                         "path_bytes": s["path_bytes"]} for s in tr.samples], **rec}
                runs.append(with_client(bench, kind, sched, go, direction=direction))
                r = runs[-1]
                log(f"failover {direction} {label(kind, sched)}: gap {r.get('gap_s')} s, half rate "
                    f"{r.get('half_rate_s')} s, return {r.get('return_s')} s"
                    + (f" ({r['error']})" if r.get("error") else ""))
    return {"lab": lab.name, "paths": [p.describe() for p in AGG_PATHS], "before_s": before, "down_s": down_for,
            "after_s": after,
            "tick_s": TICK, "surviving_path_mbit": surviving, "kernel_config": kconf, "runs": runs,
            "event": "ip link set eth0 down in the client namespace; after down_s, ip link set eth0 up and its "
                     "address/routes configured again (as a DHCP client would)",
            "definitions": {
                "gap_s": "longest time without app bytes arriving, for a stall that starts while A is down "
                         "(from app-level recv timestamps)",
                "half_rate_s": "from A going down to the first sample from which on the goodput over every "
                               f"{HALF_RATE_WINDOW} s window, until A comes back, is at least half the surviving "
                               "path's rate (None: not while A was down)",
                "return_s": "from A coming back to the end of the first 100 ms sample in which path A carries "
                            ">= 15 kB in the transfer's direction"}}


# ---------------------------------------------------------------- facts, plots, table

def check_stop() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def detect_schedulers() -> tuple[list[str | None], str]:
    """The --scheduler values `mptun up --help` offers (None: the flag is not there, run the default)."""
    env = dict(os.environ, PYTHONPATH=REPO, COLUMNS="200")
    text = subprocess.run([sys.executable, "-m", "mptun", "up", "--help"], capture_output=True, text=True,
                          timeout=30, env=env).stdout
    if "--scheduler" not in text:
        return [None], "mptun up has no --scheduler flag (yet): mptun ran with its default scheduler"
    choices = re.search(r"--scheduler[ =]\{([^}]*)\}", text)
    offered = choices.group(1).split(",") if choices else [s for s in WANTED_SCHEDULERS if s in text]
    found = [s for s in WANTED_SCHEDULERS if s in offered] + [s for s in offered if s not in WANTED_SCHEDULERS]
    return found or [None], f"--scheduler offers {', '.join(offered) or '(no names found in --help)'}"


def versions() -> dict:
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None
    dirty = out(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"kernel": platform.release(), "python": platform.python_version(),
            "mptun_git_rev": out(["git", "rev-parse", "HEAD"]), "mptun_tree_modified_files": len(dirty.splitlines())
            if dirty else 0, "iproute2": out(["ip", "-V"])}


def machine() -> dict:
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gb": round(mem_kb / 2**20, 1),
            "loadavg_at_start": os.getloadavg()}


def plots(results: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "runs" in results.get("aggregation", {}):
        runs = results["aggregation"]["runs"]
        names = list(dict.fromkeys(label(r["client"], r["scheduler"]) for r in runs))
        dirs = list(dict.fromkeys(r["direction"] for r in runs))
        fig, ax = plt.subplots(figsize=(8, 4))
        w = 0.8 / len(dirs)
        for j, d in enumerate(dirs):
            vals = [next((r.get("fraction") or 0 for r in runs if label(r["client"], r["scheduler"]) == n
                          and r["direction"] == d), 0) for n in names]
            ax.bar([i + j * w for i in range(len(names))], vals, w, label=d)
        ax.axhline(GOALS["aggregation_fraction_min"], color="k", ls="--", lw=1, label="goal")
        ax.set_xticks([i + w * (len(dirs) - 1) / 2 for i in range(len(names))], names, rotation=20)
        ax.set_ylabel(f"goodput / {results['aggregation']['nominal_mbit']:g} Mbit/s")
        ax.set_title("aggregation: " + " + ".join(results["aggregation"]["paths"]))
        ax.legend()
        written.append(_save(fig, out, "aggregation.png"))
    if "cases" in results.get("simult", {}):
        cases = results["simult"]["cases"]
        names = list(dict.fromkeys(label(r["client"], r["scheduler"]) for c in cases for r in c["runs"]))
        fig, ax = plt.subplots(figsize=(10, 4.5))
        w = 0.8 / max(1, len(names))
        for j, n in enumerate(names):
            vals = [next(((r.get("time_s") or 0) / c["bound_s"] for r in c["runs"]
                          if label(r["client"], r["scheduler"]) == n), 0) for c in cases]
            ax.bar([i + j * w for i in range(len(cases))], vals, w, label=n)
        ax.axhline(1.0, color="k", ls="--", lw=1, label="bound")
        ax.set_xticks([i + w * (len(names) - 1) / 2 for i in range(len(cases))],
                      [f"{c['rates_mbit'][0]}/{c['rates_mbit'][1]} Mbit {c['one_way_delay_ms'][0]}/"
                       f"{c['one_way_delay_ms'][1]} ms {c['large_direction']}" for c in cases], rotation=30,
                      ha="right", fontsize=8)
        ax.set_ylabel("transfer time / bound")
        ax.set_title("simult_flows.sh cases")
        ax.legend()
        written.append(_save(fig, out, "simult_flows.png"))
    if "runs" in results.get("failover", {}):
        fo = results["failover"]
        for d in dict.fromkeys(r["direction"] for r in fo["runs"]):
            runs = [r for r in fo["runs"] if r["direction"] == d]
            fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.6 * len(runs)), sharex=True, squeeze=False)
            for ax, r in zip(axes[:, 0], runs):
                s = r.get("samples", [])
                ts = [b["t"] - r["t_down"] for b in s[1:]]
                def rate(get, s=s):
                    return [(get(b) - get(a)) * 8 / (b["t"] - a["t"]) / 1e6 for a, b in zip(s, s[1:])]
                ax.plot(ts, rate(lambda x: x["app_bytes"]), label="app goodput", lw=1.6, color="k")
                for i, name in enumerate(("path A", "path B")):
                    ax.plot(ts, rate(lambda x, i=i: x["path_bytes"][i]), label=name, lw=1, alpha=0.8)
                if s:
                    ax.axvspan(0, r["t_up"] - r["t_down"], color="red", alpha=0.08)
                ax.set_ylabel("Mbit/s")
                # Reassembly releases held-back data in bursts far above the rates: clipped, to keep the scale.
                ax.set_ylim(0, 1.6 * sum(p.up.rate_mbit for p in AGG_PATHS))
                ax.set_title(f"{label(r['client'], r['scheduler'])}: " + (
                    f"gap {r['gap_s']} s, half rate {r['half_rate_s']} s, return {r['return_s']} s" if s
                    else f"no data: {r.get('error')}"[:120]), fontsize=9)
                ax.legend(fontsize=7, loc="upper right")
            axes[-1, 0].set_xlabel("seconds since path A went down (shaded: A down)")
            fig.suptitle(f"failover, {'download' if d == 'down' else 'upload'}")
            written.append(_save(fig, out, f"failover-{d}.png"))
    return written


def _save(fig, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def ratio(a, b) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def table(results: dict) -> str:
    lines = []
    if "runs" in results.get("aggregation", {}):
        runs = results["aggregation"]["runs"]
        get = {(label(r["client"], r["scheduler"]), r["direction"]): r for r in runs}
        names = list(dict.fromkeys(label(r["client"], r["scheduler"]) for r in runs))
        lines += [f"### aggregation ({' + '.join(results['aggregation']['paths'])}; fraction of "
                  f"{results['aggregation']['nominal_mbit']:g} Mbit/s, goal >= {GOALS['aggregation_fraction_min']})",
                  "", "| client | up | down | up / kernel | down / kernel | server subflows (up/down) |",
                  "|---|---|---|---|---|---|"]
        for n in names:
            cells = [get.get((n, d)) for d in ("up", "down")]
            fr = [c.get("fraction") if c else None for c in cells]
            kr = [get.get(("kernel", d), {}).get("fraction") for d in ("up", "down")]
            sub = "/".join(str(c.get("server_kernel", {}).get("max_concurrent_subflows", "-")) if c else "-"
                           for c in cells)
            lines.append(f"| {n} | {fmt(fr[0], 3)} | {fmt(fr[1], 3)} | {ratio(fr[0], kr[0])} | "
                         f"{ratio(fr[1], kr[1])} | {sub} |")
        lines.append("")
    if "cases" in results.get("simult", {}):
        mptun = next((label(r["client"], r["scheduler"]) for c in results["simult"]["cases"] for r in c["runs"]
                      if r["client"] == "mptun"), "mptun")
        lines += ["### simult_flows.sh cases (transfer time s; pass = within bound)", "",
                  f"| case | bound | kernel | {mptun} | tcp | mptun / kernel | pass kernel / mptun |",
                  "|---|---|---|---|---|---|---|"]
        for c in results["simult"]["cases"]:
            by = {r["client"]: r for r in c["runs"]}
            t = {k: by.get(k, {}).get("time_s") for k in ("kernel", "mptun", "tcp")}
            p = "/".join({True: "pass", False: "FAIL"}.get(by.get(k, {}).get("pass"), "-") for k in ("kernel", "mptun"))
            lines.append(f"| {c['case']} ({c['rates_mbit'][0]}/{c['rates_mbit'][1]} Mbit, "
                         f"{c['one_way_delay_ms'][0]}/{c['one_way_delay_ms'][1]} ms) | {c['bound_s']:.2f} | "
                         f"{fmt(t['kernel'])} | {fmt(t['mptun'])} | {fmt(t['tcp'])} | "
                         f"{ratio(t['mptun'], t['kernel'])} | {p} |")
        lines.append("")
    if "runs" in results.get("failover", {}):
        lines += [f"### failover (path A down {results['failover']['down_s']:g} s; goals: gap < "
                  f"{GOALS['failover_gap_s_max']} s, half rate < {GOALS['failover_half_rate_s_max']} s, return < "
                  f"{GOALS['failover_return_s_max']} s)", "",
                  "| direction | client | gap s | half rate s | return s | server subflows before / after |",
                  "|---|---|---|---|---|---|"]
        for r in results["failover"]["runs"]:
            sub = [(x or {}).get("subflows") for x in (r.get("server_ss"), r.get("server_ss_after_return"))]
            lines.append(f"| {r['direction']} | {label(r['client'], r['scheduler'])} | {fmt(r.get('gap_s'))} | "
                         f"{fmt(r.get('half_rate_s'))} | {fmt(r.get('return_s'))} | {sub[0]} / {sub[1]} |")
        lines.append("")
    for kind, c in results.get("subflow_check", {}).items():
        lines.append(f"{kind} client: the server's kernel saw at least 2 concurrent subflows (MPTCP_SUBFLOW_ADDRS, "
                     f"and ss -Mtni mid-run) in {c['at_least_2_subflows']} of {c['runs']} connections")
    errors = [f"- {name}: {err}" for name, err in run_errors(results)]
    if errors:
        lines += ["errors:", *errors, ""]
    return "\n".join(lines)


def all_runs(results: dict):
    """(where, run) for every run of every section."""
    for name in SECTIONS:
        sec = results.get(name, {})
        for r in sec.get("runs", []):
            yield f"{name} {r.get('direction')}", r
        for c in sec.get("cases", []):
            for r in c["runs"]:
                yield f"{name} {c['case']}", r


def subflow_check(results: dict) -> dict:
    """How many subflows the server's kernel saw per connection, for the kernel and mptun clients:
    concurrently via MPTCP_SUBFLOW_ADDRS while the connection ran, and in `ss -Mtni` mid-run."""
    out = {}
    for kind in ("kernel", "mptun"):
        rows = [{"run": f"{where} {label(r['client'], r['scheduler'])}",
                 "max_concurrent": r.get("server_kernel", {}).get("max_concurrent_subflows"),
                 "ss_mid_run": (r.get("server_ss") or {}).get("subflows")}
                for where, r in all_runs(results) if r["client"] == kind]
        out[kind] = {"runs": len(rows), "detail": rows, "at_least_2_subflows": sum(
            1 for x in rows if (x["max_concurrent"] or 0) >= 2 and (x["ss_mid_run"] or [0])[0] >= 2)}
    return out


def run_errors(results: dict):
    """(where, error) of every section or run that failed, for the end of the table."""
    for name in SECTIONS:
        if results.get(name, {}).get("error"):
            yield name, results[name]["error"]
    for where, r in all_runs(results):
        if r.get("error"):
            yield f"{where} {label(r['client'], r['scheduler'])}", r["error"].splitlines()[0][:300]


# ---------------------------------------------------------------- main

@dataclass
class Config:
    quick: bool
    directions: tuple = ("up", "down")
    agg_seconds: float = 10.0
    agg_omit: float = 2.0
    simult_cases: int = len(SIMULT_CASES)
    simult_large: int = SIMULT_LARGE
    fail_directions: tuple = ("down", "up")
    fail_before: float = 4.0
    fail_down: float = 5.0
    fail_after: float = 5.0
    fail_clients: int = 2          # of kernel, tcp (mptun always runs)
    grace: float = 8.0             # a transfer still running this long after its plan is cut off


def config(quick: bool) -> Config:
    if not quick:
        return Config(quick=False)
    # One short run of each kind: download only, 1/4 of the simult size, a shorter outage.
    return Config(quick=True, directions=("down",), agg_seconds=3.0, agg_omit=1.0, simult_cases=1,
                  simult_large=SIMULT_LARGE // 4, fail_directions=("down",), fail_before=1.5, fail_down=2.0,
                  fail_after=2.0, fail_clients=1, grace=2.0)


def _interrupt(signum, frame):
    # pyroute2's NetNS forks helpers that inherit this handler and are stopped with SIGTERM: they just exit.
    if os.getpid() != MAIN_PID:
        os._exit(128 + signum)
    STOP.set()
    raise KeyboardInterrupt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output directory (default artifacts/bench/<timestamp>/)")
    p.add_argument("--quick", action="store_true", help="one short run of each kind (under 90 s)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--schedulers", help="comma-separated mptun schedulers to run (default: all that mptun offers)")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown section {unknown[0]!r} (choose from {', '.join(SECTIONS)})")
    if os.geteuid() != 0:
        raise SystemExit("multipath_bench needs root (network namespaces)")
    # SIGTERM ends the run like Ctrl-C does, so every lab and mptun is taken down on the way out (SIGINT
    # too when a non-interactive shell started us in the background with SIGINT ignored).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    cfg = config(args.quick)
    started = time.time()
    out = args.out or os.path.join(REPO, "artifacts", "bench", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    schedulers, sched_note = detect_schedulers()
    if args.schedulers:
        schedulers = [s for s in args.schedulers.split(",") if s in schedulers] or schedulers
    if args.quick:
        schedulers = schedulers[:1]
    results: dict = {
        "bench": "multipath", "command": "scripts/bench.sh " + shlex.join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "quick": args.quick,
        "sections": only, "versions": versions(), "machine": machine(), "goals": GOALS,
        "mptun": {"schedulers": schedulers, "note": sched_note, "interfaces": ["eth0", "eth1"]},
        "kernel_mptcp_setup": KERNEL_CONFIG,
    }
    log(f"multipath bench: {', '.join(only)}{' (quick)' if args.quick else ''}; mptun: {sched_note}; out {out}")
    runners = {"aggregation": aggregation, "simult": simult, "failover": failover}
    try:
        for name in only:
            t = time.monotonic()
            try:
                results[name] = runners[name](cfg, schedulers)
            except (LabError, OSError, subprocess.SubprocessError) as e:   # this lab broke: the next section runs
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            results[name]["elapsed_s"] = round(time.monotonic() - t, 1)
    except KeyboardInterrupt:
        results["interrupted"] = True
        log("interrupted: labs taken down; writing what was measured")
    results["elapsed_s"] = round(time.time() - started, 1)
    results["subflow_check"] = subflow_check(results)
    results["plots"] = [os.path.basename(f) for f in plots(results, out)]
    results["table_markdown"] = table(results)
    path = os.path.join(out, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(results["table_markdown"])
    print(f"results: {path} (+ {', '.join(results['plots'])}); {results['elapsed_s']:.0f} s")
    return 130 if results.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
