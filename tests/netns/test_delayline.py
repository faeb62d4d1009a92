"""The lab's delay line between two namespaces: a plain L2 wire at delay 0, never faster than its delay, intact data.

Topology (built per module): A (198.18.240.1/24, a0) -- la [link ns, delay line] lb -- B (198.18.240.2/24, b0).
Timing checks are lower bounds only (a delayed frame can never arrive early); loads are bounded in size and time.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mptun.lab.netns import WireNamespaces, sysctls
from tests.conftest import require_commands, require_root

pytestmark = pytest.mark.netns

A_IP = "198.18.240.1"
B_IP = "198.18.240.2"
A_IP6 = "2001:2:0:f0::1"
B_IP6 = "2001:2:0:f0::2"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(*cmd, check=True, timeout=30, **kw):
    return subprocess.run(cmd, check=check, timeout=timeout, capture_output=True, text=True, **kw)


class Wire(WireNamespaces):
    """A -- [link namespace, la and lb only] -- B, with room for large TCP windows at both ends."""

    def __init__(self):
        super().__init__("mpt-dl", [f"{A_IP}/24", f"{A_IP6}/64"], [f"{B_IP}/24", f"{B_IP6}/64"])

    def up(self):
        super().up()
        for ns in (self.a, self.b):
            sysctls(ns, {"net.ipv4.tcp_rmem": "4096 131072 33554432", "net.ipv4.tcp_wmem": "4096 131072 33554432"})
        return self

    def py(self, ns, code, *args, timeout=60):
        """Runs a Python snippet inside a namespace, as a Popen (stdout piped)."""
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def wire():
    require_root()
    require_commands("ip", "ethtool", "ping")
    with Wire() as w:
        yield w


@pytest.fixture
def start_line(wire):
    """start_line(delay_ms, delay_back_ms=None, **kw) -> DelayLineProcess in the link ns; killed if a test fails."""
    from mptun.lab.delayline import start_delayline

    started = []

    def start(delay_ms, delay_back_ms=None, **kw):
        p = start_delayline(wire.link, "la", "lb", delay_ms, delay_back_ms, **kw)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.kill()


def ping_rtts(wire, count=5, interval=0.2, src=None, dst=B_IP):
    r = sh("ip", "netns", "exec", src or wire.a, "ping", "-n", "-q", "-c", str(count), "-i", str(interval),
           "-W", "5", dst, check=False, timeout=60)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", r.stdout)
    assert r.returncode == 0 and m, f"ping failed:\n{r.stdout}{r.stderr}"
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


RECEIVER = """
    import hashlib, socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 0)); s.listen(1); s.settimeout(60)
    print(s.getsockname()[1], flush=True)
    c, _ = s.accept(); c.settimeout(60)
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b); n += len(b)
    print(n, h.hexdigest(), flush=True)
"""

SENDER = """
    import hashlib, random, socket, sys
    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rnd = random.Random(8684)
    c = socket.create_connection((host, port), timeout=60)
    h, left = hashlib.sha256(), size
    while left:
        b = rnd.randbytes(min(left, 1 << 20))
        c.sendall(b); h.update(b); left -= len(b)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    print(size, h.hexdigest(), flush=True)
"""


def tcp_transfer(wire, size, timeout=120):
    """Sends `size` pseudo-random bytes A -> B over TCP; returns (sent, received) as (bytes, sha256) pairs."""
    rx = wire.py(wire.b, RECEIVER, B_IP)
    tx = None
    try:
        port = int(rx.stdout.readline())
        tx = wire.py(wire.a, SENDER, B_IP, port, size)
        out_tx, err_tx = tx.communicate(timeout=timeout)
        out_rx, err_rx = rx.communicate(timeout=timeout)
        assert tx.returncode == 0, err_tx
        assert rx.returncode == 0, err_rx
        n_tx, h_tx = out_tx.split()
        n_rx, h_rx = out_rx.split()
        return (int(n_tx), h_tx), (int(n_rx), h_rx)
    finally:
        for p in (rx, tx):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)


ONE_WAY = """
    # UDP probes stamped with CLOCK_MONOTONIC: namespaces share the clock, so the one-way delay is measurable
    import socket, struct, sys, time
    role, me, peer, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((me, port)); s.settimeout(10)
    if role == "send":
        for i in range(20):
            s.sendto(struct.pack("!d", time.clock_gettime(time.CLOCK_MONOTONIC)), (peer, port))
            time.sleep(0.02)
    else:
        print("ready", flush=True)
        lat = []
        for i in range(20):
            b, _ = s.recvfrom(64)
            lat.append((time.clock_gettime(time.CLOCK_MONOTONIC) - struct.unpack("!d", b)[0]) * 1e3)
        print(min(lat), flush=True)
