"""Helpers of the multipath netns tests: the two-path lab of issue 8, the server kernel's live view
of its subflows, per-path byte meters, a long-lived echo connection a test can drive the network
under, and a wire capture.

Each helper observes with the kernel's own tools (ss -Mtni, interface counters, tcpdump) and every
wait in here is bounded in time.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import threading
import time

from mptun.lab import PathSpec
from mptun.lab.kstats import ss_mptcp
from mptun.lab.netns import ns_argv, run
from mptun.lab.peerserver import pattern_blocks
from mptun.lab.peer import socket_in_netns
from tests.netns.mptun_helpers import assert_server_happy

MB = 1 << 20
# Issue 8's lab: path A 50 Mbit/s, 20 ms RTT; path B 30 Mbit/s, 80 ms RTT.
PATH_A = "rate=50mbit,delay=10ms"
PATH_B = "rate=30mbit,delay=40ms"
SERVER2 = "198.18.100.3"       # the second address a server announces (ADD_ADDR)


def multipath_lab(make_lab, a: str = PATH_A, b: str = PATH_B, **kw):
    """The two-path lab; the server's kernel accepts up to 8 subflows per connection (a server set
    up for multipath), the client filters reverse paths strictly (as many distributions do)."""
    lab = make_lab([PathSpec.parse(a), PathSpec.parse(b)], **kw)
    run(lab.server, ["ip", "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"])
    run(lab.client, ["sh", "-c", "for f in all default eth0 eth1; do echo 1 > /proc/sys/net/ipv4/conf/$f/rp_filter; done"])
    return lab


def server_subflows(lab, port: int) -> list[dict]:
    """The server kernel's established subflows of MPTCP connections on its port `port`, now:
    {"local": (addr, port), "remote": (addr, port), "flags": ss's subflow flags, "backup": the
    peer asked for backup ('B': in its MP_JOIN SYN or an MP_PRIO), "address_id": the peer's id}."""
    out = []
    for e in ss_mptcp(lab.server):
        sf = e.get("subflow") if e["netid"] == "tcp" else None
        if sf is None or e["state"] != "ESTAB" or e["local"][1] != port:
            continue
        flags = str(sf.get("flags", ""))
        out.append({"local": e["local"], "remote": e["peer"], "flags": flags, "backup": "B" in flags,
                    "address_id": sf.get("id_remote")})
    return out


def from_client(subflows: list[dict], addr: str) -> list[dict]:
    return [s for s in subflows if s["remote"][0] == addr]


def wait_for(what: str, probe, timeout: float = 10.0, interval: float = 0.1):
    """Call probe() until it returns something true (returned); AssertionError naming `what` and
    probe's last answer after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s; last: {got!r}")
        time.sleep(interval)


class PathMeter:
    """Bytes each lab path carried since the meter was made (or last reset), both ways, from the
    router's interface counters: up = client to server, down = server to client."""

    def __init__(self, lab):
        self.lab = lab
        self.reset()

    def reset(self) -> None:
        self.start = [self.lab.path_counters(i) for i in range(len(self.lab.paths))]

    def delta(self) -> list[dict[str, int]]:
        now = [self.lab.path_counters(i) for i in range(len(self.lab.paths))]
        return [{"up": n["up_bytes"] - s["up_bytes"], "down": n["down_bytes"] - s["down_bytes"]}
                for n, s in zip(now, self.start)]


class EchoConn:
    """One TCP connection from the client's namespace to an echo peer, held open by this process.

    `start(n)` sends n bytes of the pattern on one thread and reads the echo back on another, while
    the test changes the network; `wait_received` follows its progress; `finish` checks that exactly
    what was sent came back. Several exchanges can follow on the same connection. mptcp=True makes
    it an IPPROTO_MPTCP socket (the kernel's own client, for yardsticks); otherwise a plain TCP socket,
    which mptun turns into MPTCP.
    """

    def __init__(self, lab, port: int, *, mptcp: bool = False, timeout: float = 20.0):
        self.sock = socket_in_netns(lab.client, mptcp=mptcp)
        self.sock.settimeout(timeout)
        self.sock.connect((lab.server_addr, port))
        self.received = 0
        self._seed = 0
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._sent_sha = self._got_sha = ""

    def start(self, nbytes: int) -> EchoConn:
        self._seed += 1
        self.received, self.nbytes = 0, nbytes
        self._threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                         for f in (self._send, self._recv)]
        for t in self._threads:
            t.start()
        return self

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as e:  # handed to the test's thread by finish() and wait_received()
            self._errors.append(e)

    def _send(self) -> None:
        h = hashlib.sha256()
        for block in pattern_blocks(self.nbytes, self._seed):
            self.sock.sendall(block)
            h.update(block)
        self._sent_sha = h.hexdigest()

    def _recv(self) -> None:
        h = hashlib.sha256()
        buf = bytearray(256 * 1024)
        while self.received < self.nbytes:
            n = self.sock.recv_into(buf, min(len(buf), self.nbytes - self.received))
            if n == 0:
                raise ConnectionError(f"EOF after {self.received} of {self.nbytes} bytes")
            h.update(memoryview(buf)[:n])
            self.received += n
        self._got_sha = h.hexdigest()

    def wait_received(self, nbytes: int, timeout: float = 30.0) -> None:
        """Until at least nbytes of the current exchange came back (raises the transfer's error)."""
        deadline = time.monotonic() + timeout
        while self.received < nbytes:
            if self._errors:
                raise self._errors[0]
            assert time.monotonic() < deadline, \
                f"only {self.received} of {nbytes} bytes echoed within {timeout:g}s"
            time.sleep(0.01)

    def finish(self, timeout: float = 120.0) -> None:
        """Wait for the exchange's end; every byte must have come back, intact and in order."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._errors:
            raise self._errors[0]
        assert not any(t.is_alive() for t in self._threads), \
            f"exchange unfinished after {timeout:g}s: {self.received} of {self.nbytes} bytes back"
        assert self._got_sha == self._sent_sha, "the echo differs from what was sent"

    def close(self) -> None:
        """Half-close, read the echo peer's end, close (the peer logs the connection then)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while self.sock.recv(65536):
                pass
        finally:
            self.sock.close()

    def __enter__(self) -> EchoConn:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.sock.close()


