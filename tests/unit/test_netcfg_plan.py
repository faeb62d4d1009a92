"""The netcfg plan without root: config validation, address layout, the operations a
host gets and their order, the u32 port blocks, reserved-port bookkeeping, the journal,
and what undo may touch (over fake kernel state)."""

import json
import os
import signal
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_network

import pytest

import mptun.netcfg.apply as apply_mod
from mptun.netcfg import NetConfig, NetcfgError
from mptun.netcfg.apply import _Executor, _refuse_if_up, down
from mptun.netcfg.capture import capture_keys, port_blocks
from mptun.netcfg.interfaces import RESERVED_PORTS, Host, Interface
from mptun.netcfg.journal import Journal, journal_path
from mptun.netcfg.plan import (IFF_NO_PI, IFF_TUN, IFF_TUN_EXCL, IFF_VNET_HDR, AddCaptureFilter, AddIngressQdisc,
                               AddRoute, AddRule, CreateTun, SetGro, SetLink, SetSysctl, build_plan,
                               format_ports, op_from_json, parse_ports, reserve_ports, unreserve_ports)
from mptun.netcfg.routing import route_request, rule_request


def iface(i, name=None, **kw):
    n = i + 1
    d = dict(name=name or f"eth{i}", index=10 + i, mtu=1500, mac=f"02:00:00:00:00:0{n}", ethernet=True,
             addr=IPv4Interface(f"198.18.{n}.2/24"), addrs=(IPv4Interface(f"198.18.{n}.2/24"),), addrs6=(),
             gateway=IPv4Address(f"198.18.{n}.1"), gateway6=None, ingress_qdisc=None,
             ingress_prios=frozenset(), gro=False)
    d.update(kw)
    return Interface(**d)


def host(*ifaces, **kw):
    ifaces = ifaces or (iface(0), iface(1))
    d = dict(interfaces=tuple(ifaces), link_names=frozenset({"lo"} | {i.name for i in ifaces}),
             rule_priorities=frozenset({0, 32766, 32767}), tables=frozenset({254, 255}),
             addresses=tuple((i.name, i.addr) for i in ifaces if i.addr),
             main_routes=tuple((i.addr.network, i.name) for i in ifaces if i.addr), reserved_ports="")
    d.update(kw)
    return Host(**d)


def plan_for(cfg=None, h=None):
    cfg = cfg or NetConfig(["eth0", "eth1"])
    h = h or host(*(iface(i, name) for i, name in enumerate(cfg.interfaces)))
    return build_plan(cfg, h)


def of(plan, cls):
    return [op for op in plan.ops if isinstance(op, cls)]


# ---------------------------------------------------------------- config and layout

def test_default_layout():
    lay = NetConfig(["eth0"]).layout
    assert lay.tun_addr == lay.listener_addr == IPv4Address("198.19.0.1")
    assert lay.subflow_block == ip_network("198.19.64.0/18")
    assert [lay.subflow_addr(i) for i in range(3)] == [IPv4Address(f"198.19.64.{i}") for i in (1, 2, 3)]
    assert lay.fake_block == ip_network("198.19.128.0/17")


def test_layout_of_a_small_block_stays_inside_it_and_apart():
    cfg = NetConfig(["eth0"], internal="198.18.250.0/24")
    lay = cfg.layout
    assert lay.tun_addr == IPv4Address("198.18.250.1")
    assert lay.subflow_block == ip_network("198.18.250.64/26")
    assert lay.fake_block == ip_network("198.18.250.128/25")
    assert lay.max_subflow_addrs == 62
    for a in (lay.tun_addr, lay.subflow_addr(0), lay.subflow_addr(61)):
        assert a in cfg.internal and a not in lay.fake_block
    assert lay.tun_addr not in lay.subflow_block


