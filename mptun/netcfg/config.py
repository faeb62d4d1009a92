"""What `mptun up` is asked to do (NetConfig) and the internal addresses derived from it.

A NetConfig is validated on construction: anything a user can get wrong raises
NetcfgError with one line. The address layout is a pure function of `internal`;
docs/netcfg.md draws it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

from mptun.netcfg.capture import port_blocks
from mptun.netcfg.errors import NetcfgError

DEFAULT_INTERNAL = "198.19.0.0/16"
DEFAULT_SUBFLOW_PORTS = (61440, 65535)
DEFAULT_RULE_PRIORITY = 9000
DEFAULT_TABLE = 9000
# One bit: sockets with it set (SO_MARK) are not intercepted. A single bit
# rather than a value, so the daemon may combine it with marks of its own.
DEFAULT_FWMARK = 0x10000000
DEFAULT_TC_PRIO = 0x4D50
MAX_INTERFACES = 32
MAX_CAPTURE_FILTERS = 16
IFNAMSIZ = 16
# The most TCP option bytes a rewrite can add to a segment: the TCP option
# space is 40 bytes, so no rewrite can add more than that whatever the kernel
# put there. Subflow routes carry an MTU this much below the interface's.
DEFAULT_OPTION_HEADROOM = 40
IPV4_TCP_HEADERS = 40
# Tables the kernel owns (unspec, default, main, local) and the largest id ip(8) handles.
_RESERVED_TABLES = {0, 253, 254, 255}
_MAX_TABLE = 0x7FFFFFFF
_MAIN_RULE_PRIORITY = 32766
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")


def _network(text, what: str) -> IPv4Network:
    if isinstance(text, (IPv4Network, IPv6Network)):
        text = str(text)
    try:
        net = ip_network(text, strict=True)
    except ValueError:
        try:
            ip_network(text, strict=False)
        except ValueError:
            raise NetcfgError(f"{what} {text!r} is not an IP network (like 203.0.113.0/24)") from None
        raise NetcfgError(f"{what} {text!r} has host bits set (did you mean "
                          f"{ip_network(text, strict=False)}?)") from None
    if net.version != 4:
        raise NetcfgError(f"{what} {text}: only IPv4 is intercepted for now")
    return net


@dataclass(frozen=True)
class Layout:
    """Internal addresses, all inside `internal` (a /24 or larger), split in quarters:

    quarter 0: tun_addr (first host): the TUN's own address, the source address
               app sockets get, and the address the app-side listener binds;
    quarter 1: subflow sources: subflow_addr(i) = first host + i, one per
               interface, the address subflow sockets of interface i bind;
    quarters 2-3: fake_block: the peers the listener sees (app-side NAT); routed
               into the TUN, never assigned to a device.
    """

    internal: IPv4Network

    @property
    def tun_addr(self) -> IPv4Address:
        return self.internal[1]

    @property
    def listener_addr(self) -> IPv4Address:
        return self.tun_addr

    @property
    def subflow_block(self) -> IPv4Network:
        return list(self.internal.subnets(prefixlen_diff=2))[1]

    def subflow_addr(self, i: int) -> IPv4Address:
        assert 0 <= i < self.max_subflow_addrs, i
        return self.subflow_block[1 + i]

    @property
    def max_subflow_addrs(self) -> int:
        return self.subflow_block.num_addresses - 2

    @property
    def fake_block(self) -> IPv4Network:
        return list(self.internal.subnets(prefixlen_diff=1))[1]


def _rule_slot(k: int, doc: str) -> property:
    """The priority of the k-th of mptun's RULE_SLOTS rules."""
    return property(lambda self: self.rule_priority_base + k, doc=doc)


