"""The plan: a pure function from a NetConfig and the discovered Host to the ordered
list of operations `mptun up` performs.

Each operation is a small frozen value that says what to create, how to describe it,
and (by its kind) how to take it back; apply.py performs them. Nothing here touches
the system, so every decision is tested without root (tests/unit/test_netcfg_plan.py).
`path_ops` is the part that depends on one interface's address: `up` performs it for
the interfaces usable then, live.py for each one whenever it becomes usable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from mptun.netcfg.capture import INGRESS_FILTER_PARENT, capture_keys, icmp_capture_keys, port_blocks
from mptun.netcfg.config import IPV4_TCP_HEADERS, NetConfig
from mptun.netcfg.errors import NetcfgError
from mptun.netcfg.interfaces import RESERVED_PORTS, RT_TABLE_MAIN, Host, Interface
from mptun.netcfg.tun import IFF_NO_PI, IFF_TUN, IFF_TUN_EXCL, IFF_VNET_HDR, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6
from mptun.wire.tcpip import IPPROTO_TCP


# ---------------------------------------------------------------- operations

_KINDS: dict[str, type[Op]] = {}


@dataclass(frozen=True)
class Op:
    """One step of `mptun up`. `journaled`: its undo is written before it runs;
    False for settings of the TUN itself, which vanish with the device. `summary`:
    what describe() says, formatted with the fields (an op whose text depends on
    which fields are set overrides describe() instead)."""

    kind: ClassVar[str] = ""
    journaled: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, *, kind: str, journaled: bool = True, summary: str = "", **kw):
        super().__init_subclass__(**kw)
        cls.kind, cls.journaled, cls.summary = kind, journaled, summary
        _KINDS[kind] = cls

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def describe(self) -> str:
        assert self.summary, f"{type(self).__name__} says nothing about itself"
        return self.summary.format_map(asdict(self))


def op_from_json(d: dict) -> Op:
    cls = _KINDS[d["kind"]]
    # Fields a journal does not have (written by an older mptun) take their defaults.
    return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class SetSysctl(Op, kind="sysctl", summary="sysctl {key} = {new!r} (was {old!r})"):
    """A namespace-wide sysctl; undo writes `old` back (removing only what we added)."""

    key: str
    old: str
    new: str


@dataclass(frozen=True)
class CreateTun(Op, kind="tun", summary="create TUN {name} (IFF_TUN|IFF_NO_PI|IFF_VNET_HDR, not persistent), "
                                         "vnet header {vnet_hdr_size} bytes, offload {offload:#x} (CSUM|TSO4|TSO6)"):
    name: str
    flags: int
    vnet_hdr_size: int
    offload: int


@dataclass(frozen=True)
class SetDeviceSysctl(Op, kind="device_sysctl", journaled=False, summary="sysctl {key} = {value}"):
    """A per-device sysctl of the TUN: gone with the device."""

    key: str
    value: str


@dataclass(frozen=True)
class SetLink(Op, kind="link", journaled=False):
    name: str
    mtu: int | None = None
    txqueuelen: int | None = None
    up: bool = False

    def describe(self) -> str:
        parts = [f"mtu {self.mtu}" if self.mtu else "", f"txqueuelen {self.txqueuelen}" if self.txqueuelen else "",
                 "up" if self.up else ""]
        return f"link {self.name} " + " ".join(p for p in parts if p)


@dataclass(frozen=True)
class AddAddress(Op, kind="addr", journaled=False, summary="address {address} on {dev}"):
    dev: str
    address: str          # "198.19.0.1/32"


@dataclass(frozen=True)
class AddRoute(Op, kind="route"):
    table: int
    dst: str              # "0.0.0.0/0"
    type: str = "unicast"  # or "throw": lookup in this table stops, the next rule is tried
    dev: str | None = None
    gateway: str | None = None
    src: str | None = None
    scope: str = "universe"   # or "link"
    mtu: int | None = None
    advmss: int | None = None
    metric: int | None = None

    def describe(self) -> str:
        s = ("" if self.type == "unicast" else self.type + " ") + self.dst
        if self.gateway:
            s += f" via {self.gateway}"
        if self.dev:
            s += f" dev {self.dev}"
        if self.scope != "universe":
            s += f" scope {self.scope}"
        if self.src:
            s += f" src {self.src}"
        if self.mtu:
            s += f" mtu {self.mtu}"
        if self.advmss:
            s += f" advmss {self.advmss}"
        if self.metric is not None:
            s += f" metric {self.metric}"
        return f"route {s} table {self.table}"


@dataclass(frozen=True)
class AddRule(Op, kind="rule"):
    priority: int
    table: int
    src: str                  # "198.19.0.1/32"; "0.0.0.0/32" matches only unbound sockets
    iif: str | None = None    # "lo": locally originated (and rp_filter's reverse lookups)
    ipproto: int | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    suppress_prefixlen: int | None = None   # results this specific or less are ignored

    def describe(self) -> str:
        s = f"rule {self.priority}: from {self.src}"
        if self.fwmask is not None:
            s += f" fwmark {self.fwmark:#x}/{self.fwmask:#x}"
        if self.iif:
            s += f" iif {self.iif}"
        if self.ipproto:
            s += " ipproto tcp" if self.ipproto == IPPROTO_TCP else f" ipproto {self.ipproto}"
        s += " lookup " + ("main" if self.table == RT_TABLE_MAIN else str(self.table))
        if self.suppress_prefixlen is not None:
            s += f" suppress_prefixlength {self.suppress_prefixlen}"
        return s


@dataclass(frozen=True)
class SetGro(Op, kind="gro"):
    dev: str
    old: bool
    new: bool

    def describe(self) -> str:
        return f"gro {'on' if self.new else 'off'} on {self.dev} (was {'on' if self.old else 'off'})"


@dataclass(frozen=True)
class AddIngressQdisc(Op, kind="qdisc", summary="tc qdisc ingress on {dev}"):
    dev: str


@dataclass(frozen=True)
class AddCaptureFilter(Op, kind="filter", summary="tc filter on {dev} ingress prio {prio}: tcp dst {dst} "
                                                 "dport {port_value:#06x}/{port_mask:#06x} -> mirred redirect {target}"):
    """u32 on dev's ingress: TCP to dst with (dport & port_mask) == port_value,
    redirected (mirred egress) into the TUN `target`. Alone at its priority, so
    the handle the kernel gives it is found (and journaled) after adding it."""

    dev: str
    parent: int
    prio: int
    dst: str
    port_value: int
    port_mask: int
    target: str

    @property
    def keys(self) -> list[str]:
        return capture_keys(self.dst, self.port_value, self.port_mask)


@dataclass(frozen=True)
class AddIcmpCaptureFilter(Op, kind="icmp_filter",
                           summary="tc filter on {dev} ingress prio {prio}: icmp errors quoting tcp sport "
                                   "{port_value:#06x}/{port_mask:#06x} -> mirred redirect {target}"):
    """u32 on dev's ingress: ICMP destination unreachable and time exceeded about a TCP segment
    from a port in one block of the subflow range, redirected into the TUN, where the datapath
    hands them to the subflow socket. It does not depend on dev's address: added once per device
    with the qdisc, it stays while the address changes. Added and removed like AddCaptureFilter."""

    dev: str
    parent: int
    prio: int
    port_value: int
    port_mask: int
    target: str

    @property
    def keys(self) -> list[str]:
        return icmp_capture_keys(self.port_value, self.port_mask)


def icmp_tc_prios(cfg: NetConfig) -> list[int]:
    """The ICMP filters' priorities: one per port block, right after the TCP filters'."""
    prios = cfg.tc_prios()
    return [p + len(prios) for p in prios]


def icmp_capture_ops(cfg: NetConfig, iface: Interface) -> list[Op]:
    return [AddIcmpCaptureFilter(iface.name, INGRESS_FILTER_PARENT, prio, value, mask, cfg.tun_name)
            for prio, (value, mask) in zip(icmp_tc_prios(cfg), port_blocks(*cfg.subflow_ports))]


# ---------------------------------------------------------------- reserved ports

def parse_ports(text: str) -> set[int]:
    """The ports of an ip_local_reserved_ports value like '8080,61440-65535'."""
    ports: set[int] = set()
    for part in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
        lo, _, hi = part.partition("-")
        ports.update(range(int(lo), int(hi or lo) + 1))
    return ports


def format_ports(ports: set[int]) -> str:
    out, run = [], None
    for p in sorted(ports):
        if run and p == run[1] + 1:
            run[1] = p
        else:
            run = [p, p]
            out.append(run)
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def reserve_ports(old: str, lo: int, hi: int) -> str:
    """old with lo-hi added, old's own text kept as it is."""
    if set(range(lo, hi + 1)) <= parse_ports(old):
        return old
    return f"{old},{lo}-{hi}" if old.strip() else f"{lo}-{hi}"


