"""Subflow sockets that scale and fail fast (issue 8, item 8), through `mptun up eth0` in a lab's
client, the lab's kernel MPTCP as the server, plain-TCP apps:

- 5000 short connections in a row to one server port all succeed, although a path has 4096
  subflow ports: a port is used again as soon as its 4-tuple is free, and a finished subflow is
  closed after the peer's FIN, so the TIME_WAIT is the server's, not ours.
- An unreachable destination (an `unreachable` route in the router) fails the app's connect with
  the error a plain connect gets in the same lab without mptun.
- Path-MTU discovery: a router whose route to the server has a smaller MTU answers oversized
  segments with fragmentation-needed; it reaches the subflow socket and the transfer completes.
- A destination that never answers (the router drops its SYNs): once the app gives up, mptun
  drops the connection and its subflow stops sending SYNs.

About 35-60 s in all (2 shared cores), most of it the 5000 connections (15-40 s) and the silent
destination's waits (9 s).
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mptun.lab import PathSpec
from mptun.lab.netns import ns_argv, run
from mptun.lab.peer import run_client, socket_in_netns, start_peer
from tests.netns.mptun_helpers import SERVER, MptunRunner, assert_server_happy, server_mib

pytestmark = pytest.mark.netns

# Routed by the lab's router to nowhere (its `unreachable` route): ICMP host unreachable.
UNREACHABLE = "198.18.201.5"
SUBFLOW_ADDR = "198.19.64.1"

# N short echo connections, K at a time, from one process: a few bytes each way, every one checked.
SHORT_CLIENTS = r"""
import errno, json, socket, sys, threading, time
host, port, n, k, deadline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
lock = threading.Lock()
state = {"next": 0, "ok": 0, "errors": {}}
started = time.monotonic()

def worker():
    while time.monotonic() - started < deadline:
        with lock:
            i = state["next"]
            if i >= n:
                return
            state["next"] = i + 1
        msg = b"short %d\n" % i
        try:
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while True:
                    d = s.recv(4096)
                    if not d:
                        break
                    got += d
            why = None if got == msg else "wrong bytes"
        except OSError as e:
            why = errno.errorcode.get(e.errno, type(e).__name__)
        with lock:
            if why is None:
                state["ok"] += 1
            else:
                state["errors"][why] = state["errors"].get(why, 0) + 1

threads = [threading.Thread(target=worker) for _ in range(k)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"ok": state["ok"], "errors": state["errors"], "started": state["next"],
                  "seconds": round(time.monotonic() - started, 2)}))
"""


@pytest.fixture
def lab_runner(make_lab, tmp_path):
    lab = make_lab([PathSpec()])
    run(lab.client, ["sh", "-c", "for f in all default eth0; do echo 1 > /proc/sys/net/ipv4/conf/$f/rp_filter; done"])
    r = MptunRunner(lab.client, str(tmp_path / "run"))
    yield lab, r
    r.stop()


def subflow_time_waits(lab) -> int:
    out = run(lab.client, ["ss", "-Htan", "state", "time-wait", "src", SUBFLOW_ADDR]).stdout
    return len(out.splitlines())


def test_5000_short_connections_in_a_row_all_succeed(lab_runner):
    """More connections than a path has ports, to one server port, within less than a TIME_WAIT
    (60 s). The client does not use TCP timestamps, as towards a peer that does not: a TIME_WAIT
    of ours would then hold its 4-tuple for all of 60 s (connect says EADDRNOTAVAIL; with
    timestamps the kernel lets a bound socket take it over), so every port must be free again at
    once: its TIME_WAIT is the server's, which takes a new SYN on the same 4-tuple."""
    lab, r = lab_runner
    run(lab.client, ["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"])
    r.up("eth0")
    n = 5000
    before = server_mib(lab)
    with start_peer(lab.server, "echo", 9001) as peer:
        proc = subprocess.run(ns_argv(lab.client, [sys.executable, "-c", SHORT_CLIENTS, SERVER, "9001", str(n),
                                                   "4", "150"]),
                              capture_output=True, text=True, timeout=200)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        print(f"{n} short connections, 4 at a time: {got['seconds']} s")
        assert got["ok"] == n, got
        records = peer.wait_connections(n, timeout=60)
        assert all(rec["mptcp"] for rec in records)
    # Every subflow port was used again (4096 of them).
    assert len({rec["peer"][1] for rec in records}) <= 4096
    assert_server_happy(before, server_mib(lab))
    counters = r.status()["counters"]
    assert counters["mptcp_connections"] == n
    assert not counters.get("no_free_ports") and not counters.get("subflow_open_failures"), counters
    # Every subflow closed after the server's FIN: no TIME_WAIT of ours holds a subflow 4-tuple.
    assert subflow_time_waits(lab) == 0


