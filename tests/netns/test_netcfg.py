"""netcfg on a real kernel, inside a lab's client namespace: what `up` routes where,
that packets really reach the TUN fd (app leg, NAT leg, subflows, tc capture), and
that `down` leaves every table, rule, link, qdisc, filter and sysctl exactly as it
found them: after a clean close, after SIGKILL, and after a failure at any step.

Strict rp_filter is on in the client throughout, as on many distributions.
"""

import contextlib
import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

import mptun.netcfg.apply as apply_mod
from mptun.lab import PathSpec
from mptun.lab.kstats import parse_netstat
from mptun.lab.netns import run
from mptun.netcfg import NetConfig, NetcfgError, build_plan, discover, down, is_up, resolve_gateway_mac, up
from mptun.netcfg.journal import journal_path
from mptun.netcfg.netns import entered
from mptun.wire.mptcp import parse_options
from mptun.wire.tcpip import TCP_ACK as ACK
from mptun.wire.tcpip import TCP_SYN as SYN
from mptun.wire.tcpip import (IPPROTO_TCP, Ipv4Header, MalformedPacket, Mss, TcpHeader, build_packet,
                              internet_checksum)

pytestmark = pytest.mark.netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER = "198.18.100.2"
IFACES = ["eth0", "eth1"]
TUN_ADDR, SUB0, SUB1 = "198.19.0.1", "198.19.64.1", "198.19.64.2"
FAKE_PEER = "198.19.128.7"
LIVENESS = 10.0   # seconds to wait for a packet that must come; never a timing assertion


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def lab(make_lab):
    lab = make_lab([PathSpec(), PathSpec()])
    run(lab.client, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter && "
                                 "echo 1 > /proc/sys/net/ipv4/conf/default/rp_filter"])
    return lab


@pytest.fixture
def jdir(tmp_path):
    return str(tmp_path / "journal")


def sh(ns, cmd):
    return run(ns, ["sh", "-c", cmd], check=False).stdout


SNAPSHOT = [
    "ip rule", "ip -6 rule", "ip route show table all", "ip -6 route show table all", "ip -d link", "ip addr",
    "tc qdisc", "tc filter show dev eth0 ingress", "tc filter show dev eth1 ingress",
    "ethtool -k eth0", "ethtool -k eth1",
    "cat /proc/sys/net/ipv4/ip_local_reserved_ports", "cat /proc/sys/net/ipv4/conf/all/rp_filter",
    "cat /proc/sys/net/ipv4/conf/eth0/rp_filter", "cat /proc/sys/net/ipv4/conf/eth1/rp_filter",
]


def snapshot(ns):
    return {cmd: sh(ns, cmd) for cmd in SNAPSHOT}


def assert_same(before, after):
    diffs = [f"--- {cmd}\nbefore:\n{before[cmd]}after:\n{after[cmd]}" for cmd in SNAPSHOT if before[cmd] != after[cmd]]
    assert not diffs, "\n".join(diffs)


def route_get(ns, args):
    return sh(ns, f"ip route get {args}").split("\n")[0]


def tcp_packet(src, dst, sport, dport, seq, ack, flags, options=b""):
    """An IPv4 TCP segment with correct checksums (the kernel verifies them: no offload flags)."""
    tcp = TcpHeader(sport, dport, seq, ack, flags, options=options)
    return build_packet(IPv4Address(src), IPv4Address(dst), tcp)


def parse_tcp(pkt):
    """The fields of an IPv4 TCP packet the tests look at; None for anything else."""
    try:
        ip = Ipv4Header.parse(pkt)
        tcp = TcpHeader.parse(pkt[ip.buffer_len:]) if ip.protocol == IPPROTO_TCP else None
    except MalformedPacket:
        return None
    if tcp is None:
        return None
    mss = parse_options(tcp.options).first(Mss)
    return dict(src=str(ip.src), dst=str(ip.dst), sport=tcp.src_port, dport=tcp.dst_port, seq=tcp.seq,
                ack=tcp.ack, flags=tcp.flags & 0xFF, mss=mss.value if mss else None, raw=bytes(pkt))


def tun_packets(tun):
    """Everything queued on the TUN fd now, parsed (non-TCP as None)."""
    out = []
    while True:
        try:
            data = os.read(tun.fd, 65536 + tun.vnet_hdr_size)
        except BlockingIOError:
            return out
        out.append(parse_tcp(data[tun.vnet_hdr_size:]))