def unreserve_ports(current: str, old: str, new: str) -> str | None:
    """What to write back on undo: current minus the ports `new` added to `old`; exactly
    `old` if nobody else changed it. None if some of those ports are no longer reserved:
    the value was rewritten since, and what is left of them may be someone else's now, so
    nothing is to be removed. (Ports reserved by someone else inside an intact range cannot
    be told from mptun's, and go with it.)"""
    added = parse_ports(new) - parse_ports(old)
    ports = parse_ports(current)
    if not added <= ports:
        return None
    rest = ports - added
    return old if rest == parse_ports(old) else format_ports(rest)


# ---------------------------------------------------------------- the plan

# The route behind each subflow table's route into the TUN: while interface i is unusable
# (its route into the TUN removed), its subflow sockets fail at once with EHOSTUNREACH
# instead of falling through to the main table and leaving with an internal source address.
FALLBACK_METRIC = 0xFFFFFFFF


@dataclass(frozen=True)
class Plan:
    cfg: NetConfig
    host: Host
    ops: tuple[Op, ...]
    # path_ops of each interface, as they are among ops; () for an interface unusable at up.
    paths: tuple[tuple[Op, ...], ...] = ()

    def describe(self) -> list[str]:
        return [op.describe() for op in self.ops]


def _preflight(cfg: NetConfig, host: Host) -> None:
    """Refuse, with one line, anything that would collide with what exists."""
    if cfg.tun_name in host.link_names:
        raise NetcfgError(f"a device named {cfg.tun_name} exists already; choose another TUN name")
    busy = sorted(set(cfg.rule_priorities()) & host.rule_priorities)
    if busy:
        raise NetcfgError(f"ip rule priority {busy[0]} is in use already; choose another rule priority base")
    busy = sorted(set(cfg.all_tables()) & host.tables)
    if busy:
        raise NetcfgError(f"routing table {busy[0]} holds routes already; choose another table base")
    for dev, addr in host.addresses:
        if addr.network.overlaps(cfg.internal):
            raise NetcfgError(f"the internal block {cfg.internal} overlaps {addr} on {dev}; "
                              f"choose another internal block")
    for dst, dev in host.main_routes:
        if dst.overlaps(cfg.internal):
            raise NetcfgError(f"the internal block {cfg.internal} overlaps the route {dst} via {dev}; "
                              f"choose another internal block")
    if not any(iface.usable for iface in host.interfaces):
        raise NetcfgError("no usable interface: " + "; ".join(f"{i.name}: {i.why}" for i in host.interfaces))
    seen = {}
    for iface in host.interfaces:
        if iface.usable and iface.addr.ip in seen:
            raise NetcfgError(f"{iface.name} and {seen[iface.addr.ip]} have the same address {iface.addr.ip}")
        if iface.usable:
            seen[iface.addr.ip] = iface.name
        busy = sorted(set(cfg.tc_prios() + icmp_tc_prios(cfg)) & iface.ingress_prios)
        if busy:
            raise NetcfgError(f"tc filter priority {busy[0]} is in use on {iface.name}'s ingress; "
                              f"choose another tc priority")
    if icmp_tc_prios(cfg)[-1] > 0xFFFF:
        raise NetcfgError(f"tc filter priority {cfg.tc_prio} leaves no room for the ICMP filters; "
                          f"choose a lower tc priority")


