"""Interfaces that come and go while mptun is up: a PathMonitor in a child process inside the lab's
client namespace (as the daemon runs: `ip netns exec`, a plain rtnetlink socket there), with eth1
taken down and up, its address removed, a different address in another subnet (roaming), and back.
After each step: the callbacks the daemon would get, in order, with the PathIO's address and
Ethernet header, and eth1's rule, routes and capture filter as the kernel shows them; eth0's never
change. `down` then restores the namespace exactly, also after SIGKILL of the child mid-way (from
the journal, which lists entries of objects the kernel removed already).
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile

import pytest

from mptun.lab.netns import ns_argv, run
from mptun.netcfg import NetConfig, discover, down, is_up
from mptun.netcfg.plan import path_ops
from tests.netns.test_netcfg import jdir, lab  # noqa: F401 (fixtures: the 2-path lab, strict rp_filter)
from tests.netns.test_netcfg import assert_same, sh, snapshot

pytestmark = pytest.mark.netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIVENESS = 20.0   # seconds to wait for a callback that must come; never a timing assertion
HOME = ("198.18.2.2", "198.18.2.0/24", "198.18.2.1")       # eth1's address, subnet, gateway
ROAMED = ("198.18.12.2", "198.18.12.0/24", "198.18.12.1")  # the network it roams to

# The daemon's part, alone: up, the paths, the monitor on the event loop; every callback printed
# as one JSON line with the PathIO's state after it. SIGTERM: close and down, as the daemon does.
_CHILD = """
import json, logging, os, signal, sys
from ipaddress import IPv4Address
from mptun.core.mib import Counters
from mptun.io.loop import READ, EventLoop
from mptun.io.pathmon import PathMonitor
from mptun.io.paths import paths_from_applied
from mptun.netcfg import NetConfig, up

logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d %(message)s")
applied = up(NetConfig(sys.argv[2:]), journal_dir=sys.argv[1])
paths = paths_from_applied(applied, vnet=applied.tun.vnet_hdr_size > 0)
loop = EventLoop(Counters())

def state(p):
    return dict(usable=p.usable, addr=p.addr and str(IPv4Address(p.addr)), eth=p.eth.hex())

def say(**kw):
    print(json.dumps(kw), flush=True)

mon = PathMonitor(applied, paths, lambda i, usable: say(change=[i, usable], path=state(paths[i]),
                                                       ifindex=paths[i].ifindex), loop)
loop.watch(mon.fileno(), READ, lambda ev: mon.on_readable())
signal.signal(signal.SIGTERM, lambda *a: loop.stop())
loop.wake_on_signals()
say(ready=[state(p) for p in paths])
if os.environ.get("DIE_AT"):
    # SIGKILL itself in the k-th step of what the monitor does from now on: right after the
    # work of an install step (before the journal records its details), or of a removal step
    # (before the journal drops its entries).
    import mptun.netcfg.apply as A
    from tests.unit.kill_points import die
    what, k = os.environ["DIE_AT"].split(":")
    n = [0]
    orig_do, orig_undo = A._Executor.do, A._Executor.undo
    def do(self, op):
        if what == "install" and n[0] == int(k):
            work = getattr(self, "_do_" + op.kind)
            setattr(self, "_do_" + op.kind, lambda op: (work(op), die()))
        n[0] += 1
        return orig_do(self, op)
    def undo(self, op, extra):
        try:
            return orig_undo(self, op, extra)   # raises for what the kernel removed already
        finally:
            if what == "removal" and n[0] == int(k):
                die()
            n[0] += 1
    A._Executor.do, A._Executor.undo = do, undo
try:
    loop.run()
finally:
    mon.close()
    for p in paths:
        p.close()
    say(notes=applied.down())