def read_tun_until(tun, match):
    """The first TCP packet read from the TUN that match() accepts."""
    seen = []
    while True:
        ready, _, _ = select.select([tun.fd], [], [], LIVENESS)
        assert ready, f"no matching packet on the TUN; saw {seen}"
        for p in tun_packets(tun):
            if p and match(p):
                return p
            seen.append(p and {k: v for k, v in p.items() if k != "raw"})


def write_tun(tun, pkt):
    # An all-zero virtio_net_hdr: no GSO, checksums complete.
    os.write(tun.fd, bytes(tun.vnet_hdr_size) + pkt)


def icmp_unreachable(src, dst, quoted, code=3):
    """ICMP destination unreachable (port unreachable by default) about `quoted`."""
    body = struct.pack("!BBHI", 3, code, 0, 0) + quoted[:28]
    body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    ip = Ipv4Header(IPv4Address(src), IPv4Address(dst), len(body), protocol=socket.IPPROTO_ICMP, flags=0)
    return ip.emit() + body


def rp_filter_drops(ns):
    """The namespace's count of packets dropped by reverse path filtering."""
    return parse_netstat(sh(ns, "cat /proc/net/netstat"))["TcpExt"]["IPReversePathFilter"]


def wait_rp_filter_drops(ns, n):
    deadline = time.monotonic() + LIVENESS
    while rp_filter_drops(ns) < n:
        assert time.monotonic() < deadline, "strict rp_filter did not drop the control packet"
        time.sleep(0.01)


def wait_connected(sock):
    _, w, _ = select.select([], [sock], [], LIVENESS)
    assert w, "connect did not complete"
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def tcp_socket(ns, bind=None, mark=None):
    with entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mark is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    if bind:
        s.bind(bind)
    return s


def connect_nonblocking(s, addr):
    s.setblocking(False)
    assert s.connect_ex(addr) == errno.EINPROGRESS


def connect_refused(ns, addr, **kw):
    """True if a connect from ns to addr is answered with a RST (so it was not captured)."""
    s = tcp_socket(ns, **kw)
    s.settimeout(LIVENESS)
    try:
        s.connect(addr)
    except ConnectionRefusedError:
        return True
    except socket.timeout:
        return False
    finally:
        s.close()
    raise AssertionError(f"something listens on {addr}")


# ---------------------------------------------------------------- apply, check, undo

def test_up_routes_tcp_into_the_tun_and_down_restores_everything(lab, jdir):
    ns = lab.client
    before = snapshot(ns)
    cfg = NetConfig(IFACES)
    applied = up(cfg, netns_name=ns, journal_dir=jdir)
    try:
        assert is_up("mptun0", journal_dir=jdir)
        assert applied.tun.name == "mptun0" and applied.tun.vnet_hdr_size == 10
        link = sh(ns, "ip -d link show mptun0")
        assert "mtu 65535" in link and "qlen 10000" in link and "vnet_hdr on" in link and "persist off" in link

        assert "dev mptun0" in route_get(ns, f"{SERVER} ipproto tcp")
        assert f"src {TUN_ADDR}" in route_get(ns, f"{SERVER} ipproto tcp")
        assert "dev eth0" in route_get(ns, f"{SERVER} ipproto udp")
        assert "dev eth0" in route_get(ns, f"{SERVER} ipproto icmp")
        # Loopback and the local addresses are never intercepted.
        assert "dev lo" in route_get(ns, "127.0.0.1 ipproto tcp")
        assert "dev lo" in route_get(ns, "198.18.2.2 ipproto tcp")
        # Destinations main routes specifically (here the connected subnets) keep that route.
        assert "dev eth1" in route_get(ns, "198.18.2.1 ipproto tcp")
        # The daemon's own marked sockets are not intercepted.
        assert "dev eth0" in route_get(ns, f"{SERVER} ipproto tcp mark {cfg.fwmark:#x}")
        for sub in (SUB0, SUB1):
            got = sh(ns, f"ip route get {SERVER} from {sub} ipproto tcp")
            assert "dev mptun0" in got and "mtu 1460" in got and "advmss 1460" in got, got
        assert "via 198.18.1.1 dev eth0" in route_get(ns, f"{SERVER} from 198.18.1.2")
        assert "via 198.18.2.1 dev eth1" in route_get(ns, f"{SERVER} from 198.18.2.2")
        assert "dev mptun0" in route_get(ns, f"{FAKE_PEER} from {TUN_ADDR} ipproto tcp")

        for dev, addr in (("eth0", "c6120102"), ("eth1", "c6120202")):
            filters = sh(ns, f"tc filter show dev {dev} ingress")
            assert f"match {addr}/ffffffff at 16" in filters
            assert "match f0000000/f0000000 at 22" in filters
            assert "Egress Redirect to device mptun0" in filters
        assert sh(ns, "cat /proc/sys/net/ipv4/ip_local_reserved_ports").strip() == "61440-65535"
        assert "generic-receive-offload: on" in sh(ns, "ethtool -k eth0")

        # UDP and ICMP still reach the server directly.
        assert "1 received" in sh(ns, f"ping -n -c 1 -W 5 {SERVER}")
        with entered(lab.server):
            srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with entered(ns):
            cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with srv, cli:
            srv.bind((SERVER, 7000))
            srv.settimeout(LIVENESS)
            cli.settimeout(LIVENESS)
            cli.sendto(b"ping", (SERVER, 7000))
            data, peer = srv.recvfrom(100)
            srv.sendto(data, peer)
            assert cli.recvfrom(100)[0] == b"ping"

        # Inbound connections to local services keep working, on both interfaces
        # (eth1's replies leave via eth1, and strict rp_filter accepts its SYNs).
        lst = tcp_socket(ns, bind=("0.0.0.0", 8080))
        lst.listen(4)
        with lst:
            for addr in ("198.18.1.2", "198.18.2.2"):
                c = tcp_socket(lab.server)
                c.settimeout(LIVENESS)
                c.connect((addr, 8080))
                lst.settimeout(LIVENESS)
                conn, _ = lst.accept()
                conn.close()
                c.close()
    finally:
        notes = applied.down()
    assert notes == []
    assert not is_up("mptun0", journal_dir=jdir)
    assert_same(before, snapshot(ns))