def path_problem(cfg: NetConfig, iface: Interface, taken: dict) -> str | None:
    """Why interface `iface`, found usable while mptun is up, must still not be configured:
    what _preflight refuses at up, for one interface. `taken`: the addresses other paths
    are configured with (address -> name). None: go ahead."""
    if iface.why:
        return iface.why
    if iface.addr.ip in taken:
        return f"same address {iface.addr.ip} as {taken[iface.addr.ip]}"
    for a in iface.addrs:
        if a.network.overlaps(cfg.internal):
            return f"its address {a} overlaps the internal block {cfg.internal}"
    busy = sorted(set(cfg.tc_prios()) & iface.ingress_prios)
    if busy:
        return f"tc filter priority {busy[0]} is in use on its ingress"
    return None


def device_ops(cfg: NetConfig, iface: Interface) -> tuple[Op, ...]:
    """What a path interface's device gets once, usable or not, and keeps until down: GRO
    (the peer's answers reach the TUN as super-packets), an ingress qdisc for the capture, the
    capture of ICMP errors for subflows (it does not depend on the address)."""
    ops: list[Op] = []
    if cfg.gro and iface.gro is False:
        ops.append(SetGro(iface.name, old=False, new=True))
    if iface.ingress_qdisc is None:
        ops.append(AddIngressQdisc(iface.name))
    ops.extend(icmp_capture_ops(cfg, iface))
    return tuple(ops)