@dataclass(frozen=True)
class NetConfig:
    """The network configuration `mptun up` applies. Lists may be given as lists of strings."""

    interfaces: tuple[str, ...]
    tun_name: str = "mptun0"
    internal: IPv4Network = ip_network(DEFAULT_INTERNAL)
    dest: tuple[IPv4Network, ...] = (ip_network("0.0.0.0/0"),)
    exclude: tuple[IPv4Network, ...] = ()
    subflow_ports: tuple[int, int] = DEFAULT_SUBFLOW_PORTS
    rule_priority_base: int = DEFAULT_RULE_PRIORITY
    table_base: int = DEFAULT_TABLE
    fwmark: int = DEFAULT_FWMARK
    tc_prio: int = DEFAULT_TC_PRIO
    # Destinations the main table routes more specifically than by a default
    # route (LANs, docker bridges, VPN subnets) keep that route; only what
    # would leave by a default route is intercepted. False: dest/exclude alone decide.
    keep_specific_routes: bool = True
    vnet_hdr_size: int = 10
    tun_mtu: int = 65535
    txqueuelen: int = 10000
    option_headroom: int = DEFAULT_OPTION_HEADROOM
    # GRO on the physical interfaces: the peer's answers reach the TUN as
    # super-packets (docs/netcfg.md, "MTU" and "Other settings"). Restored on undo.
    gro: bool = True
    layout: Layout = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        names = tuple(self.interfaces)
        if not names:
            raise NetcfgError("name at least one interface (mptun up eth0 wlan0)")
        for n in names:
            if not isinstance(n, str) or not _IFNAME_RE.match(n):
                raise NetcfgError(f"{n!r} is not an interface name")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise NetcfgError(f"interface {dup[0]} is named twice")
        if len(names) > MAX_INTERFACES:
            raise NetcfgError(f"at most {MAX_INTERFACES} interfaces")
        if not _IFNAME_RE.match(self.tun_name):
            raise NetcfgError(f"{self.tun_name!r} is not a valid interface name (at most 15 characters)")
        if self.tun_name in names:
            raise NetcfgError(f"{self.tun_name} is both the TUN and a path interface")
        object.__setattr__(self, "interfaces", names)

        internal = _network(self.internal, "the internal block")
        if internal.prefixlen > 24:
            raise NetcfgError(f"the internal block {internal} is too small: a /24 or larger is needed")
        object.__setattr__(self, "internal", internal)
        layout = Layout(internal)
        if len(names) > layout.max_subflow_addrs:
            raise NetcfgError(f"the internal block {internal} has room for {layout.max_subflow_addrs} interfaces")
        object.__setattr__(self, "layout", layout)

        dest = tuple(dict.fromkeys(_network(d, "destination") for d in self.dest))
        exclude = tuple(dict.fromkeys(_network(x, "excluded prefix") for x in self.exclude))
        if not dest:
            raise NetcfgError("no destinations to intercept (dest is empty)")
        for net in dest + exclude:
            # A prefix inside the internal block would cut into the NAT's routes.
            if net.overlaps(internal) and not (net.prefixlen < internal.prefixlen):
                raise NetcfgError(f"{net} overlaps the internal block {internal}")
        both = set(dest) & set(exclude)
        if both:
            raise NetcfgError(f"{sorted(both)[0]} is both a destination and excluded")
        object.__setattr__(self, "dest", dest)
        object.__setattr__(self, "exclude", exclude)

        lo, hi = self.subflow_ports
        if not (1024 <= lo <= hi <= 65535):
            raise NetcfgError(f"subflow port range {lo}-{hi}: must be within 1024-65535")
        object.__setattr__(self, "subflow_ports", (int(lo), int(hi)))

        last_prio = self.rule_priority_base + RULE_SLOTS - 1
        if not (1 <= self.rule_priority_base and last_prio < _MAIN_RULE_PRIORITY):
            raise NetcfgError(f"rule priorities {self.rule_priority_base}-{last_prio} must lie "
                              f"within 1-{_MAIN_RULE_PRIORITY - 1}, before the main table's rule")
        tables = self.all_tables()
        if min(tables) < 1 or max(tables) > _MAX_TABLE or _RESERVED_TABLES & set(tables):
            raise NetcfgError(f"routing tables {min(tables)}-{max(tables)} include a reserved one "
                              f"(253-255) or leave 1-{_MAX_TABLE}")
        if not (0 < self.fwmark <= 0xFFFFFFFF):
            raise NetcfgError(f"fwmark {self.fwmark:#x} must be a non-zero 32-bit value")
        nblocks = len(port_blocks(lo, hi))
        if nblocks > MAX_CAPTURE_FILTERS:
            raise NetcfgError(f"the subflow port range {lo}-{hi} needs {nblocks} tc filters per interface; "
                              f"choose a range aligned to a power of two (like 61440-65535)")
        if not (1 <= self.tc_prio and self.tc_prio + nblocks - 1 <= 0xFFFF):
            raise NetcfgError(f"tc filter priority {self.tc_prio} must be within 1-65535")
        assert self.vnet_hdr_size in (10, 12), self.vnet_hdr_size
        assert 1280 <= self.tun_mtu <= 65535, self.tun_mtu
        assert 0 <= self.option_headroom <= 40, self.option_headroom

    # -- routing tables and rule priorities

    @property
    def app_table(self) -> int:
        """Routes into the TUN for intercepted destinations, throws for excluded ones, the fake block."""
        return self.table_base

    def iface_table(self, i: int) -> int:
        """Interface i's own table: its connected subnets and its default route."""
        return self.table_base + 1 + 2 * i

    def subflow_table(self, i: int) -> int:
        """Where interface i's subflow sockets are routed: into the TUN, with that interface's MSS."""
        return self.table_base + 2 + 2 * i

    def all_tables(self) -> list[int]:
        n = len(self.interfaces)
        return [self.app_table] + [t for i in range(n) for t in (self.iface_table(i), self.subflow_table(i))]

    # The rules' priorities, in lookup order (docs/netcfg.md, "Tables and rules").
    prio_tun_source = _rule_slot(0, "From the TUN's address, locally originated: the app table.")
    prio_subflow = _rule_slot(1, "From subflow address i, locally originated: subflow table i.")
    prio_iface = _rule_slot(2, "From interface i's address: interface table i.")
    prio_specific = _rule_slot(3, "Unbound TCP sockets: main, unless only a default route matches.")
    prio_intercept = _rule_slot(4, "Unbound TCP sockets without the fwmark bit: the app table.")

    def tc_prios(self) -> list[int]:
        """One tc priority per block of the subflow port range, so each filter is alone at its own."""
        return [self.tc_prio + k for k in range(len(port_blocks(*self.subflow_ports)))]

    def rule_priorities(self) -> list[int]:
        return list(range(self.rule_priority_base, self.rule_priority_base + RULE_SLOTS))


RULE_SLOTS = 5

