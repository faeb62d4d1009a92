"""Interfaces that come and go, without root: the plan with unusable interfaces, when a path may be
configured, how netlink notifications are read (real rtnetlink encodings), and LivePaths keeping
the journal equal to what is in place (over a fake kernel of rules, routes and filters)."""

import errno
from ipaddress import IPv4Interface

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

import mptun.netcfg.apply as apply_mod
import mptun.netcfg.live as live_mod
from mptun.io.pathmon import CHANGED, DOWN, NEIGH, classify
from mptun.io.paths import eth_header
from mptun.netcfg import NetConfig, NetcfgError
from mptun.netcfg.apply import Applied, _Executor
from mptun.netcfg.journal import Journal, journal_path
from mptun.netcfg.live import LivePaths, needs_reinstall
from mptun.netcfg.plan import (FALLBACK_METRIC, AddCaptureFilter, AddIngressQdisc, AddRoute, AddRule, SetGro,
                               build_plan, path_ops, path_problem)
from mptun.netcfg.routing import route_request
from tests.unit.test_netcfg_plan import host, iface, of

CFG = NetConfig(["eth0", "eth1"])


def down_iface(i, why="link down", **kw):
    return iface(i, why=why, **kw)


# ---------------------------------------------------------------- the plan

def test_an_unusable_interface_gets_only_what_does_not_depend_on_its_address():
    plan = build_plan(CFG, host(iface(0), down_iface(1, addr=None, addrs=())))
    assert plan.paths[1] == () and plan.paths[0] == path_ops(CFG, 0, iface(0))
    assert all(op in plan.ops for op in plan.paths[0])
    # Nothing from or for its address...
    assert [r.src for r in of(plan, AddRule) if r.priority == 9002] == ["198.18.1.2/32"]
    assert [f.dev for f in of(plan, AddCaptureFilter)] == ["eth0"]
    assert not [r for r in of(plan, AddRoute) if r.table == 9003]
    # ...but its subflow rule and its table's fallback (connects fail at once), the device's
    # qdisc and GRO: so that it only needs path_ops when it comes.
    assert [r for r in of(plan, AddRoute) if r.table == 9004] == [
        AddRoute(9004, "0.0.0.0/0", type="unreachable", metric=FALLBACK_METRIC)]
    assert AddRule(9001, 9004, "198.19.64.2/32", iif="lo") in plan.ops
    assert AddIngressQdisc("eth1") in plan.ops and SetGro("eth1", old=False, new=True) in plan.ops


def test_path_ops_follow_the_address_and_end_with_its_rule():
    moved = iface(1, addr=IPv4Interface("198.18.12.2/24"), addrs=(IPv4Interface("198.18.12.2/24"),),
                  gateway=iface(1).gateway.__class__("198.18.12.1"))
    ops = path_ops(CFG, 1, moved)
    assert ops[0] == AddRoute(9004, "0.0.0.0/0", dev="mptun0", src="198.19.64.2", scope="link", mtu=1460,
                              advmss=1460)
    assert AddRoute(9003, "198.18.12.0/24", dev="eth1", src="198.18.12.2", scope="link") in ops
    assert AddRoute(9003, "0.0.0.0/0", dev="eth1", gateway="198.18.12.1") in ops
    assert [f.dst for f in ops if isinstance(f, AddCaptureFilter)] == ["198.18.12.2"]
    assert ops[-1] == AddRule(9002, 9003, "198.18.12.2/32")
    assert path_ops(CFG, 1, iface(1)) != ops


def test_up_needs_one_usable_interface_and_says_why_each_is_not():
    with pytest.raises(NetcfgError) as e:
        build_plan(CFG, host(down_iface(0, addr=None, addrs=(), why="no IPv4 address"), down_iface(1)))
    assert str(e.value) == "no usable interface: eth0: no IPv4 address; eth1: link down"


def test_the_fallback_route_has_its_metric_in_the_request():
    req = route_request(AddRoute(9004, "0.0.0.0/0", type="unreachable", metric=FALLBACK_METRIC), {}.__getitem__)
    assert req == dict(family=2, table=9004, dst="0.0.0.0/0", type="unreachable", proto=4, scope=0,
                       priority=0xFFFFFFFF)
    assert "metric 4294967295" in AddRoute(9004, "0.0.0.0/0", type="unreachable", metric=FALLBACK_METRIC).describe()