def path_ops(cfg: NetConfig, i: int, iface: Interface) -> tuple[Op, ...]:
    """What interface i needs while it is usable, all of it depending on its address, MTU or
    gateway: routes first, the rule from its address last (undo removes that first)."""
    assert iface.usable, iface
    lay = cfg.layout
    # Subflow sockets of interface i: into the TUN, sized for that interface.
    # The TUN's MTU is 65535 for the local app leg; this route's MTU makes the
    # kernel cut subflow segments small enough that the options the datapath
    # adds still fit iface's MTU, and advmss is what iface can receive.
    ops: list[Op] = [AddRoute(cfg.subflow_table(i), "0.0.0.0/0", dev=cfg.tun_name, src=str(lay.subflow_addr(i)),
                              scope="link", mtu=iface.mtu - cfg.option_headroom,
                              advmss=iface.mtu - IPV4_TCP_HEADERS)]
    # Interface i's own table: whatever has its address as source leaves
    # through it (and strict rp_filter accepts what arrives on it).
    ti = cfg.iface_table(i)
    for net in iface.connected:
        ops.append(AddRoute(ti, str(net), dev=iface.name, src=str(iface.addr.ip), scope="link"))
    ops.append(AddRoute(ti, "0.0.0.0/0", dev=iface.name, gateway=str(iface.gateway) if iface.gateway else None,
                        scope="universe" if iface.gateway else "link"))
    # The peer's answers to its address, pulled into the TUN.
    for prio, (value, mask) in zip(cfg.tc_prios(), port_blocks(*cfg.subflow_ports)):
        ops.append(AddCaptureFilter(iface.name, INGRESS_FILTER_PARENT, prio, str(iface.addr.ip), value, mask,
                                    cfg.tun_name))
    ops.append(AddRule(cfg.prio_iface, ti, f"{iface.addr.ip}/32"))
    return tuple(ops)


