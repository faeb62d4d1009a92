"""Discovery: what the host looks like before `mptun up`, read with pyroute2, changing nothing.

`discover(cfg)` returns a Host (the named interfaces, each with its address, gateway
and MTU, plus what the plan must not collide with) or raises NetcfgError with one
line for an unknown interface. An interface that exists but cannot carry subflows
now (down, no carrier, no address, no gateway) is returned with `why` saying so:
mptun configures it once it can (mptun/netcfg/live.py). `read_interface` reads one
interface again while mptun is up. `resolve_gateway_mac` finds the next hop's MAC
the datapath writes Ethernet headers with; `gateway_neighbour` and `ask_gateway`
are its two halves for callers that must not wait.
"""

from __future__ import annotations

import array
import errno
import fcntl
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from mptun.netcfg import netns
from mptun.netcfg.capture import INGRESS_FILTER_PARENT
from mptun.netcfg.config import NetConfig
from mptun.netcfg.errors import NetcfgError

IFF_UP = 0x1
IFF_POINTOPOINT = 0x10
IFF_RUNNING = 0x40
IFF_NOARP = 0x80
ARPHRD_ETHER = 1
IFA_F_SECONDARY = 0x01
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
TC_H_INGRESS_PARENT = 0xFFFFFFF1
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE = 0x01, 0x02, 0x04, 0x08, 0x10
NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x20, 0x40, 0x80
_NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT
NTF_USE = 0x01
SIOCETHTOOL = 0x8946
ETHTOOL_GGRO, ETHTOOL_SGRO = 0x2B, 0x2C
RESERVED_PORTS = "net.ipv4.ip_local_reserved_ports"


@dataclass(frozen=True)
class Interface:
    """One path interface as found: the datapath sends subflows out of it from `addr`."""

    name: str
    index: int
    mtu: int
    mac: str | None                    # its own link-layer address (None: no link layer)
    ethernet: bool                     # frames need an Ethernet header (and the gateway's MAC)
    addr: IPv4Interface | None         # primary IPv4 address: the subflows' source on the wire
    addrs: tuple[IPv4Interface, ...]   # all IPv4 addresses, primary first
    addrs6: tuple[IPv6Interface, ...]  # global IPv6 addresses (not used by the datapath yet)
    gateway: IPv4Address | None        # next hop; None on a point-to-point link without one
    gateway6: IPv6Address | None
    ingress_qdisc: str | None          # "ingress" / "clsact" if one exists already, else None
    ingress_prios: frozenset[int]      # tc filter priorities in use on that qdisc's ingress
    gro: bool | None                   # None: the driver cannot say
    why: str | None = None             # why it cannot carry subflows now ("link down"); None: usable

    @property
    def usable(self) -> bool:
        return self.why is None

    @classmethod
    def gone(cls, name: str) -> Interface:
        """A path interface whose device has disappeared (unplugged, deleted)."""
        return cls(name=name, index=0, mtu=0, mac=None, ethernet=False, addr=None, addrs=(), addrs6=(),
                   gateway=None, gateway6=None, ingress_qdisc=None, ingress_prios=frozenset(), gro=None,
                   why="no such device")

    @property
    def connected(self) -> tuple[IPv4Network, ...]:
        """The subnets this interface reaches directly (none for /32 addresses)."""
        return tuple(dict.fromkeys(a.network for a in self.addrs if a.network.prefixlen < 32))


@dataclass(frozen=True)
class Host:
    """Everything the plan needs to know about the host, read at one moment."""

    interfaces: tuple[Interface, ...]
    link_names: frozenset[str]
    rule_priorities: frozenset[int]              # IPv4 rule priorities in use
    tables: frozenset[int]                       # IPv4 routing tables that hold routes
    addresses: tuple[tuple[str, IPv4Interface], ...]      # every IPv4 address: (device, address)
    main_routes: tuple[tuple[IPv4Network, str], ...]      # main table, non-default: (dst, device)
    reserved_ports: str                          # net.ipv4.ip_local_reserved_ports, as read


# ---------------------------------------------------------------- reading helpers

def read_sysctl(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def write_sysctl(key: str, value: str) -> None:
    # With a newline, as echo(1) writes: an empty value alone is ignored by
    # some sysctls (ip_local_reserved_ports keeps its ports).
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value + "\n")