def test_path_problem_is_preflight_for_one_interface():
    assert path_problem(CFG, iface(1), {}) is None
    assert path_problem(CFG, down_iface(1, why="no carrier"), {}) == "no carrier"
    assert path_problem(CFG, iface(1), {iface(1).addr.ip: "eth0"}) == "same address 198.18.2.2 as eth0"
    inside = iface(1, addr=IPv4Interface("198.19.5.2/24"), addrs=(IPv4Interface("198.19.5.2/24"),))
    assert "overlaps the internal block" in path_problem(CFG, inside, {})
    busy = iface(1, ingress_qdisc="ingress", ingress_prios=frozenset({0x4D50}))
    assert path_problem(CFG, busy, {}) == "tc filter priority 19792 is in use on its ingress"


def test_what_is_installed_goes_when_it_differs_or_may_be_damaged():
    ops = path_ops(CFG, 1, iface(1))
    assert not needs_reinstall(ops, ops, False)
    assert needs_reinstall(ops, ops, True)                           # flapped: routes flushed meanwhile
    assert needs_reinstall(ops, (), False)                           # unusable now
    assert needs_reinstall(ops, path_ops(CFG, 1, iface(1, mtu=1400)), False)
    assert not needs_reinstall((), ops, True)                        # nothing there to remove


def test_eth_header():
    assert eth_header("02:00:00:00:00:01", "02:00:00:00:00:02").hex() == "020000000001020000000002"
    assert eth_header(None, None) == b""


# ---------------------------------------------------------------- notifications

def encoded(cls, kind, fields, attrs):
    m = cls()
    m["header"]["type"] = kind
    m.update(fields)
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def parsed(data):
    return list(MarshalRtnl().parse(data))


IFACES = [iface(0), iface(1)]   # eth0 index 10, eth1 index 11
NAMES = {"eth0": 0, "eth1": 1}


@pytest.mark.parametrize("kind, fields, attrs, expect", [
    (16, dict(index=11, flags=0x41), [("IFLA_IFNAME", "eth1")], [(1, CHANGED)]),          # up, running
    (16, dict(index=11, flags=0x01), [("IFLA_IFNAME", "eth1")], [(1, DOWN)]),             # no carrier
    (16, dict(index=11, flags=0x40), [("IFLA_IFNAME", "eth1")], [(1, DOWN)]),             # admin down
    (17, dict(index=11, flags=0x41), [("IFLA_IFNAME", "eth1")], [(1, DOWN)]),             # deleted
    (16, dict(index=77, flags=0x41), [("IFLA_IFNAME", "eth1")], [(1, CHANGED)]),          # back, new index
    (16, dict(index=3, flags=0x00), [("IFLA_IFNAME", "mptun0")], []),
])
def test_link_notifications(kind, fields, attrs, expect):
    (msg,) = parsed(encoded(ifinfmsg, kind, fields, attrs))
    assert classify(msg, IFACES, NAMES) == expect