def app_connect(lab, addr: str, port: int, timeout: float) -> tuple[str, float]:
    """A plain-TCP app's connect from the client: the error it got (errno name, "ok", or
    "timeout") and how long it took."""
    s = socket_in_netns(lab.client, mptcp=False)
    with s:
        s.settimeout(timeout)
        t0 = time.monotonic()
        try:
            s.connect((addr, port))
            outcome = "ok"
        except TimeoutError:
            outcome = "timeout"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno, str(e))
        return outcome, time.monotonic() - t0


def test_unreachable_destination_fails_the_apps_connect_as_without_mptun(lab_runner):
    lab, r = lab_runner
    run(lab.router, ["ip", "route", "add", "unreachable", "198.18.201.0/24"])
    plain, plain_s = app_connect(lab, UNREACHABLE, 80, timeout=20)
    r.up("eth0")
    through, through_s = app_connect(lab, UNREACHABLE, 80, timeout=20)
    print(f"connect to an unreachable destination: {plain} after {plain_s * 1000:.1f} ms without mptun, "
          f"{through} after {through_s * 1000:.1f} ms through mptun")
    assert plain == "EHOSTUNREACH"
    assert through == plain
    st = r.status()
    counters = st["counters"]
    assert counters.get("unreachable") == 1 and counters.get("icmp_to_subflows", 0) >= 1, counters
    assert not counters.get("icmp_malformed") and not counters.get("icmp_unknown_flow"), counters
    assert st["connections"] == []


def test_path_mtu_discovery_through_a_smaller_mtu_hop(lab_runner):
    lab, r = lab_runner
    # The router's route to the server has MTU 1400, both ends' links 1500: segments sized for the
    # client's link (1500 with mptun's options) get fragmentation-needed (DF is set).
    run(lab.router, ["ip", "route", "add", f"{SERVER}/32", "dev", "srv", "mtu", "1400"])
    r.up("eth0")
    nbytes = 4 << 20
    before = server_mib(lab)
    with start_peer(lab.server, "echo", 9002) as peer:
        res = run_client(lab.client, SERVER, 9002, mode="echo", nbytes=nbytes, mptcp=False, timeout=60)
        assert res.ok, res.error
        assert res.bytes_in == nbytes and res.sha256_in == res.sha256_out
        assert peer.wait_connections(1)[0]["mptcp"] is True
    assert_server_happy(before, server_mib(lab))
    counters = r.status()["counters"]
    assert counters.get("icmp_frag_needed", 0) >= 1, counters
    assert not counters.get("icmp_malformed") and not counters.get("icmp_unknown_flow"), counters
    # The subflow socket's kernel learned the lower MTU, less the option headroom.
    route = run(lab.client, ["ip", "route", "get", SERVER, "from", SUBFLOW_ADDR]).stdout
    assert "mtu 1360" in route, route


def syn_times(lines: list[str], port: int) -> list[float]:
    """Timestamps (epoch seconds) of the SYNs to `port` in tcpdump -tt -n output."""
    return [float(line.split()[0]) for line in lines if f".{port}: Flags [S]" in line]


def test_syns_stop_when_the_app_gives_up(lab_runner):
    lab, r = lab_runner
    port = 9999
    run(lab.router, ["nft", "-f", "-"], input=(
        "table inet synblock {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
        f"    tcp dport {port} counter drop\n  }}\n}}\n"))
    r.up("eth0")
    cap = subprocess.Popen(ns_argv(lab.client, ["tcpdump", "-i", "eth0", "-n", "-l", "-tt", "-U",
                                                f"tcp dst port {port}"]),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # tcpdump says "listening on ..." once it captures.
        said = [cap.stderr.readline() for _ in range(2)]
        assert any("listening" in line for line in said), said
        outcome, took = app_connect(lab, SERVER, port, timeout=2)
        assert outcome == "timeout", outcome
        deadline = time.monotonic() + 15
        while r.status()["connections"]:
            assert time.monotonic() < deadline, r.status()["connections"]
            time.sleep(0.2)
        gone = time.time()
        print(f"the app gave up after {took:.1f} s; mptun dropped the connection "
              f"{time.monotonic() - deadline + 15:.1f} s after that")
        # The kernel's SYN retries (1, 3, 7 s after the first) would show within 5 s.
        time.sleep(5)
    finally:
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=10)
    syns = syn_times(out.splitlines(), port)
    assert syns, out                                    # the capture saw the subflow's SYNs
    assert [t for t in syns if t > gone] == [], (gone, syns)
    assert r.status()["counters"].get("app_gone") == 1