"""


class Child:
    def __init__(self, ns, jdir, ifaces, die_at=""):
        self.stderr = tempfile.TemporaryFile("w+")     # its log: a pipe nobody reads could fill up
        self.proc = subprocess.Popen(ns_argv(ns, [sys.executable, "-c", _CHILD, jdir, *ifaces]), cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env={**os.environ, "PYTHONPATH": REPO, "DIE_AT": die_at})
        self.log = ""

    def next(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], LIVENESS)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.kill()
            raise AssertionError(f"no callback from the path monitor; its log:\n{self.log}")
        event = json.loads(line)
        self.ifindex = event.pop("ifindex", None)   # the path's packet socket is on this device
        return event

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        last = self.next()
        assert self.proc.wait(LIVENESS) == 0
        return last

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if not self.stderr.closed:
            self.stderr.seek(0)
            self.log = self.stderr.read()
            self.stderr.close()
            self.proc.stdout.close()


@pytest.fixture
def child(lab, jdir):
    started = []

    def start(ifaces=("eth0", "eth1"), die_at=""):
        c = Child(lab.client, jdir, ifaces, die_at)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


# What the child prints when eth1 (path 1) becomes unusable, and usable with an address.
DOWN = dict(change=[1, False], path=dict(usable=False, addr=None, eth=""))


def back(addr, eth):
    return dict(change=[1, True], path=dict(usable=True, addr=addr, eth=eth))


def ip(ns, cmds):
    run(ns, ["sh", "-c", " && ".join(cmds)])


def eth1_home(lab):
    """eth1 back on its own network, as a network manager restores it after the link came up
    (the link going down took its default routes and its IPv6 address)."""
    ip(lab.client, ["ip link set eth1 up", "ip addr replace 198.18.2.2/24 dev eth1",
                    "ip route replace default via 198.18.2.1 dev eth1 proto static metric 101",
                    "ip -6 addr replace 2001:2:0:2::2/64 dev eth1",
                    "ip -6 route replace default via 2001:2:0:2::1 dev eth1 proto static metric 101"])


def link(ns, dev):
    return json.loads(sh(ns, f"ip -j link show {dev}"))[0]


def mac(ns, dev):
    return link(ns, dev)["address"].replace(":", "")


def iface_state(ns, i, dev):
    """Interface i's part of the configuration, as the kernel shows it."""
    table, sub = 9001 + 2 * i, 9002 + 2 * i
    return dict(rules=[r.split("\t", 1)[1] for r in sh(ns, "ip rule").splitlines() if f"lookup {table}" in r],
                table=sh(ns, f"ip route show table {table}").split("\n"),
                subflow=sh(ns, f"ip route show table {sub}").split("\n"),
                filters=sh(ns, f"tc filter show dev {dev} ingress"))


def tcp_capture(filters):
    """The address matches of the TCP capture filters (the ICMP ones, which name no address, stay)."""
    return [line.strip() for line in filters.splitlines() if line.strip().endswith("/ffffffff at 16")]


def assert_configured(ns, at, dev="eth1"):
    addr, net, gw = at
    s = iface_state(ns, 1, dev)
    assert s["rules"] == [f"from {addr} lookup 9003"], s
    assert s["table"] == [f"default via {gw} dev {dev} proto static ",
                          f"{net} dev {dev} proto static scope link src {addr} ", ""], s
    assert s["subflow"][0].startswith("default dev mptun0 proto static scope link src 198.19.64.2 "), s
    assert s["subflow"][1] == "unreachable default proto static metric 4294967295 ", s
    hexaddr = "".join(f"{int(b):02x}" for b in addr.split("."))
    assert tcp_capture(s["filters"]) == [f"match {hexaddr}/ffffffff at 16"], s


def assert_unconfigured(ns, dev="eth1"):
    s = iface_state(ns, 1, dev)
    assert s["rules"] == [] and s["table"] == [""] and tcp_capture(s["filters"]) == [], s
    # Its subflow sockets fail at once instead of leaving by main with an internal address.
    assert s["subflow"] == ["unreachable default proto static metric 4294967295 ", ""], s


def test_an_interface_that_comes_and_goes_and_roams(lab, child):
    ns = lab.client
    before = snapshot(ns)
    router_mac = mac(lab.router, "p1") + mac(ns, "eth1")
    # eth1 is down at up: accepted, and configured once it comes up.
    ip(ns, ["ip link set eth1 down"])
    c = child()
    ready = c.next()["ready"]
    assert ready[0]["usable"] and ready[0]["addr"] == "198.18.1.2" and len(ready[0]["eth"]) == 24
    assert ready[1] == dict(usable=False, addr=None, eth="")
    assert_unconfigured(ns)
    eth0 = iface_state(ns, 0, "eth0")
    assert eth0["rules"] == ["from 198.18.1.2 lookup 9001"]

    eth1_home(lab)
    assert c.next() == back("198.18.2.2", router_mac)
    assert_configured(ns, HOME)

    ip(ns, ["ip link set eth1 down"])
    assert c.next() == DOWN
    assert_unconfigured(ns)

    eth1_home(lab)
    assert c.next() == back("198.18.2.2", router_mac)
    assert_configured(ns, HOME)

    # DHCP lost the lease: the address goes (and the routes through it with it).
    ip(ns, ["ip addr del 198.18.2.2/24 dev eth1"])
    assert c.next() == DOWN
    assert_unconfigured(ns)

    # Roaming: another network, another address and gateway.
    ip(lab.router, ["ip addr add 198.18.12.1/24 dev p1"])
    ip(ns, ["ip addr add 198.18.12.2/24 dev eth1", "ip route add default via 198.18.12.1 dev eth1 metric 101"])
    assert c.next() == back("198.18.12.2", router_mac)
    assert_configured(ns, ROAMED)

    # And back in one go: an address change is a removal and a new install.
    ip(ns, ["ip addr del 198.18.12.2/24 dev eth1", "ip addr add 198.18.2.2/24 dev eth1",
            "ip route replace default via 198.18.2.1 dev eth1 proto static metric 101"])
    assert c.next() == DOWN
    assert c.next() == back("198.18.2.2", router_mac)
    assert_configured(ns, HOME)
    assert iface_state(ns, 0, "eth0") == eth0

    assert c.stop() == {"notes": []}
    ip(lab.router, ["ip addr del 198.18.12.1/24 dev p1"])
    assert_same(before, snapshot(ns))