def test_packets_reach_the_tun_fd_end_to_end(lab, jdir):
    ns = lab.client
    before = snapshot(ns)
    cfg = NetConfig(IFACES, exclude=["198.18.99.0/24"])
    applied = up(cfg, netns_name=ns, journal_dir=jdir)
    tun = applied.tun
    socks = []
    try:
        # Control: strict rp_filter is really on. A packet from a source the
        # kernel would not route back into the TUN (an excluded prefix) is
        # dropped and counted.
        drops = rp_filter_drops(ns)
        write_tun(tun, tcp_packet("198.18.99.1", TUN_ADDR, 80, 40001, 1, 1, SYN | ACK))
        wait_rp_filter_drops(ns, drops + 1)

        # App leg: an unbound socket's SYN arrives from the TUN's address; a
        # SYN/ACK written back completes its connect (strict rp_filter passes it).
        app = tcp_socket(ns)
        socks.append(app)
        connect_nonblocking(app, (SERVER, 80))
        sport = app.getsockname()[1]
        syn = read_tun_until(tun, lambda p: p["dport"] == 80 and p["flags"] & SYN)
        assert (syn["src"], syn["dst"], syn["sport"]) == (TUN_ADDR, SERVER, sport)
        assert syn["mss"] == 65535 - 40   # the local leg: TUN MTU 65535
        write_tun(tun, tcp_packet(SERVER, TUN_ADDR, 80, sport, 5000, syn["seq"] + 1, SYN | ACK,
                                  options=Mss(1460).emit()))
        wait_connected(app)
        read_tun_until(tun, lambda p: p["sport"] == sport and p["flags"] == ACK and p["ack"] == 5001)

        # An ICMP error the datapath injects for the app (connection refused
        # upstream) passes rp_filter too: the app's connect fails at once.
        app2 = tcp_socket(ns)
        socks.append(app2)
        connect_nonblocking(app2, (SERVER, 81))
        sport2 = app2.getsockname()[1]
        syn2 = read_tun_until(tun, lambda p: p["sport"] == sport2 and p["flags"] & SYN)
        write_tun(tun, icmp_unreachable(SERVER, TUN_ADDR, syn2["raw"]))
        _, w, _ = select.select([], [app2], [], LIVENESS)
        assert w and app2.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED

        # Subflow sockets: bound to interface i's subflow address, in the port
        # range; they enter the TUN with an MSS sized for the interface.
        for sub, port in ((SUB0, 61500), (SUB1, 65535)):
            s = tcp_socket(ns, bind=(sub, port))
            socks.append(s)
            connect_nonblocking(s, (SERVER, 80))
            syn = read_tun_until(tun, lambda p: p["sport"] == port and p["flags"] & SYN)
            assert (syn["src"], syn["dst"], syn["mss"]) == (sub, SERVER, 1460)
            write_tun(tun, tcp_packet(SERVER, sub, 80, port, 7000, syn["seq"] + 1, SYN | ACK,
                                      options=Mss(1460).emit()))
            wait_connected(s)

        # NAT leg: a SYN from a fake peer to the listener, written into the TUN,
        # is accepted; the listener's SYN/ACK comes back out of the TUN.
        lst = tcp_socket(ns, bind=(TUN_ADDR, 40000))
        socks.append(lst)
        lst.listen(4)
        write_tun(tun, tcp_packet(FAKE_PEER, TUN_ADDR, 50000, 40000, 9000, 0, SYN,
                                  options=Mss(1460).emit()))
        synack = read_tun_until(tun, lambda p: p["dport"] == 50000)
        assert (synack["src"], synack["dst"], synack["sport"], synack["flags"], synack["ack"]) == \
            (TUN_ADDR, FAKE_PEER, 40000, SYN | ACK, 9001)

        # The daemon's marked sockets go direct: the server's RST answers them.
        assert connect_refused(ns, (SERVER, 9), mark=cfg.fwmark)

        # Capture: the peer's packets to an interface address and a port in the
        # range are redirected into the TUN before the host stack sees them...
        for addr, port in (("198.18.1.2", 61500), ("198.18.2.2", 65535), ("198.18.1.2", 61440)):
            c = tcp_socket(lab.server)
            socks.append(c)
            connect_nonblocking(c, (addr, port))
            syn = read_tun_until(tun, lambda p: p["dport"] == port and p["dst"] == addr)
            assert syn["src"] == SERVER and syn["flags"] & SYN
        # ...and to a port outside the range they are not: the client's kernel
        # answers them itself (RST), which it could not if they had been captured.
        for addr, port in (("198.18.1.2", 5000), ("198.18.1.2", 61439), ("198.18.2.2", 5000)):
            assert connect_refused(lab.server, (addr, port))
        assert not [p for p in tun_packets(tun) if p and p["dport"] in (5000, 61439)]
        # Nothing but the control packet was dropped by strict rp_filter.
        assert rp_filter_drops(ns) == drops + 1
    finally:
        for s in socks:
            s.close()
        applied.down()
    assert_same(before, snapshot(ns))