@pytest.mark.parametrize("kw, message", [
    (dict(interfaces=[]), "name at least one interface"),
    (dict(interfaces=["eth0", "eth0"]), "interface eth0 is named twice"),
    (dict(interfaces=["a/b"]), "is not an interface name"),
    (dict(tun_name="x" * 16), "not a valid interface name"),
    (dict(tun_name="eth0"), "both the TUN and a path interface"),
    (dict(internal="198.19.0.0/25"), "too small"),
    (dict(internal="198.19.0.1/16"), "host bits set"),
    (dict(internal="2001:2::/48"), "only IPv4"),
    (dict(dest=["nonsense"]), "is not an IP network"),
    (dict(dest=[]), "dest is empty"),
    (dict(exclude=["198.19.128.0/24"]), "overlaps the internal block"),
    (dict(dest=["198.18.100.0/24"], exclude=["198.18.100.0/24"]), "both a destination and excluded"),
    (dict(subflow_ports=(80, 90)), "must be within 1024-65535"),
    (dict(subflow_ports=(62000, 61000)), "must be within 1024-65535"),
    (dict(rule_priority_base=32762), "before the main table's rule"),
    (dict(table_base=252), "reserved"),
    (dict(fwmark=0), "non-zero"),
])
def test_config_errors_are_one_line(kw, message):
    kw = {"interfaces": ["eth0"], **kw}
    with pytest.raises(NetcfgError) as e:
        NetConfig(**kw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_excluding_a_supernet_of_the_internal_block_is_allowed():
    cfg = NetConfig(["eth0"], exclude=["198.16.0.0/12"])
    assert cfg.exclude == (ip_network("198.16.0.0/12"),)


def test_tables_and_priorities_are_distinct():
    cfg = NetConfig(["a", "b", "c"])
    assert len(set(cfg.all_tables())) == 7
    assert cfg.rule_priorities() == [9000, 9001, 9002, 9003, 9004]


# ---------------------------------------------------------------- the plan

def test_tun_is_created_first_with_offload_and_not_persistent():
    plan = plan_for()
    kinds = [op.kind for op in plan.ops]
    assert kinds[0] == "sysctl" and kinds[1] == "tun"
    tun = of(plan, CreateTun)[0]
    assert tun.flags == IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL
    assert tun.offload == 0x7 and tun.vnet_hdr_size == 10
    links = of(plan, SetLink)
    assert links[0].mtu == 65535 and links[0].txqueuelen == 10000
    assert links[-1].up
    # Nothing routes via the TUN before it is up.
    assert kinds.index("route") > plan.ops.index(links[-1])


def test_rules_come_last_and_the_intercepting_rule_is_the_very_last():
    plan = plan_for()
    kinds = [op.kind for op in plan.ops]
    first_rule = kinds.index("rule")
    assert all(k == "rule" for k in kinds[first_rule:])
    last = plan.ops[-1]
    assert isinstance(last, AddRule)
    assert (last.src, last.iif, last.ipproto) == ("0.0.0.0/32", "lo", 6)
    assert (last.fwmark, last.fwmask) == (0, 0x10000000)
    assert last.table == 9000 and last.priority == 9004
    # Just before it: main's specific routes win over the intercept.
    assert plan.ops[-2] == AddRule(9003, 254, "0.0.0.0/32", iif="lo", ipproto=6, suppress_prefixlen=0)


def test_rules_in_detail():
    cfg = NetConfig(["eth0", "eth1"])
    rules = {(r.priority, r.src): r for r in of(plan_for(cfg), AddRule)}
    assert rules[(9000, "198.19.0.1/32")] == AddRule(9000, 9000, "198.19.0.1/32", iif="lo")
    assert rules[(9001, "198.19.64.1/32")] == AddRule(9001, 9002, "198.19.64.1/32", iif="lo")
    assert rules[(9001, "198.19.64.2/32")] == AddRule(9001, 9004, "198.19.64.2/32", iif="lo")
    assert rules[(9002, "198.18.1.2/32")] == AddRule(9002, 9001, "198.18.1.2/32")
    assert rules[(9002, "198.18.2.2/32")] == AddRule(9002, 9003, "198.18.2.2/32")
    assert rules[(9003, "0.0.0.0/32")].table == 254
    assert rules[(9004, "0.0.0.0/32")].table == 9000
    assert len(rules) == len(of(plan_for(cfg), AddRule)) == 7


def test_app_table_intercepts_dest_and_throws_excluded():
    cfg = NetConfig(["eth0", "eth1"], dest=["0.0.0.0/0", "0.0.0.0/0"], exclude=["203.0.113.0/24"])
    routes = [r for r in of(plan_for(cfg), AddRoute) if r.table == 9000]
    assert routes == [AddRoute(9000, "0.0.0.0/0", dev="mptun0", src="198.19.0.1", scope="link"),
                      AddRoute(9000, "203.0.113.0/24", type="throw"),
                      AddRoute(9000, "198.19.128.0/17", dev="mptun0", src="198.19.0.1", scope="link")]


def test_keep_specific_routes_off_drops_the_suppress_rule():
    rules = of(plan_for(NetConfig(["eth0", "eth1"], keep_specific_routes=False)), AddRule)
    assert not [r for r in rules if r.table == 254]
    assert rules[-1].priority == 9004


def test_subflow_routes_leave_room_for_options_and_iface_tables_route_via_gateway():
    h = host(iface(0), iface(1, mtu=9000))
    routes = of(build_plan(NetConfig(["eth0", "eth1"]), h), AddRoute)
    assert AddRoute(9002, "0.0.0.0/0", dev="mptun0", src="198.19.64.1", scope="link",
                    mtu=1460, advmss=1460) in routes
    assert AddRoute(9004, "0.0.0.0/0", dev="mptun0", src="198.19.64.2", scope="link",
                    mtu=8960, advmss=8960) in routes
    assert AddRoute(9001, "198.18.1.0/24", dev="eth0", src="198.18.1.2", scope="link") in routes
    assert AddRoute(9001, "0.0.0.0/0", dev="eth0", gateway="198.18.1.1") in routes
    assert AddRoute(9003, "0.0.0.0/0", dev="eth1", gateway="198.18.2.1") in routes


def test_point_to_point_interface_gets_a_device_default_route():
    ppp = iface(1, name="ppp0", ethernet=False, mac=None, gateway=None,
                addr=IPv4Interface("198.18.9.9/32"), addrs=(IPv4Interface("198.18.9.9/32"),))
    plan = build_plan(NetConfig(["eth0", "ppp0"]), host(iface(0), ppp))
    routes = [r for r in of(plan, AddRoute) if r.table == 9003]
    assert routes == [AddRoute(9003, "0.0.0.0/0", dev="ppp0", scope="link")]


def test_capture_filters_and_qdiscs():
    h = host(iface(0), iface(1, ingress_qdisc="clsact", ingress_prios=frozenset({1})))
    plan = build_plan(NetConfig(["eth0", "eth1"]), h)
    assert of(plan, AddIngressQdisc) == [AddIngressQdisc("eth0")]   # eth1 has one already
    f0, f1 = of(plan, AddCaptureFilter)
    assert (f0.dev, f0.parent, f0.dst, f0.port_value, f0.port_mask, f0.target) == \
        ("eth0", 0xFFFFFFF2, "198.18.1.2", 0xF000, 0xF000, "mptun0")
    assert (f1.dev, f1.parent, f1.dst) == ("eth1", 0xFFFFFFF2, "198.18.2.2")
    assert f0.prio == f1.prio == 0x4D50


def test_unaligned_port_range_needs_several_filters():
    plan = plan_for(NetConfig(["eth0"], subflow_ports=(61000, 61999)))
    filters = of(plan, AddCaptureFilter)
    assert len(filters) == len(port_blocks(61000, 61999)) > 1
    # Each filter alone at its own priority, per interface.
    assert [f.prio for f in filters] == [0x4D50 + k for k in range(len(filters))]


def test_reserved_ports_are_extended_not_replaced():
    plan = plan_for(h=host(reserved_ports="8080"))
    assert of(plan, SetSysctl) == [SetSysctl("net.ipv4.ip_local_reserved_ports", "8080", "8080,61440-65535")]
    plan = plan_for(h=host(reserved_ports="60000-65535"))
    assert of(plan, SetSysctl) == []   # already reserved: nothing to change or undo


def test_gro_only_where_off_and_only_if_asked():
    h = host(iface(0, gro=False), iface(1, gro=True))
    assert of(build_plan(NetConfig(["eth0", "eth1"]), h), SetGro) == [SetGro("eth0", old=False, new=True)]
    assert of(build_plan(NetConfig(["eth0", "eth1"], gro=False), h), SetGro) == []


@pytest.mark.parametrize("change, message", [
    (dict(link_names=frozenset({"lo", "eth0", "eth1", "mptun0"})), "a device named mptun0 exists already"),
    (dict(rule_priorities=frozenset({0, 9001, 32766})), "ip rule priority 9001 is in use"),
    (dict(tables=frozenset({254, 255, 9003})), "routing table 9003 holds routes"),
    (dict(addresses=(("wg0", IPv4Interface("198.19.5.1/24")),)), "overlaps 198.19.5.1/24 on wg0"),
    (dict(main_routes=((IPv4Network("198.19.0.0/16"), "tun7"),)), "overlaps the route 198.19.0.0/16 via tun7"),
])
def test_preflight_refuses_collisions(change, message):
    with pytest.raises(NetcfgError) as e:
        build_plan(NetConfig(["eth0", "eth1"]), host(**change))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_preflight_refuses_a_busy_tc_priority_and_shared_addresses():
    with pytest.raises(NetcfgError, match="tc filter priority 19792 is in use on eth1"):
        build_plan(NetConfig(["eth0", "eth1"]),
                   host(iface(0), iface(1, ingress_qdisc="ingress", ingress_prios=frozenset({0x4D50}))))
    twin = iface(1, addr=IPv4Interface("198.18.1.2/24"))
    with pytest.raises(NetcfgError, match="same address"):
        build_plan(NetConfig(["eth0", "eth1"]), host(iface(0), twin))


def test_every_op_round_trips_through_json_and_describes_itself():
    plan = plan_for(NetConfig(["eth0", "eth1"], exclude=["203.0.113.0/24"]), host(reserved_ports="8080"))
    for op in plan.ops:
        assert op_from_json(json.loads(json.dumps(op.to_json()))) == op
        assert op.describe() and "\n" not in op.describe()


# ---------------------------------------------------------------- request builders

def test_rule_request():
    req = rule_request(AddRule(9004, 9000, "0.0.0.0/32", iif="lo", ipproto=6, fwmark=0, fwmask=0x10))
    assert req == dict(family=2, priority=9004, table=9000, action="FR_ACT_TO_TBL", src="0.0.0.0", src_len=32,
                       iifname="lo", ip_proto=6, fwmark=0, fwmask=0x10)
    req = rule_request(AddRule(9003, 254, "0.0.0.0/32", iif="lo", ipproto=6, suppress_prefixlen=0))
    assert req["suppress_prefixlen"] == 0 and req["table"] == 254
    req = rule_request(AddRule(9002, 9001, "198.18.1.2/32"))
    assert "iifname" not in req and "fwmark" not in req and "ip_proto" not in req


def test_route_request():
    req = route_request(AddRoute(9002, "0.0.0.0/0", dev="mptun0", src="198.19.64.1", scope="link",
                                 mtu=1460, advmss=1460), {"mptun0": 7}.__getitem__)
    assert req == dict(family=2, table=9002, dst="0.0.0.0/0", type="unicast", proto=4, scope=253, oif=7,
                       prefsrc="198.19.64.1", metrics={"mtu": 1460, "advmss": 1460})
    req = route_request(AddRoute(9000, "10.0.0.0/8", type="throw"), {}.__getitem__)
    assert req == dict(family=2, table=9000, dst="10.0.0.0/8", type="throw", proto=4, scope=0)


# ---------------------------------------------------------------- u32 port blocks

@pytest.mark.parametrize("lo, hi", [(61440, 65535), (61000, 61999), (1024, 1024), (1024, 65535),
                                    (40000, 40001), (32768, 60999), (65535, 65535), (1025, 2047)])
def test_port_blocks_cover_the_range_exactly(lo, hi):
    blocks = port_blocks(lo, hi)
    covered = [p for p in range(65536) if any((p & m) == v for v, m in blocks)]
    assert covered == list(range(lo, hi + 1))
    for v, m in blocks:
        assert v & ~m & 0xFFFF == 0 and m & 0x8000   # prefix masks, values aligned


def test_aligned_range_is_one_block():
    assert port_blocks(61440, 65535) == [(0xF000, 0xF000)]
    assert port_blocks(4096, 8191) == [(0x1000, 0xF000)]


def test_capture_keys():
    assert capture_keys("198.18.1.2", 0xF000, 0xF000) == [
        "0x45000000/0xff000000+0", "0x00000000/0x00001fff+4", "0x00060000/0x00ff0000+8",
        "0xc6120102/0xffffffff+16", "0x0000f000/0x0000f000+20"]


# ---------------------------------------------------------------- reserved ports

@pytest.mark.parametrize("old", ["", "8080", "1000-2000,8080", "61000-61500"])
def test_reserve_then_unreserve_gives_back_old(old):
    new = reserve_ports(old, 61440, 65535)
    assert set(range(61440, 65536)) <= parse_ports(new)
    assert parse_ports(old) <= parse_ports(new)
    # The kernel reads the value back merged and in its own format.
    written = format_ports(parse_ports(new))
    assert unreserve_ports(written, old, written) == old


def test_unreserve_keeps_what_others_added_meanwhile():
    written = "8080,61440-65535"
    assert unreserve_ports("8080,9000,61440-65535", "8080", written) == "8080,9000"


def test_port_text_round_trip():
    assert parse_ports("1,3-5, 7") == {1, 3, 4, 5, 7}
    assert format_ports({1, 3, 4, 5, 7}) == "1,3-5,7"
    assert format_ports(set()) == "" and parse_ports("") == set()


# ---------------------------------------------------------------- journal

def test_journal_is_exclusive_and_survives_reload(tmp_path):
    path = journal_path("mptun0", str(tmp_path))
    j = Journal.create(path, {"tun": "mptun0"})
    with pytest.raises(FileExistsError):
        Journal.create(path, {"tun": "mptun0"})
    j.append({"kind": "rule", "x": 1})
    j.update_last(note=2)
    j.append({"kind": "route"})
    j.drop_last()
    again = Journal.load(path)
    assert again.header["tun"] == "mptun0" and again.header["version"] == 1
    assert again.entries == [{"op": {"kind": "rule", "x": 1}, "extra": {"note": 2}}]
    assert not os.path.exists(path + ".tmp")
    j.remove()
    assert not os.path.exists(path)
    j.remove()   # twice is fine


def test_damaged_journal_is_one_line(tmp_path):
    path = journal_path("mptun0", str(tmp_path))
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(NetcfgError, match="damaged") as e:
        Journal.load(path)
    assert "\n" not in str(e.value)


# A child process that creates the journal and is SIGKILLed right after the k-th os call
# Journal.create makes (whatever those calls are); it prints "done" if create finished first.
_KILL_IN_CREATE = """
import sys
import mptun.netcfg.journal as J
from tests.unit.kill_points import killed_after_os_call
k, path = int(sys.argv[1]), sys.argv[2]
with killed_after_os_call(J, k):
    J.Journal.create(path, {"tun": "mptun0", "interfaces": ["eth0"], "netns": None, "netns_inode": 1})
print("done")
"""


def test_sigkill_inside_journal_create_leaves_nothing_down_cannot_clear(tmp_path):
    """Wherever create dies, the journal it leaves is one `down` removes (nothing was changed
    yet), after which `up` is no longer refused; never one it calls damaged."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for k in range(100):
        jdir = tmp_path / str(k)
        path = journal_path("mptun0", str(jdir))
        proc = subprocess.run([sys.executable, "-c", _KILL_IN_CREATE, str(k), path], cwd=repo,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            assert proc.stdout.strip() == "done" and k > 0
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        if os.path.exists(path):
            assert Journal.load(path).entries == []
            with pytest.raises(NetcfgError, match="already up"):
                _refuse_if_up("mptun0", path)
            assert down("mptun0", journal_dir=str(jdir)) == []
        if jdir.exists():
            assert not [f for f in os.listdir(jdir) if f.startswith("mptun0")]   # no .tmp left either
        _refuse_if_up("mptun0", path)
    else:
        raise AssertionError("Journal.create never finished")


def test_empty_journal_file_has_no_entries_and_down_removes_it(tmp_path):
    path = journal_path("mptun0", str(tmp_path))
    open(path, "w").close()
    j = Journal.load(path)
    assert j.entries == [] and j.header["version"] == 1
    assert down("mptun0", journal_dir=str(tmp_path)) == []
    assert not os.path.exists(path)


def test_created_journal_is_complete_on_disk_at_once(tmp_path, monkeypatch):
    """The header goes through the exclusive fd: no rewrite (and no .tmp) is needed to finish it."""
    path = journal_path("mptun0", str(tmp_path))
    replaced = []
    monkeypatch.setattr(os, "replace", lambda *a: replaced.append(a))
    Journal.create(path, {"tun": "mptun0"})
    assert replaced == []
    with open(path) as f:
        assert json.load(f) == {"version": 1, "tun": "mptun0", "entries": []}


# ---------------------------------------------------------------- guarded undo

def test_unreserve_leaves_a_range_someone_else_rewrote():
    """Some of mptun's ports are no longer reserved: the value was rewritten since, and what is
    left of the range may be someone else's now. Nothing is removed."""
    assert unreserve_ports("62000-62010", "", "61440-65535") is None
    assert unreserve_ports("8080,61440-62000", "8080", "8080,61440-65535") is None
    # The range whole: what others added beside it stays, the range goes.
    assert unreserve_ports("9000,61440-65535", "", "61440-65535") == "9000"


class _Msg(dict):
    def get_attr(self, name):
        return self.get(name)


class FakeIpr:
    """The few IPRoute calls the qdisc steps make, over a dict of devices."""

    def __init__(self, links, ingress=(), filters=()):
        self.links = dict(links)             # name -> ifindex
        self.ingress = set(ingress)          # ifindexes with an ingress qdisc
        self.filters = list(filters)
        self.calls = []

    def link_lookup(self, ifname):
        return [self.links[ifname]] if ifname in self.links else []

    def get_qdiscs(self, index):
        return [_Msg(TCA_KIND="ingress")] if index in self.ingress else []

    def get_filters(self, index, parent):
        return list(self.filters)

    def tc(self, cmd, kind, index):
        self.calls.append((cmd, kind, index))
        if cmd == "add":
            self.ingress.add(index)
        elif cmd == "del":
            self.ingress.discard(index)


@pytest.fixture
def executor(tmp_path):
    made = []

    def make(ipr):
        made.append(ipr)
        path = journal_path("mptun0", str(tmp_path / str(len(made))))
        return _Executor(ipr, Journal.create(path, {"tun": "mptun0"}))

    return make


def test_qdisc_undo_without_its_record_leaves_the_qdisc(executor):
    """SIGKILL between journaling the step and adding the qdisc: the ingress qdisc there now
    (no filters) may be someone else's, so it stays, with a note."""
    ipr = FakeIpr({"eth0": 7}, ingress={7})
    note = executor(ipr).undo(AddIngressQdisc("eth0"), {})
    assert ipr.ingress == {7} and ipr.calls == []
    assert "eth0" in note and "left as it is" in note
    # No qdisc there at all: nothing to say.
    assert executor(FakeIpr({"eth0": 7})).undo(AddIngressQdisc("eth0"), {}) is None


def test_qdisc_step_records_its_device_and_undo_removes_that_qdisc(executor):
    ipr = FakeIpr({"eth0": 7})
    ex = executor(ipr)
    ex.do(AddIngressQdisc("eth0"))
    assert ex.journal.entries[-1]["extra"] == {"ifindex": 7}
    assert ex.undo(AddIngressQdisc("eth0"), ex.journal.entries[-1]["extra"]) is None
    assert ipr.ingress == set() and ipr.calls == [("add", "ingress", 7), ("del", "ingress", 7)]


def test_qdisc_undo_leaves_a_qdisc_on_another_device_of_that_name(executor):
    ipr = FakeIpr({"eth0": 9}, ingress={9})
    note = executor(ipr).undo(AddIngressQdisc("eth0"), {"ifindex": 7})
    assert ipr.ingress == {9} and "left as it is" in note


def test_qdisc_undo_leaves_a_qdisc_holding_filters_of_someone_else(executor):
    ipr = FakeIpr({"eth0": 7}, ingress={7}, filters=[{"info": 7 << 16, "handle": 0x800}])
    note = executor(ipr).undo(AddIngressQdisc("eth0"), {"ifindex": 7})
    assert ipr.ingress == {7} and "someone else" in note


@pytest.fixture
def gro(monkeypatch):
    """The GRO setting of each device, behind apply's get_gro/set_gro."""
    state = {"eth0": False}
    sets = []
    monkeypatch.setattr(apply_mod, "get_gro", lambda dev: state.get(dev))
    monkeypatch.setattr(apply_mod, "set_gro", lambda dev, on: (sets.append((dev, on)), state.__setitem__(dev, on)))
    return state, sets


def test_gro_step_records_what_the_device_reports(executor, gro):
    state, sets = gro
    ex = executor(FakeIpr({"eth0": 7}))
    ex.do(SetGro("eth0", old=False, new=True))
    assert ex.journal.entries[-1]["extra"] == {"gro": True}
    assert ex.undo(SetGro("eth0", old=False, new=True), {"gro": True}) is None
    assert state["eth0"] is False and sets == [("eth0", True), ("eth0", False)]


def test_gro_undo_without_its_record_changes_nothing(executor, gro):
    """SIGKILL between journaling and setting GRO: GRO on now may be someone else's doing."""
    state, sets = gro
    state["eth0"] = True
    note = executor(FakeIpr({"eth0": 7})).undo(SetGro("eth0", old=False, new=True), {})
    assert sets == [] and state["eth0"] is True
    assert "eth0" in note and "left as it is" in note
    state["eth0"] = False
    assert executor(FakeIpr({"eth0": 7})).undo(SetGro("eth0", old=False, new=True), {}) is None
    assert sets == []


def test_gro_undo_leaves_a_setting_that_is_not_what_mptun_set(executor, gro):
    state, sets = gro
    ex = executor(FakeIpr({"eth0": 7}))
    # The driver kept GRO off: mptun changed nothing.
    assert ex.undo(SetGro("eth0", old=False, new=True), {"gro": False}) is None
    # The user turned it off again since: nothing left to undo.
    assert ex.undo(SetGro("eth0", old=False, new=True), {"gro": True}) is None
    assert sets == []


@pytest.fixture
def sysctls(monkeypatch):
    values = {}
    writes = []
    monkeypatch.setattr(apply_mod, "read_sysctl", lambda key: values[key])
    monkeypatch.setattr(apply_mod, "write_sysctl", lambda key, v: (writes.append(v), values.__setitem__(key, v)))
    return values, writes


def test_reserved_ports_undo_leaves_a_value_someone_else_rewrote(executor, sysctls):
    values, writes = sysctls
    values[RESERVED_PORTS] = "62000-62010"
    note = executor(FakeIpr({})).undo(SetSysctl(RESERVED_PORTS, "", "61440-65535"), {"written": "61440-65535"})
    assert writes == [] and "left as it is" in note


def test_reserved_ports_undo_keeps_what_others_added_beside_the_range(executor, sysctls):
    values, writes = sysctls
    values[RESERVED_PORTS] = "8080,9000,61440-65535"
    op = SetSysctl(RESERVED_PORTS, "8080", "8080,61440-65535")
    assert executor(FakeIpr({})).undo(op, {"written": "8080,61440-65535"}) is None
    assert writes == ["8080,9000"]


def test_reserved_ports_undo_without_its_record(executor, sysctls):
    """SIGKILL between writing the value and recording it: the value is mptun's only if it is
    exactly what was being written."""
    values, writes = sysctls
    op = SetSysctl(RESERVED_PORTS, "8080", "8080,61440-65535")
    values[RESERVED_PORTS] = "8080,61440-65535"
    assert executor(FakeIpr({})).undo(op, {}) is None
    assert writes == ["8080"]
    writes.clear()
    values[RESERVED_PORTS] = "8080"   # killed before the write
    assert executor(FakeIpr({})).undo(op, {}) is None
    assert writes == []
    values[RESERVED_PORTS] = "8080,9000,61440-65535"   # and someone else wrote since
    assert "left as it is" in executor(FakeIpr({})).undo(op, {})
    assert writes == []