def build_plan(cfg: NetConfig, host: Host) -> Plan:
    """Everything `mptun up` does, in order; undo runs it backwards."""
    assert [i.name for i in host.interfaces] == list(cfg.interfaces)
    _preflight(cfg, host)
    lay = cfg.layout
    tun = cfg.tun_name
    a = str(lay.tun_addr)
    lo, hi = cfg.subflow_ports
    n = len(host.interfaces)
    paths = tuple(path_ops(cfg, i, iface) if iface.usable else () for i, iface in enumerate(host.interfaces))
    ops: list[Op] = []

    # Keep other applications' ephemeral ports out of the range whose packets
    # tc pulls into the TUN: only mptun's subflow sockets bind there.
    reserved = reserve_ports(host.reserved_ports, lo, hi)
    if reserved != host.reserved_ports:
        ops.append(SetSysctl(RESERVED_PORTS, host.reserved_ports, reserved))

    ops.append(CreateTun(tun, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL, cfg.vnet_hdr_size,
                         TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6))
    # IPv4 only: no link-local address, router solicitations or MLD into the TUN.
    ops.append(SetDeviceSysctl(f"net.ipv6.conf.{tun}.disable_ipv6", "1"))
    ops.append(SetLink(tun, mtu=cfg.tun_mtu, txqueuelen=cfg.txqueuelen))
    ops.append(AddAddress(tun, f"{a}/32"))
    for i in range(n):
        ops.append(AddAddress(tun, f"{lay.subflow_addr(i)}/32"))
    ops.append(SetLink(tun, up=True))

    # The app table: intercepted destinations into the TUN, excluded ones thrown
    # back to the next rule (normal routing), the NAT's fake peers into the TUN.
    t = cfg.app_table
    for d in cfg.dest:
        ops.append(AddRoute(t, str(d), dev=tun, src=a, scope="link"))
    for x in cfg.exclude:
        ops.append(AddRoute(t, str(x), type="throw"))
    ops.append(AddRoute(t, str(lay.fake_block), dev=tun, src=a, scope="link"))
    for i in range(n):
        ops.append(AddRoute(cfg.subflow_table(i), "0.0.0.0/0", type="unreachable", metric=FALLBACK_METRIC))

    # The usable interfaces' own parts in three stages: routes, then the device
    # settings of every interface and the capture, then (below) the rules.
    per_path = [op for ops_i in paths for op in ops_i]
    ops.extend(op for op in per_path if op.kind == "route")
    for iface in host.interfaces:
        ops.extend(device_ops(cfg, iface))
    ops.extend(op for op in per_path if op.kind not in ("route", "rule"))

    # Rules last, the intercepting one very last: until it exists no app
    # traffic enters the TUN, and undo removes it first.
    ops.extend(op for op in per_path if op.kind == "rule")
    for i in range(n):
        ops.append(AddRule(cfg.prio_subflow, cfg.subflow_table(i), f"{lay.subflow_addr(i)}/32", iif="lo"))
    # After an app socket got the TUN's address as its source, and for strict
    # rp_filter's reverse lookup of what the datapath writes to the app: no
    # ipproto here, or the ICMP errors the datapath injects are dropped.
    ops.append(AddRule(cfg.prio_tun_source, t, f"{a}/32", iif="lo"))
    # The app socket's first lookup (source not chosen yet): locally originated
    # TCP only, so replies of local services (bound source) and UDP/ICMP keep
    # their routes. First, a specific route in main wins (suppress_prefixlength
    # 0 ignores main's default routes); then the intercept, which sockets with
    # the fwmark bit set skip.
    if cfg.keep_specific_routes:
        ops.append(AddRule(cfg.prio_specific, RT_TABLE_MAIN, "0.0.0.0/32", iif="lo", ipproto=IPPROTO_TCP,
                           suppress_prefixlen=0))
    ops.append(AddRule(cfg.prio_intercept, t, "0.0.0.0/32", iif="lo", ipproto=IPPROTO_TCP,
                       fwmark=0, fwmask=cfg.fwmark))
    return Plan(cfg, host, tuple(ops), paths)