@contextlib.contextmanager
def holding_the_tun(ns, jdir):
    """Within the block, a child process has applied the configuration and holds the TUN fd;
    at its end the child is SIGKILLed."""
    code = (f"import time\nfrom mptun.netcfg import NetConfig, up\n"
            f"a = up(NetConfig({IFACES!r}), netns_name={ns!r}, journal_dir={jdir!r})\n"
            f"print('ready', flush=True)\ntime.sleep(3600)\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        yield child
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_down_after_sigkill_restores_everything(lab, jdir):
    ns = lab.client
    before = snapshot(ns)
    with holding_the_tun(ns, jdir):
        assert "mptun0" in sh(ns, "ip link show mptun0")
        assert "dev mptun0" in route_get(ns, f"{SERVER} ipproto tcp")
    # Fail-open: the TUN went with its process; TCP goes direct although the rules remain.
    assert sh(ns, "ip link show mptun0") == ""
    assert "dev eth0" in route_get(ns, f"{SERVER} ipproto tcp")
    assert "9004:" in sh(ns, "ip rule")
    assert is_up("mptun0", journal_dir=jdir)
    assert down("mptun0", journal_dir=jdir) == []
    assert not is_up("mptun0", journal_dir=jdir)
    assert_same(before, snapshot(ns))


def test_down_from_another_process_while_the_tun_is_held(lab, jdir):
    ns = lab.client
    before = snapshot(ns)
    with holding_the_tun(ns, jdir) as child:
        assert down("mptun0", journal_dir=jdir) == []
        assert_same(before, snapshot(ns))
        assert child.poll() is None   # the holder is still running; its TUN is gone
    assert_same(before, snapshot(ns))


def _plan_ops(ns):
    cfg = NetConfig(IFACES)
    return build_plan(cfg, discover(cfg, netns_name=ns)).ops


def _plan_length(ns):
    return len(_plan_ops(ns))


# `up` in a child that SIGKILLs itself at one point: "before" step k's work (its undo is
# journaled, the object not created), "after" step k's work (before the journal records what
# it did), or "create": right after the k-th os call inside Journal.create. Prints "done" if
# up finished first.
_KILLED_UP = """
import sys
import mptun.netcfg.apply as A
import mptun.netcfg.journal as J
from mptun.netcfg import NetConfig, up
from tests.unit.kill_points import die, killed_after_os_call
where, k, ns, jdir, ifaces = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]

if where in ("before", "after"):
    n = [0]
    orig = A._Executor.do
    def do(self, op):
        if n[0] == k:
            work = getattr(self, "_do_" + op.kind)
            setattr(self, "_do_" + op.kind, die if where == "before" else lambda op: (work(op), die()))
        n[0] += 1
        return orig(self, op)
    A._Executor.do = do
else:
    create = J.Journal.create.__func__
    def killing_create(cls, path, header):
        with killed_after_os_call(J, k):
            return create(cls, path, header)
    J.Journal.create = classmethod(killing_create)
up(NetConfig(ifaces), netns_name=ns, journal_dir=jdir)
print("done", flush=True)
"""


def _run_killed_up(ns, jdir, where, k):
    proc = subprocess.run([sys.executable, "-c", _KILLED_UP, where, str(k), ns, jdir, *IFACES], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode == 0


def test_sigkill_at_any_step_of_up_is_undone_by_down(lab, jdir):
    """The daemon dies at step k: its undo is journaled, the step not done (k+1 covers "just after")."""
    ns = lab.client
    before = snapshot(ns)
    for k in range(_plan_length(ns)):
        assert not _run_killed_up(ns, jdir, "before", k)
        if is_up("mptun0", journal_dir=jdir):
            assert down("mptun0", journal_dir=jdir) == []
        assert_same(before, snapshot(ns))


def test_sigkill_between_a_step_and_its_journal_record_is_undone_by_down(lab, jdir):
    """The daemon dies after step k's work, before the journal says what it did (the TUN's
    index, a filter's handle, the sysctl value written...). Undo still removes what is
    provably mptun's. An ingress qdisc or a GRO setting cannot be told from one someone else
    made meanwhile: those stay, and down says so."""
    ns = lab.client
    before = snapshot(ns)
    ops = _plan_ops(ns)
    assert {"sysctl", "tun", "gro", "qdisc", "filter"} <= {op.kind for op in ops}   # every recording step
    for k, op in enumerate(ops):
        assert not _run_killed_up(ns, jdir, "after", k)
        notes = down("mptun0", journal_dir=jdir) if is_up("mptun0", journal_dir=jdir) else []
        if op.kind in ("qdisc", "gro"):
            assert len(notes) == 1 and op.dev in notes[0] and "left as it is" in notes[0], notes
            run(ns, ["sh", "-c", f"tc qdisc del dev {op.dev} ingress" if op.kind == "qdisc"
                     else f"ethtool -K {op.dev} gro off"])
        else:
            assert notes == [], (op, notes)
        assert_same(before, snapshot(ns))


def test_sigkill_inside_journal_create_is_cleared_by_down_and_up_works_again(lab, jdir):
    """Wherever Journal.create dies (before or after the header is written), the journal left
    behind is one `down` removes, never one it calls damaged; then `up` runs (in the next
    round, to completion in the last)."""
    ns = lab.client
    before = snapshot(ns)
    path = journal_path("mptun0", jdir)
    for k in range(50):
        finished = _run_killed_up(ns, jdir, "create", k)
        if os.path.exists(path):
            assert down("mptun0", journal_dir=jdir) == []
        assert not os.path.exists(path) and not os.path.exists(path + ".tmp")
        assert_same(before, snapshot(ns))
        if finished:
            assert k > 2
            break
    else:
        raise AssertionError("up never finished")


def test_failure_at_any_step_is_rolled_back(lab, jdir, monkeypatch):
    ns = lab.client
    before = snapshot(ns)
    orig = apply_mod._Executor.do
    n_ops = _plan_length(ns)
    for k in list(range(n_ops)) + ["interrupt"]:
        calls = [0]

        def failing(self, op, k=k):
            if calls[0] == (n_ops // 2 if k == "interrupt" else k):
                raise KeyboardInterrupt() if k == "interrupt" else OSError(errno.EIO, "injected")
            calls[0] += 1
            return orig(self, op)

        monkeypatch.setattr(apply_mod._Executor, "do", failing)
        if k == "interrupt":
            with pytest.raises(KeyboardInterrupt):
                up(NetConfig(IFACES), netns_name=ns, journal_dir=jdir)
        else:
            with pytest.raises(NetcfgError) as e:
                up(NetConfig(IFACES), netns_name=ns, journal_dir=jdir)
            assert "nothing was changed" in str(e.value) and "\n" not in str(e.value)
        assert not is_up("mptun0", journal_dir=jdir)
        assert_same(before, snapshot(ns))


# ---------------------------------------------------------------- refusals

def _refused(ns, jdir, cfg, message):
    before = snapshot(ns)
    with pytest.raises(NetcfgError) as e:
        up(cfg, netns_name=ns, journal_dir=jdir)
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    assert_same(before, snapshot(ns))
    return str(e.value)


def test_refusals_are_one_line_and_change_nothing(lab, jdir):
    ns = lab.client
    _refused(ns, jdir, NetConfig(["eth0", "nope0"]), "unknown interface 'nope0'")
    assert not is_up("mptun0", journal_dir=jdir)

    applied = up(NetConfig(IFACES), netns_name=ns, journal_dir=jdir)
    try:
        msg = _refused(ns, jdir, NetConfig(IFACES), "mptun is already up on mptun0")
        assert msg.endswith("mptun down first")
    finally:
        applied.down()


def test_up_takes_unusable_interfaces_while_one_is_usable(lab, jdir):
    """Interfaces that cannot carry subflows yet are accepted beside a usable one, and get only
    what does not depend on an address (tests/netns/test_pathmon.py: configured once usable).
    With none usable, up is refused with one line saying why for each."""
    ns = lab.client
    # veth pairs (this kernel has no dummy driver): up with carrier, down, up without carrier.
    for cmd in ("ip link add v0 type veth peer name v0p && ip link set v0p up && ip link set v0 up",
                "ip link add v1 type veth peer name v1p",
                "ip link add v2 type veth peer name v2p && ip link set v2p up && ip link set v2 up && "
                "ip addr add 198.18.50.2/24 dev v2",
                "ip link add v3 type veth peer name v3p && ip link set v3 up"):
        run(ns, ["sh", "-c", cmd])
    names = ["eth0", "v0", "v1", "v2", "v3"]
    why = ["no IPv4 address", "link down", "no default route in the main table", "no carrier"]
    before = snapshot(ns)
    applied = up(NetConfig(names), netns_name=ns, journal_dir=jdir)
    try:
        assert [(i.name, i.why) for i in applied.interfaces] == list(zip(names, [None, *why]))
        assert applied.plan.paths[1:] == ((), (), (), ())
        assert [r for r in sh(ns, "ip rule").splitlines() if r.startswith("9002:")] == \
            ["9002:\tfrom 198.18.1.2 lookup 9001"]
        assert "dev mptun0" in sh(ns, f"ip route get {SERVER} from {SUB0} ipproto tcp")
        # A subflow socket of an unusable interface fails at once; nothing leaves with its address.
        s = tcp_socket(ns, bind=("198.19.64.4", 61500))   # v2's subflow address
        with s:
            s.setblocking(False)
            assert s.connect_ex((SERVER, 80)) == errno.EHOSTUNREACH
    finally:
        applied.down()
    assert_same(before, snapshot(ns))

    run(ns, ["ip", "link", "set", "eth0", "down"])
    msg = _refused(ns, jdir, NetConfig(names), "no usable interface: ")
    assert msg == "no usable interface: " + "; ".join(f"{n}: {w}" for n, w in zip(names, ["link down", *why]))


def test_preexisting_objects_are_left_alone(lab, jdir):
    """A clsact qdisc, someone's ingress filter and rules/routes of others survive up and down."""
    ns = lab.client
    run(ns, ["sh", "-c",
             "tc qdisc add dev eth1 clsact && tc qdisc add dev eth0 ingress && "
             "tc filter add dev eth0 ingress prio 7 protocol ip u32 match ip dst 198.18.1.2/32 flowid 1:1 && "
             "ip rule add pref 8000 from 198.18.77.0/24 lookup 77 && "
             "ip route add 198.18.77.0/24 dev eth0 table 77 && "
             "echo 8080 > /proc/sys/net/ipv4/ip_local_reserved_ports"])
    before = snapshot(ns)
    applied = up(NetConfig(IFACES), netns_name=ns, journal_dir=jdir)
    try:
        assert "redirect" not in before["tc filter show dev eth1 ingress"]
        assert "Egress Redirect to device mptun0" in sh(ns, "tc filter show dev eth1 ingress")
        assert sh(ns, "cat /proc/sys/net/ipv4/ip_local_reserved_ports").strip() == "8080,61440-65535"
        c = tcp_socket(lab.server)
        connect_nonblocking(c, ("198.18.2.2", 62000))
        with c:
            read_tun_until(applied.tun, lambda p: p["dport"] == 62000 and p["dst"] == "198.18.2.2")
    finally:
        applied.down()
    assert_same(before, snapshot(ns))


def test_exclude_and_dest(lab, jdir):
    ns = lab.client
    before = snapshot(ns)
    applied = up(NetConfig(IFACES, dest=["198.18.100.0/24", "198.18.200.0/24"], exclude=["198.18.100.128/25"]),
                 netns_name=ns, journal_dir=jdir)
    try:
        assert "dev mptun0" in route_get(ns, "198.18.100.2 ipproto tcp")
        assert "dev mptun0" in route_get(ns, "198.18.200.9 ipproto tcp")
        assert "dev eth0" in route_get(ns, "198.18.100.200 ipproto tcp")   # excluded
        assert "dev eth0" in route_get(ns, "198.18.150.1 ipproto tcp")     # not a destination
    finally:
        applied.down()
    assert_same(before, snapshot(ns))


@pytest.mark.parametrize("keep", [True, False])
def test_keep_specific_routes(lab, jdir, keep):
    ns = lab.client
    run(ns, ["ip", "route", "add", "198.18.150.0/24", "via", "198.18.2.1", "dev", "eth1"])
    before = snapshot(ns)
    applied = up(NetConfig(IFACES, keep_specific_routes=keep), netns_name=ns, journal_dir=jdir)
    try:
        assert "dev mptun0" in route_get(ns, f"{SERVER} ipproto tcp")   # by the default route
        for dst in ("198.18.150.1", "198.18.2.1"):
            got = route_get(ns, f"{dst} ipproto tcp")
            assert ("dev eth1" in got) if keep else ("dev mptun0" in got), got
    finally:
        applied.down()
    assert_same(before, snapshot(ns))


def test_down_without_journal_and_with_a_vanished_namespace(lab, jdir):
    with pytest.raises(NetcfgError, match="mptun is not up on mptun0"):
        down("mptun0", journal_dir=jdir)
    path = journal_path("mptun0", jdir)
    os.makedirs(jdir)
    with open(path, "w") as f:
        json.dump({"version": 1, "tun": "mptun0", "netns": "mpt-no-such-ns", "netns_inode": 1, "entries": []}, f)
    notes = down("mptun0", journal_dir=jdir)
    assert "is gone" in notes[0]
    assert not os.path.exists(path)


# ---------------------------------------------------------------- gateway MAC

def test_gateway_mac_is_resolved_without_a_permanent_entry(lab):
    ns = lab.client
    sh(ns, "ip neigh flush dev eth0")
    iface = discover(NetConfig(IFACES), netns_name=ns).interfaces[0]
    assert str(iface.gateway) == "198.18.1.1"
    mac = resolve_gateway_mac(iface, netns_name=ns)
    router_mac = json.loads(sh(lab.router, "ip -j link show p0"))[0]["address"]
    assert mac == router_mac
    entry = sh(ns, "ip neigh show 198.18.1.1 dev eth0")
    assert router_mac in entry and "PERMANENT" not in entry

    # One multipath default route instead of one per interface: a gateway each.
    run(ns, ["sh", "-c", "ip route del default via 198.18.1.1 && ip route del default via 198.18.2.1 && "
                         "ip route add default nexthop via 198.18.1.1 dev eth0 nexthop via 198.18.2.1 dev eth1"])
    found = discover(NetConfig(IFACES), netns_name=ns).interfaces
    assert [str(i.gateway) for i in found] == ["198.18.1.1", "198.18.2.1"]

    ghost = replace(iface, gateway=IPv4Address("198.18.1.77"))
    with pytest.raises(NetcfgError, match="gateway 198.18.1.77 on eth0 does not answer ARP"):
        resolve_gateway_mac(ghost, netns_name=ns, timeout=LIVENESS)