def _ethtool_value(ifname: str, cmd: int, data: int = 0) -> int:
    buf = array.array("I", [cmd, data])
    addr, _ = buf.buffer_info()
    ifr = struct.pack("16sP", ifname.encode(), addr).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
    return buf[1]


def get_gro(ifname: str) -> bool | None:
    try:
        return bool(_ethtool_value(ifname, ETHTOOL_GGRO))
    except OSError:
        return None


def set_gro(ifname: str, on: bool) -> None:
    _ethtool_value(ifname, ETHTOOL_SGRO, 1 if on else 0)


def _table(msg) -> int:
    return msg.get_attr("RTA_TABLE") or msg["table"]


def _route_hops(msg):
    """(oif, gateway) of a route, one per next hop (multipath routes have several)."""
    mp = msg.get_attr("RTA_MULTIPATH")
    if mp:
        for hop in mp:
            yield hop["oif"], hop.get_attr("RTA_GATEWAY")
    else:
        yield msg.get_attr("RTA_OIF"), msg.get_attr("RTA_GATEWAY")


def _gateway(routes, index: int, family_addr):
    """The interface's next hop from the main table: its default route of lowest
    metric, else any route through it with a gateway (a connected next hop)."""
    best = None
    fallback = None
    for r in routes:
        if _table(r) != RT_TABLE_MAIN or r["type"] != RTN_UNICAST:
            continue
        metric = r.get_attr("RTA_PRIORITY") or 0
        for oif, gw in _route_hops(r):
            if oif != index:
                continue
            if r["dst_len"] == 0:
                if best is None or metric < best[0]:
                    best = (metric, gw)
            elif gw and fallback is None:
                fallback = gw
    if best is not None:
        return (family_addr(best[1]) if best[1] else None), True
    if fallback is not None:
        return family_addr(fallback), True
    return None, False


# ---------------------------------------------------------------- discovery

def _interface(ipr: IPRoute, link, routes4, routes6) -> Interface:
    name = link.get_attr("IFLA_IFNAME")
    index = link["index"]
    flags = link["flags"]

    addrs = []
    for a in ipr.get_addr(family=socket.AF_INET, index=index):
        local = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        primary = not (a.get_attr("IFA_FLAGS") or a["flags"]) & IFA_F_SECONDARY
        addrs.append((not primary, IPv4Interface(f"{local}/{a['prefixlen']}")))
    addrs = tuple(a for _, a in sorted(addrs, key=lambda t: t[0]))
    addrs6 = tuple(IPv6Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                   for a in ipr.get_addr(family=socket.AF_INET6, index=index)
                   if a["scope"] == RT_SCOPE_UNIVERSE)

    ethernet = link["ifi_type"] == ARPHRD_ETHER and not flags & IFF_NOARP
    gateway, has_route = _gateway(routes4, index, IPv4Address)
    gateway6, _ = _gateway(routes6, index, IPv6Address)
    # The first reason it cannot carry subflows now, in the order a user fixes them.
    why = None
    if not flags & IFF_UP:
        why = "link down"
    elif not flags & IFF_RUNNING:
        why = "no carrier"          # also dormant: Wi-Fi not associated yet
    elif not addrs:
        why = "no IPv4 address"
    elif not has_route:
        why = "no default route in the main table"
    elif gateway is None and ethernet:
        why = "its default route names no gateway (not supported on Ethernet)"

    qdisc = None
    for q in ipr.get_qdiscs(index=index):
        if q["parent"] == TC_H_INGRESS_PARENT and q.get_attr("TCA_KIND") in ("ingress", "clsact"):
            qdisc = q.get_attr("TCA_KIND")
    prios = frozenset()
    if qdisc:
        prios = frozenset(f["info"] >> 16 for f in ipr.get_filters(index=index, parent=INGRESS_FILTER_PARENT))

    return Interface(
        name=name, index=index, mtu=link.get_attr("IFLA_MTU"),
        mac=link.get_attr("IFLA_ADDRESS") if ethernet else None, ethernet=ethernet,
        addr=addrs[0] if addrs else None, addrs=addrs, addrs6=addrs6, gateway=gateway, gateway6=gateway6,
        ingress_qdisc=qdisc, ingress_prios=prios, gro=get_gro(name), why=why)