@pytest.mark.parametrize("where", ["unconfigured", "roamed"])
def test_down_after_sigkill_of_the_monitor_mid_way(lab, child, jdir, where):
    """Killed with eth1's configuration removed, or with the one for a roamed address in place
    (whose subnet route the kernel removed with the address afterwards): down from the journal
    restores everything."""
    ns = lab.client
    before = snapshot(ns)
    c = child()
    assert c.next()["ready"][1]["usable"]
    ip(ns, ["ip addr del 198.18.2.2/24 dev eth1"])
    assert c.next() == DOWN
    if where == "roamed":
        ip(lab.router, ["ip addr add 198.18.12.1/24 dev p1"])
        ip(ns, ["ip addr add 198.18.12.2/24 dev eth1", "ip route add default via 198.18.12.1 dev eth1 metric 101"])
        assert c.next()["path"]["addr"] == "198.18.12.2"
        assert_configured(ns, ROAMED)
    c.kill()
    if where == "roamed":
        ip(ns, ["ip addr del 198.18.12.2/24 dev eth1"])
        ip(lab.router, ["ip addr del 198.18.12.1/24 dev p1"])
    eth1_home(lab)
    assert is_up("mptun0", journal_dir=jdir)
    assert down("mptun0", journal_dir=jdir, netns_name=ns) == []
    assert_same(before, snapshot(ns))


def test_a_device_unplugged_and_plugged_in_again(lab, child):
    """A USB modem: the device goes away with everything on it, and comes back as another device
    (new index, new MAC): it gets its qdisc, GRO and ICMP capture again as well as its path's
    configuration, and the path's packet socket is on the new device."""
    ns = lab.client
    before = snapshot(ns)
    at = ("198.18.30.2", "198.18.30.0/24", "198.18.30.1")

    def plug():
        ip(None, [f"ip link add v9 netns {ns} type veth peer name r9 netns {lab.router}"])
        ip(lab.router, ["ip addr add 198.18.30.1/24 dev r9", "ip link set r9 up"])
        ip(ns, ["ip link set v9 up", "ip addr add 198.18.30.2/24 dev v9",
                "ip route add default via 198.18.30.1 dev v9 proto static metric 130"])
        return mac(lab.router, "r9") + mac(ns, "v9"), link(ns, "v9")["ifindex"]

    eth, index = plug()
    c = child(("eth0", "v9"))
    assert c.next()["ready"][1] == dict(usable=True, addr="198.18.30.2", eth=eth)
    assert_configured(ns, at, "v9")

    ip(ns, ["ip link del v9"])
    assert c.next() == DOWN
    assert iface_state(ns, 1, "v9")["rules"] == [] and sh(ns, "ip route show table 9003") == ""

    eth2, index2 = plug()
    assert index2 != index and eth2 != eth
    assert c.next() == back("198.18.30.2", eth2) and c.ifindex == index2
    assert_configured(ns, at, "v9")
    assert "ingress" in sh(ns, "tc qdisc show dev v9")
    assert "generic-receive-offload: on" in sh(ns, "ethtool -k v9")

    assert c.stop() == {"notes": []}
    # down took back what the new device got, not only what the old one had.
    assert "ingress" not in sh(ns, "tc qdisc show dev v9") and sh(ns, "tc filter show dev v9 ingress") == ""
    assert "generic-receive-offload: off" in sh(ns, "ethtool -k v9")
    ip(ns, ["ip link del v9"])
    assert_same(before, snapshot(ns))


def test_sigkill_at_any_step_of_a_reinstall_or_removal_is_undone_by_down(lab, child, jdir):
    """The daemon dies inside the monitor's work on eth1: after each install step's work (its
    record not written), after each removal step (its entry not dropped). down from the journal
    restores everything: what was done is listed, what is listed but gone is fine."""
    ns = lab.client
    before = snapshot(ns)
    cfg = NetConfig(["eth0", "eth1"])
    steps = len(path_ops(cfg, 1, discover(cfg, netns_name=ns).interfaces[1]))
    assert steps >= 5
    for what in ("install", "removal"):
        for k in range(steps):
            if what == "install":
                ip(ns, ["ip addr del 198.18.2.2/24 dev eth1"])     # configured once it is back
            c = child(die_at=f"{what}:{k}")
            assert c.next()["ready"][1]["usable"] == (what == "removal")
            if what == "install":
                eth1_home(lab)
            else:
                ip(ns, ["ip addr del 198.18.2.2/24 dev eth1"])
            assert c.proc.wait(LIVENESS) == -signal.SIGKILL
            c.kill()
            eth1_home(lab)
            assert down("mptun0", journal_dir=jdir, netns_name=ns) == []
            assert_same(before, snapshot(ns))