def test_address_route_and_neighbour_notifications():
    def one(cls, kind, fields, attrs):
        (msg,) = parsed(encoded(cls, kind, fields, attrs))
        return classify(msg, IFACES, NAMES)

    # Its own address gone: down. Another address (or a new one): a change to look at.
    assert one(ifaddrmsg, 21, dict(family=2, index=11), [("IFA_LOCAL", "198.18.2.2")]) == [(1, DOWN)]
    assert one(ifaddrmsg, 21, dict(family=2, index=11), [("IFA_LOCAL", "198.18.2.9")]) == [(1, CHANGED)]
    assert one(ifaddrmsg, 20, dict(family=2, index=10), [("IFA_LOCAL", "198.18.1.7")]) == [(0, CHANGED)]
    assert one(ifaddrmsg, 20, dict(family=10, index=10), [("IFA_ADDRESS", "2001:2::1")]) == []
    # main's routes (each hop of a multipath one); other tables are mptun's own or nobody's business.
    assert one(rtmsg, 25, dict(family=2, table=254), [("RTA_OIF", 11)]) == [(1, CHANGED)]
    assert one(rtmsg, 24, dict(family=2, table=254), [("RTA_MULTIPATH", [{"oif": 10}, {"oif": 11}])]) == \
        [(0, CHANGED), (1, CHANGED)]
    # (a table above 255 is in RTA_TABLE, rtm_table says 252, RT_TABLE_COMPAT, as the kernel sends it)
    assert one(rtmsg, 24, dict(family=2, table=252), [("RTA_TABLE", 9003), ("RTA_OIF", 11)]) == []
    assert one(rtmsg, 24, dict(family=2, table=254), [("RTA_OIF", 99)]) == []
    # The gateway's neighbour entry only.
    assert one(ndmsg, 28, dict(family=2, ifindex=11), [("NDA_DST", "198.18.2.1")]) == [(1, NEIGH)]
    assert one(ndmsg, 28, dict(family=2, ifindex=11), [("NDA_DST", "198.18.2.50")]) == []


# ---------------------------------------------------------------- LivePaths over a fake kernel

def _key(req):
    return tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in req.items()))


class FakeKernel:
    """Rules and routes as sets of requests (del of a missing one fails as the kernel's does),
    filters by (device, priority); `fail` makes one kind of request fail."""

    def __init__(self):
        self.links = {"mptun0": 3, "eth0": 10, "eth1": 11}
        self.objects: set = set()
        self.fail: tuple | None = None     # (what, cmd, errno)

    def link_lookup(self, ifname):
        return [self.links[ifname]] if ifname in self.links else []

    def _do(self, what, cmd, key):
        if self.fail and self.fail[:2] == (what, cmd):
            raise NetlinkError(self.fail[2], "injected")
        if cmd == "add":
            if key in self.objects:
                raise NetlinkError(errno.EEXIST, "exists")
            self.objects.add(key)
        elif key in self.objects:
            self.objects.remove(key)
        else:
            raise NetlinkError(errno.ESRCH if what == "route" else errno.ENOENT, "missing")

    def route(self, cmd, **req):
        self._do("route", cmd, ("route", _key(req)))

    def rule(self, cmd, **req):
        self._do("rule", cmd, ("rule", _key(req)))

    def close(self):
        pass


@pytest.fixture
def kernel(monkeypatch):
    k = FakeKernel()

    def add_filter(ipr, index, parent, prio, keys, target):
        k._do("filter", "add", ("filter", index, prio, tuple(keys)))
        return 0x800

    def del_filter(ipr, index, parent, prio, handle):
        found = [o for o in k.objects if o[:3] == ("filter", index, prio)]
        if found:
            k.objects.remove(found[0])

    monkeypatch.setattr(apply_mod.capture, "add_filter", add_filter)
    monkeypatch.setattr(apply_mod.capture, "del_filter", del_filter)
    monkeypatch.setattr(live_mod, "IPRoute", lambda: k)
    return k


@pytest.fixture
def live(kernel, tmp_path, monkeypatch):
    """LivePaths after an `up` with eth0 and eth1 usable (their path ops done and journaled)."""
    now = {"eth0": iface(0), "eth1": iface(1)}
    monkeypatch.setattr(live_mod, "read_interface", lambda ipr, name: now[name])
    plan = build_plan(CFG, host(now["eth0"], now["eth1"]))
    path = journal_path("mptun0", str(tmp_path))
    ex = _Executor(kernel, Journal.create(path, {"tun": "mptun0"}))
    for ops in plan.paths:
        for op in ops:
            ex.do(op)
    lp = LivePaths(Applied(cfg=CFG, plan=plan, tun=None, journal_path=path, netns=None))
    lp.now = now
    return lp


def journaled(lp):
    return [e["op"] for e in Journal.load(lp.journal.path).entries]


