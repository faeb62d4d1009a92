"""Running the real `mptun` command inside a lab's client namespace, as a user would.

MptunRunner runs `ip netns exec <client> python -m mptun ...` with a per-test run directory
(journal, pid, socket, log), and `stop()` always leaves nothing behind: `mptun down`, then the
daemon's pid killed if it survived. The server is the lab's kernel MPTCP peer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from mptun.lab.kstats import mptcp_counters
from mptun.lab.netns import ns_argv, run
from mptun.lab.peer import run_client, start_peer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER = "198.18.100.2"
# Server MIB counters that must not move: each means the server rejected or doubted what we sent.
SERVER_MIB_MUST_STAY = (
    "DSSNotMatching", "InfiniteMapRx", "DSSNoMatchTCP", "DataCsumErr", "MPFailRx", "MPFallbackTokenInit",
    "MPCapableFallbackACK", "MPCapableFallbackSYNACK", "DSSCorruptionFallback", "DSSCorruptionReset",
    "NoDSSInWindow", "MPCapableDataFallback", "DssFallback", "FallbackFailed", "MPRstRx", "MPFastcloseRx",
)
# Lab state that `mptun down` must restore exactly (the client namespace's view).
SNAPSHOT = [
    "ip rule", "ip -6 rule", "ip route show table all", "ip -6 route show table all", "ip -d link",
    "ip addr", "tc qdisc", "tc filter show dev eth0 ingress", "ethtool -k eth0",
    "cat /proc/sys/net/ipv4/ip_local_reserved_ports",
]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, e.get("PYTHONPATH")) if p)
    return e


def snapshot(ns: str) -> dict[str, str]:
    return {cmd: run(ns, ["sh", "-c", cmd], check=False).stdout for cmd in SNAPSHOT}


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    return "\n".join(f"--- {c}\nbefore:\n{before[c]}after:\n{after[c]}" for c in before if before[c] != after[c])


class MptunRunner:
    def __init__(self, ns: str, run_dir: str, tun: str = "mptun0"):
        self.ns = ns
        self.run_dir = run_dir
        self.tun = tun

    def cmd(self, *args: str, timeout: float = 90.0, prefix: tuple = (), python: str = sys.executable,
            check: bool = False) -> subprocess.CompletedProcess:
        argv = ns_argv(self.ns, [*prefix, python, "-m", "mptun", *args, "--tun", self.tun,
                                 "--run-dir", self.run_dir])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env(),
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"mptun {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                                 f"log:\n{self.log()[-3000:]}")
        return proc

    def up(self, *ifaces: str, extra: tuple = ()) -> subprocess.CompletedProcess:
        return self.cmd("up", *(ifaces or ("eth0",)), *extra, check=True)

    def down(self, check: bool = True) -> subprocess.CompletedProcess:
        return self.cmd("down", check=check)

    def status(self) -> dict:
        return json.loads(self.cmd("status", "--json", check=True).stdout)

    def status_text(self) -> str:
        return self.cmd("status", check=True).stdout

    def pid(self) -> int | None:
        try:
            with open(os.path.join(self.run_dir, f"{self.tun}.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        try:
            with open(os.path.join(self.run_dir, f"{self.tun}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """Whatever happened: down, and kill the daemon by its pid if it is still there."""
        pid = self.pid()
        if os.path.exists(os.path.join(self.run_dir, f"{self.tun}.json")) or pid:
            self.cmd("down", timeout=60)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def echo_once(lab, port: int, nbytes: int) -> dict:
    """One plain-TCP echo connection of nbytes from the client to an echo peer on the server, every
    byte back intact; the server's record of it (its "mptcp" says what the server's kernel saw)."""
    with start_peer(lab.server, "echo", port) as peer:
        assert run_client(lab.client, SERVER, port, mode="echo", nbytes=nbytes, mptcp=False).ok
        return peer.wait_connections(1)[0]


def server_mib(lab) -> dict[str, int]:
    return mptcp_counters(lab.server)


def assert_server_happy(before: dict[str, int], after: dict[str, int]) -> None:
    moved = {k: after.get(k, 0) - before.get(k, 0) for k in SERVER_MIB_MUST_STAY
             if after.get(k, 0) != before.get(k, 0)}
    assert not moved, f"the server's MPTCP MIB says it rejected or doubted what mptun sent: {moved}"


def client_argv(ns: str, argv: list[str]) -> list[str]:
    return ns_argv(ns, argv)