"""


def one_way_min_ms(wire, src_ns, src_ip, dst_ns, dst_ip, port=40123):
    rx = wire.py(dst_ns, ONE_WAY, "recv", dst_ip, src_ip, port)
    try:
        assert rx.stdout.readline().strip() == "ready"
        tx = wire.py(src_ns, ONE_WAY, "send", src_ip, dst_ip, port)
        tx.communicate(timeout=30)
        out, err = rx.communicate(timeout=30)
        assert rx.returncode == 0, err
        return float(out)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait(5)


def no_process_left(wire):
    return sh("ip", "netns", "pids", wire.link).stdout.split() == []


# --- tests ---------------------------------------------------------------------------------------------------


def test_rejects_negative_delay_without_opening_sockets():
    # needs no root: arguments are checked before any socket exists
    pytest.importorskip("mptun._fast.delayline")
    from mptun._fast.delayline import DelayLine

    with pytest.raises(ValueError):
        DelayLine("x0", "x1", -1.0)
    with pytest.raises(ValueError):
        DelayLine("x0", "x0", 1.0)


def test_zero_delay_is_a_plain_wire(wire, start_line):
    line = start_line(0)
    ping_rtts(wire, count=3)
    sent, received = tcp_transfer(wire, 5 << 20)
    assert received == sent
    st = line.stop()
    assert st["a_to_b"]["bytes"] >= 5 << 20
    assert st["a_to_b"]["drops"] == {k: 0 for k in st["a_to_b"]["drops"]}


def test_without_delay_line_nothing_passes(wire):
    # the link namespace does not forward by itself: what passes in the other tests is the delay line's doing
    r = sh("ip", "netns", "exec", wire.a, "ping", "-n", "-c", "1", "-W", "1", B_IP, check=False)
    assert r.returncode != 0


@pytest.mark.parametrize("delay_ms", [1.0, 15.0])
def test_rtt_never_below_twice_the_delay(wire, start_line, delay_ms):
    line = start_line(delay_ms)
    rtt_min, _, _ = ping_rtts(wire, count=5, interval=0.2)
    assert rtt_min >= 2 * delay_ms
    st = line.stop()
    assert st["a_to_b"]["delay_ms"] == delay_ms and st["b_to_a"]["delay_ms"] == delay_ms


def test_ipv6_passes_and_is_delayed(wire, start_line):
    line = start_line(4)
    rtt_min, _, _ = ping_rtts(wire, count=3, dst=B_IP6)
    assert rtt_min >= 8
    line.stop()


CHECKSUM_PROBE = """
    # one UDP datagram with a wrong checksum, then the same with the right one, as raw IPv4
    import socket, struct, sys
    from ipaddress import IPv4Address
    from mptun.wire.tcpip import Ipv4Header, internet_checksum, pseudo_header_sum
    src, dst, port = IPv4Address(sys.argv[1]), IPv4Address(sys.argv[2]), int(sys.argv[3])
    def packet(payload, bad):
        udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
        c = internet_checksum(udp, pseudo_header_sum(src, dst, socket.IPPROTO_UDP, len(udp))) or 0xFFFF
        if bad:
            c ^= 0x00F0
        udp = udp[:6] + struct.pack("!H", c) + udp[8:]
        ip = Ipv4Header(src, dst, len(udp), protocol=socket.IPPROTO_UDP, identification=1, flags=0)
        return ip.emit() + udp
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(packet(b"bad checksum", True), (str(dst), 0))
    s.sendto(packet(b"good checksum", False), (str(dst), 0))