@contextlib.contextmanager
def capture(ns: str, iface: str, bpf: str, path: str, snaplen: int = 200):
    """tcpdump in namespace ns on iface into the pcap file `path` (headers and options only)."""
    proc = subprocess.Popen(ns_argv(ns, ["tcpdump", "-i", iface, "--immediate-mode", "-U", "-n", "-s", str(snaplen),
                                         "-w", path, bpf]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening" in line, f"tcpdump did not start: {line}"
        yield path
        time.sleep(0.3)     # the last packets reach the file
    finally:
        proc.terminate()
        proc.wait(10)


def tcp_segments(path: str) -> list[dict]:
    """The TCP segments of a pcap file: addresses, ports, flags, payload length, MPTCP option bodies."""
    from scapy.all import IP, TCP, rdpcap

    out = []
    for pkt in rdpcap(path):
        if TCP not in pkt:
            continue
        ip, tcp = pkt[IP], pkt[TCP]
        out.append({"src": ip.src, "dst": ip.dst, "sport": tcp.sport, "dport": tcp.dport,
                    "flags": str(tcp.flags), "payload": ip.len - ip.ihl * 4 - tcp.dataofs * 4,
                    "mptcp": [v for k, v in tcp.options if k == 30 and isinstance(v, bytes) and v]})
    return out


class RouterCounters:
    """nftables counters in the lab's router, one per rule ({name: match}, e.g. {"syn_b": 'ip saddr X
    tcp flags & (syn|ack) == syn'}), on forwarded packets; read() gives packets per name."""

    def __init__(self, lab, table: str, rules: dict[str, str]):
        self.lab, self.table = lab, table
        body = "\n".join(f'    {match} counter comment "{name}"' for name, match in rules.items())
        run(lab.router, ["nft", "-f", "-"], input=(
            f"table inet {table} {{\n  chain forward {{\n    type filter hook forward priority -20; policy accept;\n"
            f"{body}\n  }}\n}}\n"))

    def read(self) -> dict[str, int]:
        out = {}
        for line in run(self.lab.router, ["nft", "list", "table", "inet", self.table]).stdout.splitlines():
            if "counter packets" in line and 'comment "' in line:
                out[line.split('comment "')[1].rstrip('"')] = int(line.split("counter packets ")[1].split()[0])
        return out


def assert_server_happy_multipath(before: dict[str, int], after: dict[str, int]) -> None:
    """assert_server_happy, less MPRstRx: an RST with MP_TCPRST (RFC 8684 3.6) is how a subflow of a
    dead or withdrawn path ends (mptun resets what is left of it once the path is back), not a
    complaint about the connection; MP_FASTCLOSE (the connection's reset) still counts."""
    assert_server_happy({**before, "MPRstRx": 0}, {**after, "MPRstRx": 0})