def read_interface(ipr: IPRoute, name: str) -> Interface:
    """Interface `name` as it is now (Interface.gone if there is no such device)."""
    found = ipr.link_lookup(ifname=name)
    try:
        link = ipr.get_links(found[0])[0] if found else None
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
        link = None     # deleted between the two requests
    if link is None:
        return Interface.gone(name)
    return _interface(ipr, link, ipr.route("dump", family=socket.AF_INET),
                      ipr.route("dump", family=socket.AF_INET6))


def discover(cfg: NetConfig, *, netns_name: str | None = None) -> Host:
    """Read the interfaces cfg names and what a plan must not collide with."""
    with netns.entered(netns_name), IPRoute() as ipr:
        return _discover(ipr, cfg)


def _discover(ipr: IPRoute, cfg: NetConfig) -> Host:
    links = {l.get_attr("IFLA_IFNAME"): l for l in ipr.get_links()}
    names_by_index = {l["index"]: n for n, l in links.items()}
    for name in cfg.interfaces:
        if name not in links:
            raise NetcfgError(f"unknown interface {name!r}")
    routes4 = ipr.route("dump", family=socket.AF_INET)
    routes6 = ipr.route("dump", family=socket.AF_INET6)
    interfaces = tuple(_interface(ipr, links[n], routes4, routes6) for n in cfg.interfaces)

    addresses = tuple(
        (names_by_index.get(a["index"], str(a["index"])),
         IPv4Interface(f"{a.get_attr('IFA_LOCAL') or a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
        for a in ipr.get_addr(family=socket.AF_INET))
    main_routes = []
    for r in routes4:
        if _table(r) == RT_TABLE_MAIN and r["dst_len"] > 0:
            oif = next(iter(_route_hops(r)))[0]
            main_routes.append((IPv4Network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}"),
                                names_by_index.get(oif, "?")))
    return Host(
        interfaces=interfaces,
        link_names=frozenset(links),
        rule_priorities=frozenset(r.get_attr("FRA_PRIORITY") or 0 for r in ipr.get_rules(family=socket.AF_INET)),
        tables=frozenset(_table(r) for r in routes4),
        addresses=addresses,
        main_routes=tuple(main_routes),
        reserved_ports=read_sysctl(RESERVED_PORTS),
    )


# ---------------------------------------------------------------- gateway MAC

def resolve_gateway_mac(iface: Interface, *, timeout: float = 5.0, netns_name: str | None = None) -> str | None:
    """The MAC of iface's gateway, asking the kernel to resolve it (one ARP request,
    no IP packet) if its neighbour table has no usable entry. None for interfaces
    without a link layer. What stays behind is an ordinary neighbour cache entry,
    as any traffic to the gateway would leave; nothing permanent is created."""
    if not iface.ethernet:
        return None
    with netns.entered(netns_name), IPRoute() as ipr:
        deadline = time.monotonic() + timeout
        asked = False
        while True:
            state, lladdr = gateway_neighbour(ipr, iface)
            if lladdr:
                return lladdr
            if asked and state & NUD_FAILED:
                break
            if not asked or state == 0:
                ask_gateway(ipr, iface)
                asked = True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
    raise NetcfgError(f"gateway {iface.gateway} on {iface.name} does not answer ARP")


def gateway_neighbour(ipr: IPRoute, iface: Interface) -> tuple[int, str | None]:
    """(NUD state, MAC) of iface's gateway in the neighbour table; the MAC only if the
    entry is usable (reachable, or stale: the kernel re-checks it as traffic flows)."""
    assert iface.gateway is not None, iface
    gw = str(iface.gateway)
    for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=iface.index):
        if n.get_attr("NDA_DST") == gw:
            lladdr = n.get_attr("NDA_LLADDR")
            return n["state"], (lladdr if n["state"] & _NUD_USABLE else None)
    return 0, None


def ask_gateway(ipr: IPRoute, iface: Interface) -> None:
    """Make the kernel resolve iface's gateway now (as if a packet were waiting for it)."""
    # NTF_USE starts resolution; state=0 (NUD_NONE) so that pyroute2 does not
    # default to PERMANENT, which would pin the entry.
    ipr.neigh("replace", dst=str(iface.gateway), ifindex=iface.index, flags=NTF_USE, state=0)