"""

UDP_FIRST = """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(20)
    print("ready", flush=True)
    print(s.recv(100).decode(), flush=True)
"""


def test_frames_with_a_wrong_checksum_are_not_laundered(wire, start_line):
    # The delay line must not make a frame look verified (its vnet header's DATA_VALID):
    # a peer that checks (rx off, as mptun's netns tests set it) must still drop a wrong checksum.
    line = start_line(1)
    sh("ip", "netns", "exec", wire.b, "ethtool", "-K", "b0", "rx", "off")
    rx = wire.py(wire.b, UDP_FIRST, B_IP, 40001)
    try:
        assert rx.stdout.readline().strip() == "ready"
        # ARP first, so that both datagrams go out at once
        ping_rtts(wire, count=1)
        tx = wire.py(wire.a, CHECKSUM_PROBE, A_IP, B_IP, 40001)
        assert tx.wait(30) == 0, tx.stderr.read()
        out, err = rx.communicate(timeout=30)
        assert out.strip() == "good checksum", err
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait(5)
        sh("ip", "netns", "exec", wire.b, "ethtool", "-K", "b0", "rx", "on")
    st = line.stop()
    assert st["a_to_b"]["frames"] >= 3


def test_20mb_transfer_with_delay_arrives_intact(wire, start_line):
    line = start_line(10)
    sent, received = tcp_transfer(wire, 20 << 20)
    assert received == sent
    st = line.stop()
    # data one way, ACKs the other; every frame read was sent or counted as dropped
    for d in ("a_to_b", "b_to_a"):
        s = st[d]
        dropped = sum(n for why, n in s["drops"].items() if why != "socket_rx")
        assert s["rx_frames"] == s["frames"] + dropped + s["in_flight_frames"]
    assert st["a_to_b"]["bytes"] >= 20 << 20
    assert st["b_to_a"]["frames"] > 0
    # frames travel whole as the sender's TSO super-packets (PACKET_VNET_HDR)
    assert st["a_to_b"]["gso_frames"] > 0
    assert st["a_to_b"]["max_frame_bytes"] > 1514


def test_asymmetric_delays_apply_per_direction(wire, start_line):
    fwd, back = 5.0, 20.0
    line = start_line(fwd, back)
    assert one_way_min_ms(wire, wire.a, A_IP, wire.b, B_IP) >= fwd
    assert one_way_min_ms(wire, wire.b, B_IP, wire.a, A_IP) >= back
    rtt_min, _, _ = ping_rtts(wire, count=5)
    assert rtt_min >= fwd + back
    st = line.stop()
    assert (st["a_to_b"]["delay_ms"], st["b_to_a"]["delay_ms"]) == (fwd, back)
    assert st["delay_ms"] == fwd and st["delay_ms_back"] == back


def test_statistics_count_the_frames(wire, start_line):
    line = start_line(2)
    ping_rtts(wire, count=7, interval=0.05)
    mid = line.snapshot()
    st = line.stop()
    for d in ("a_to_b", "b_to_a"):
        # 7 echo requests one way, 7 replies the other (ARP may add a few)
        assert st[d]["frames"] >= 7
        assert st[d]["bytes"] >= 7 * 98
        assert st[d]["max_frame_bytes"] >= 98
        assert st[d]["max_queue_frames"] >= 1
        assert sum(st[d]["drops"].values()) == 0
        assert mid[d]["frames"] <= st[d]["frames"]


def test_full_ring_drops_are_counted_and_tcp_recovers(wire, start_line):
    # a ring of ~0.3 MB against a 40 ms delay: far below the BDP, so the ring overflows
    line = start_line(20, ring_mb=0.3)
    sent, received = tcp_transfer(wire, 8 << 20, timeout=180)
    assert received == sent
    st = line.stop()
    assert st["a_to_b"]["drops"]["ring_full"] > 0
    assert st["a_to_b"]["max_queue_bytes"] <= 0.3 * (1 << 20)


def test_full_output_qdisc_drops_are_counted_as_send_nobufs(wire, start_line):
    require_commands("tc")
    # a tbf with a tiny queue on the output: what it refuses comes back as ENOBUFS
    sh("ip", "netns", "exec", wire.link, "tc", "qdisc", "replace", "dev", "lb", "root", "tbf",
       "rate", "200mbit", "burst", "32kb", "limit", "20kb")
    try:
        line = start_line(1)
        sent, received = tcp_transfer(wire, 8 << 20, timeout=180)
        assert received == sent
        st = line.stop()
        assert st["a_to_b"]["drops"]["send_nobufs"] > 0
    finally:
        sh("ip", "netns", "exec", wire.link, "tc", "qdisc", "del", "dev", "lb", "root", check=False)


def test_sigterm_ends_it_cleanly_and_leaves_no_process(wire, start_line, tmp_path):
    stats_file = tmp_path / "stats.json"
    line = start_line(3, stats_file=str(stats_file))
    ping_rtts(wire, count=2, interval=0.2)
    pid = line.pid
    assert os.path.exists(f"/proc/{pid}")
    st = line.stop()
    assert line.proc.returncode == 0
    assert stats_file.exists() and st["a_to_b"]["frames"] >= 2
    assert not os.path.exists(f"/proc/{pid}")
    assert no_process_left(wire)


def test_sigint_also_ends_it_cleanly(wire):
    p = subprocess.Popen(["ip", "netns", "exec", wire.link, sys.executable, "-m", "mptun.lab.delayline",
                          "--a", "la", "--b", "lb", "--delay-ms", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert no_process_left(wire)


def test_interface_removed_under_it_is_counted_and_sigterm_still_works(wire):
    from mptun.lab.delayline import start_delayline

    # a veth pair of its own inside the link namespace, so the shared wire stays intact
    sh("ip", "-n", wire.link, "link", "add", "x0", "type", "veth", "peer", "name", "x1")
    try:
        for dev in ("x0", "x1"):
            sh("ip", "-n", wire.link, "link", "set", dev, "up")
        line = start_delayline(wire.link, "x0", "x1", 5)
        try:
            sh("ip", "-n", wire.link, "link", "del", "x0")
            time.sleep(0.3)
            assert line.proc.poll() is None
            st = line.stop()
        finally:
            line.kill()
        assert line.proc.returncode == 0
        assert st["a_to_b"]["rx_errors"] + st["b_to_a"]["rx_errors"] >= 1
    finally:
        sh("ip", "-n", wire.link, "link", "del", "x0", check=False)
    assert no_process_left(wire)


def run_cli(wire, *args, prefix=()):
    return subprocess.run(["ip", "netns", "exec", wire.link, *prefix, sys.executable, "-m", "mptun.lab.delayline",
                           *args], capture_output=True, text=True, timeout=30, cwd=REPO)


def test_unknown_interface_is_a_one_line_error(wire):
    r = run_cli(wire, "--a", "nosuch0", "--b", "lb", "--delay-ms", "1")
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuch0" in lines[0]
    assert no_process_left(wire)


def test_start_delayline_reports_the_error(wire):
    from mptun.lab.delayline import start_delayline

    with pytest.raises(RuntimeError, match="nosuch0"):
        start_delayline(wire.link, "nosuch0", "lb", 1.0)
    assert no_process_left(wire)


def test_missing_privilege_is_a_one_line_error(wire):
    require_commands("capsh")
    # root without CAP_NET_RAW / CAP_NET_ADMIN, as an unprivileged user would be
    cmd = " ".join([sys.executable, "-m", "mptun.lab.delayline", "--a", "la", "--b", "lb", "--delay-ms", "1"])
    r = subprocess.run(["ip", "netns", "exec", wire.link, "capsh", "--drop=cap_net_raw,cap_net_admin", "--", "-c", cmd],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_NET_RAW" in lines[0]