def test_down_removes_the_path_and_its_entries_and_back_installs_the_new_address(live, kernel):
    before = set(kernel.objects)
    eth0_ops = [op.to_json() for op in live.installed[0]]
    live.now["eth1"] = down_iface(1)
    r = live.refresh(1)
    assert (r.removed, r.installed, r.notes) == (True, False, [])
    assert live.installed[1] == () and live.why[1] == "link down"
    assert journaled(live) == eth0_ops
    assert kernel.objects < before and len(kernel.objects) == len(eth0_ops)
    assert not [o for o in kernel.objects if "198.18.2.2" in str(o) or "198.19.64.2" in str(o)]

    moved = iface(1, addr=IPv4Interface("198.18.12.2/24"), addrs=(IPv4Interface("198.18.12.2/24"),))
    live.now["eth1"] = moved
    r = live.refresh(1)
    assert (r.removed, r.installed) == (False, True)
    assert live.installed[1] == path_ops(CFG, 1, moved) and live.why[1] is None
    assert journaled(live) == eth0_ops + [op.to_json() for op in path_ops(CFG, 1, moved)]
    assert len(kernel.objects) == len(journaled(live))
    # Nothing changed: nothing done.
    assert live.refresh(1) == live_mod.Refresh()


def test_what_the_kernel_flushed_already_is_fine_and_a_flap_reinstalls(live, kernel):
    before = set(kernel.objects)
    routes_of_eth1 = {o for o in kernel.objects if o[0] == "route" and dict(o[1]).get("table") == 9003}
    kernel.objects -= routes_of_eth1          # the link went down and came back meanwhile
    r = live.refresh(1, flapped=True)
    assert (r.removed, r.installed, r.notes) == (True, True, [])
    assert kernel.objects == before
    assert len(journaled(live)) == len(before)


def test_a_failed_install_is_rolled_back_and_says_why(live, kernel):
    live.now["eth1"] = down_iface(1)
    live.refresh(1)
    kept = set(kernel.objects)
    kernel.fail = ("rule", "add", errno.EPERM)
    live.now["eth1"] = iface(1)
    r = live.refresh(1)
    assert not r.installed and live.installed[1] == ()
    assert live.why[1] == "could not rule 9002: from 198.18.2.2/32 lookup 9003: Operation not permitted"
    assert kernel.objects == kept and len(journaled(live)) == len(kept)
    kernel.fail = None
    assert live.refresh(1).installed


def test_an_undo_that_fails_stays_journaled_for_down(live, kernel):
    kernel.fail = ("route", "del", errno.EPERM)
    live.now["eth1"] = down_iface(1)
    r = live.refresh(1)
    assert r.removed and len(r.notes) == 3 and all("Operation not permitted" in n for n in r.notes)
    assert len([e for e in journaled(live) if e["kind"] == "route" and e["table"] in (9003, 9004)]) == 3
    assert not [e for e in journaled(live) if e["kind"] == "rule" and e["table"] == 9003]


def test_an_address_another_path_has_is_not_configured(live, kernel):
    live.now["eth1"] = down_iface(1)
    live.refresh(1)
    live.now["eth1"] = iface(1, addr=iface(0).addr, addrs=iface(0).addrs)
    r = live.refresh(1)
    assert not r.installed and live.why[1] == "same address 198.18.1.2 as eth0"


def test_a_device_that_is_another_one_now_gets_its_device_ops_and_forgets_the_old(live, kernel, monkeypatch):
    live.journal.append(AddIngressQdisc("eth1").to_json(), ifindex=11)
    live.now["eth1"] = down_iface(1)
    live.refresh(1)
    kernel.links["eth1"] = 12
    monkeypatch.setattr(apply_mod.capture, "add_qdisc", lambda ipr, index: None)
    monkeypatch.setattr(apply_mod, "set_gro", lambda dev, on: None)
    monkeypatch.setattr(apply_mod, "get_gro", lambda dev: True)
    live.now["eth1"] = iface(1, index=12)
    assert live.refresh(1).installed
    qdiscs = [e for e in live.journal.entries if e["op"]["kind"] == "qdisc"]
    assert qdiscs == [{"op": AddIngressQdisc("eth1").to_json(), "extra": {"ifindex": 12}}]
    assert [e["op"]["kind"] for e in live.journal.entries if e["op"].get("dev") == "eth1"][:1] == ["gro"]
