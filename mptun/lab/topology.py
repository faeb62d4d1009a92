"""An emulated multi-path network in namespaces: client ==N paths== router -- server.

Each path is client eth<i> -- [link namespace: delay line or wire, tbf rate both
ways] -- router p<i>; loss is an nftables `numgen random` rule in the router.
Everything a lab creates lives in namespaces named after it, is recorded in a
state file, and `Lab.down()` / `teardown(name)` removes it, also after a crash.
Addresses come only from 198.18.0.0/15 and 2001:2::/48.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import time
from dataclasses import asdict, dataclass, field

from pyroute2 import IPRoute, NetNS
from pyroute2 import netns as pr_netns

from mptun.lab.netns import LabError, exists, pids_in, run, sysctl, sysctls
from mptun.lab.spec import PathSpec

STATE_DIR = "/run/mptun/lab"
MAX_PATHS = 16
SERVER_NET = 100           # 198.18.100.0/24 and 2001:2:0:100::/64: router <-> server
ETH_P_ALL = 0x0003


# ---------------------------------------------------------------- addressing

def path_addrs(i: int) -> dict[str, str]:
    """Addresses of path i: client and router ends, IPv4 /24 and IPv6 /64."""
    n = i + 1
    return {"client4": f"198.18.{n}.2", "router4": f"198.18.{n}.1",
            "client6": f"2001:2:0:{n}::2", "router6": f"2001:2:0:{n}::1"}


SERVER4, SERVER_GW4 = f"198.18.{SERVER_NET}.2", f"198.18.{SERVER_NET}.1"
SERVER6, SERVER_GW6 = f"2001:2:0:{SERVER_NET}::2", f"2001:2:0:{SERVER_NET}::1"


def new_name(prefix: str = "mpt") -> str:
    """A lab name unique enough to run many labs side by side."""
    return f"{prefix}-{secrets.token_hex(3)}"


_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,23}$")


# ---------------------------------------------------------------- the lab

@dataclass
class LabState:
    name: str
    paths: list[dict]
    namespaces: list[str] = field(default_factory=list)
    pids: list[dict] = field(default_factory=list)   # {"pid":, "ns":, "what":}
    root_links: list[str] = field(default_factory=list)  # transient root-ns veth names
    cc: str | None = None

    def save(self) -> None:
        os.makedirs(STATE_DIR, exist_ok=True)
        tmp = state_path(self.name) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, state_path(self.name))


def state_path(name: str) -> str:
    return os.path.join(STATE_DIR, f"{name}.json")


class Lab:
    """A running emulated network. Use as a context manager, or call up() and down().

    Namespaces: <name>-cli (the multi-homed client, interfaces eth0..ethN-1),
    <name>-l<i> (path i's link), <name>-rtr, <name>-srv (interface eth0).
    """

    def __init__(self, paths: list[PathSpec], name: str | None = None, *, cc: str | None = None,
                 source_routing: bool = False):
        if not paths:
            raise ValueError("a lab needs at least one path")
        if len(paths) > MAX_PATHS:
            raise ValueError(f"at most {MAX_PATHS} paths")
        self.name = name or new_name()
        if not _NAME_RE.match(self.name):
            raise ValueError(f"lab name {self.name!r}: letters, digits, - and _ only, at most 24 characters")
        self.paths = list(paths)
        self.cc = cc
        self.source_routing = source_routing
        self.client = f"{self.name}-cli"
        self.router = f"{self.name}-rtr"
        self.server = f"{self.name}-srv"
        self.links = [f"{self.name}-l{i}" for i in range(len(paths))]
        self.state = LabState(self.name, [asdict(p) for p in paths], cc=cc)
        self._delaylines: list = []
        self._source_routes = False
        self.transient_links: list[str] = []   # every root-namespace name this lab used in passing
        self._up = False

    # -- public facts

    server_addr = SERVER4
    server_addr6 = SERVER6

    def client_iface(self, i: int) -> str:
        return f"eth{i}"

    def client_addr(self, i: int, v6: bool = False) -> str:
        return path_addrs(i)["client6" if v6 else "client4"]

    # -- lifecycle

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> Lab:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, veth, tc)")
        if os.path.exists(state_path(self.name)):
            raise LabError(f"a lab named {self.name!r} exists already; `mptun lab down {self.name}` removes it")
        # Teardown removes what the state file lists; a namespace that exists
        # already is someone else's and must never be listed there.
        taken = [ns for ns in (self.client, self.router, self.server, *self.links) if exists(ns)]
        if taken:
            raise LabError(f"namespace {taken[0]} exists already and is not this lab's; pick another lab name")
        self.state.save()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        self._up = True
        return self

    def down(self) -> None:
        for dl in self._delaylines:
            try:
                dl.stop()
            except Exception:
                pass
        self._delaylines.clear()
        teardown(self.name)
        self._up = False

    # -- building

    def _ns_create(self, ns: str) -> None:
        # Recorded before it is made, so a crash right after creation still
        # leaves a record; up() checked that the name was free.
        self.state.namespaces.append(ns)
        self.state.save()
        try:
            pr_netns.create(ns)
        except FileExistsError:
            self.state.namespaces.remove(ns)
            self.state.save()
            raise LabError(f"namespace {ns} appeared while the lab was being built; not touching it") from None
        run(ns, ["ip", "link", "set", "lo", "up"])

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair with end name_a in ns_a and name_b in ns_b."""
        tmp = f"mt{secrets.token_hex(5)}"
        self.transient_links.append(tmp)
        self.state.root_links.append(tmp)
        self.state.save()
        with IPRoute() as ip:
            ip.link("add", ifname=tmp, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
            ip.link("set", index=ip.link_lookup(ifname=tmp)[0], net_ns_fd=ns_a)
        with NetNS(ns_a) as n:
            n.link("set", index=n.link_lookup(ifname=tmp)[0], ifname=name_a)
        self.state.root_links.remove(tmp)
        self.state.save()

    def _build(self) -> None:
        for ns in (self.client, self.router, self.server, *self.links):
            self._ns_create(ns)
        for ns in (self.client, self.router, self.server):
            if self.cc:
                self._set_cc(ns)
            sysctls(ns, {
                # Big enough for the bandwidth-delay products a lab can be given.
                "net.ipv4.tcp_rmem": "4096 131072 33554432",
                "net.ipv4.tcp_wmem": "4096 65536 33554432",
                # The lab's addresses are static; duplicate address detection only delays IPv6.
                "net.ipv6.conf.default.accept_dad": 0,
                "net.ipv6.conf.all.accept_dad": 0,
            })
        sysctls(self.router, {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})

        self._veth(self.router, "srv", self.server, "eth0")
        for i, link in enumerate(self.links):
            self._veth(self.client, self.client_iface(i), link, "toc")
            self._veth(link, "tor", self.router, f"p{i}")

        with NetNS(self.server) as s:
            eth0 = s.link_lookup(ifname="eth0")[0]
            s.link("set", index=eth0, state="up")
            s.addr("add", index=eth0, address=SERVER4, prefixlen=24)
            s.addr("add", index=eth0, address=SERVER6, prefixlen=64)
            s.route("add", dst="0.0.0.0/0", gateway=SERVER_GW4)
            s.route("add", dst="::/0", gateway=SERVER_GW6, family=10)
        # veth marks packets as checksum-verified; turning receive checksumming
        # off on the server makes it verify every TCP checksum it gets, so a
        # datapath that writes a wrong one is caught in the lab.
        run(self.server, ["ethtool", "-K", "eth0", "rx", "off"])

        with NetNS(self.router) as r:
            srv = r.link_lookup(ifname="srv")[0]
            r.link("set", index=srv, state="up")
            r.addr("add", index=srv, address=SERVER_GW4, prefixlen=24)
            r.addr("add", index=srv, address=SERVER_GW6, prefixlen=64)
            for i in range(len(self.paths)):
                a = path_addrs(i)
                p = r.link_lookup(ifname=f"p{i}")[0]
                r.link("set", index=p, state="up")
                r.addr("add", index=p, address=a["router4"], prefixlen=24)
                r.addr("add", index=p, address=a["router6"], prefixlen=64)

        with NetNS(self.client) as c:
            for i in range(len(self.paths)):
                c.link("set", index=c.link_lookup(ifname=self.client_iface(i))[0], state="up")
                self._client_path_config(c, i)
        if self.source_routing:
            self.enable_source_routing()

        for i, (spec, link) in enumerate(zip(self.paths, self.links)):
            self._build_link(i, spec, link)
        self._build_loss()

    def _set_cc(self, ns: str) -> None:
        try:
            sysctl(ns, "net.ipv4.tcp_congestion_control", self.cc)
        except LabError:
            # A namespace may only pick from the host's allowed list.
            with open("/proc/sys/net/ipv4/tcp_allowed_congestion_control") as f:
                allowed = f.read().split()
            raise LabError(f"congestion control {self.cc!r} is not allowed in namespaces here "
                           f"(net.ipv4.tcp_allowed_congestion_control = {' '.join(allowed)}); "
                           f"pick one of those, or set it per socket (iperf3 -C {self.cc})") from None

    def _build_link(self, i: int, spec: PathSpec, link: str) -> None:
        with NetNS(link) as n:
            toc = n.link_lookup(ifname="toc")[0]
            tor = n.link_lookup(ifname="tor")[0]
            for idx in (toc, tor):
                n.link("set", index=idx, state="up")
            # rate: tbf on the egress of each direction (up leaves via tor, down via toc)
            for idx, d in ((tor, spec.up), (toc, spec.down)):
                if d.rate_mbit:
                    n.tc("add", "tbf", index=idx, handle="1:", rate=f"{int(d.rate_mbit * 1e6)}bit",
                         burst=d.tbf_burst, limit=d.tbf_limit)
            if not (spec.up.delay_ms or spec.down.delay_ms):
                # No delay: a kernel wire (ingress redirect), the fastest forwarder.
                for src, dst in ((toc, tor), (tor, toc)):
                    n.tc("add", "ingress", index=src)
                    n.tc("add-filter", "u32", index=src, parent="ffff:", protocol=ETH_P_ALL, prio=1,
                         keys=["0x0/0x0+0"], target=0x10001,
                         action={"kind": "mirred", "direction": "egress", "action": "redirect",
                                 "ifindex": dst})
        if spec.up.delay_ms or spec.down.delay_ms:
            from mptun.lab.delayline import start_delayline

            # The delay line reads super-packets: GRO on both of its interfaces.
            for dev in ("toc", "tor"):
                run(link, ["ethtool", "-K", dev, "gro", "on"])
            stats_file = os.path.join(STATE_DIR, f"{link}.delayline.json")
            dl = start_delayline(link, "toc", "tor", spec.up.delay_ms, spec.down.delay_ms, stats_file=stats_file)
            self._delaylines.append(dl)
            self.state.pids.append({"pid": dl.pid, "ns": link, "what": "mptun.lab.delayline",
                                    "files": [stats_file]})
            self.state.save()
        # Loss is applied to single segments: a dropped 64 KB super-packet would
        # be a burst of 45 losses. So lossy directions are segmented by their sender.
        if spec.up.loss_pct:
            run(self.client, ["ethtool", "-K", self.client_iface(i), "tso", "off", "gso", "off"])
        if spec.down.loss_pct:
            run(self.server, ["ethtool", "-K", "eth0", "tso", "off", "gso", "off"])
            run(self.router, ["ethtool", "-K", "srv", "gro", "off"])

    def _build_loss(self) -> None:
        rules = []
        for i, spec in enumerate(self.paths):
            for d, match in ((spec.up, "iifname"), (spec.down, "oifname")):
                if d.loss_pct:
                    per_million = int(round(d.loss_pct * 10_000))
                    rules.append(f'    {match} "p{i}" numgen random mod 1000000 < {per_million} '
                                 f'counter drop comment "p{i} {"up" if match == "iifname" else "down"}"')
        if not rules:
            return
        ruleset = ("table inet mptun_lab {\n  chain forward {\n"
                   "    type filter hook forward priority 0; policy accept;\n"
                   + "\n".join(rules) + "\n  }\n}\n")
        run(self.router, ["nft", "-f", "-"], input=ruleset)

    # -- optional setups used by tests and the demo

    def _client_path_config(self, c: NetNS, i: int, families: tuple[int, ...] = (4, 6)) -> None:
        """Path i's addresses and default routes on client interface i (replaced if present)."""
        a = path_addrs(i)
        idx = c.link_lookup(ifname=self.client_iface(i))[0]
        for fam in families:
            v6 = fam == 6
            end = "6" if v6 else "4"
            kw = {"family": 10} if v6 else {}
            c.addr("replace", index=idx, address=a["client" + end], prefixlen=64 if v6 else 24, **kw)
            # A laptop with several uplinks: one default route per interface, the first path preferred.
            c.route("replace", dst="::/0" if v6 else "0.0.0.0/0", gateway=a["router" + end], oif=idx,
                    priority=100 + i, **kw)
            if self._source_routes:
                c.route("replace", dst="::/0" if v6 else "0.0.0.0/0", gateway=a["router" + end], oif=idx,
                        table=100 + i, **kw)

    def enable_source_routing(self) -> None:
        """Per-interface routing tables on the client, so a socket bound to path i's
        address leaves through path i (what the kernel's MPTCP needs for subflows)."""
        self._source_routes = True
        with NetNS(self.client) as c:
            for i in range(len(self.paths)):
                a = path_addrs(i)
                idx = c.link_lookup(ifname=self.client_iface(i))[0]
                table = 100 + i
                c.route("add", dst="0.0.0.0/0", gateway=a["router4"], oif=idx, table=table)
                c.route("add", dst="::/0", gateway=a["router6"], oif=idx, table=table, family=10)
                c.rule("add", src=a["client4"], src_len=32, table=table, priority=1000 + i)
                c.rule("add", src=a["client6"], src_len=128, table=table, priority=1000 + i, family=10)

    def enable_kernel_mptcp(self) -> None:
        """Configure the kernel's own MPTCP path manager: one subflow endpoint per extra
        client interface, limits on both ends. Needs source routing."""
        n = len(self.paths)
        limit = max(2, n)
        for ns in (self.client, self.server):
            run(ns, ["ip", "mptcp", "limits", "set", "subflows", str(limit), "add_addr_accepted", str(limit)])
        for i in range(1, n):
            run(self.client, ["ip", "mptcp", "endpoint", "add", self.client_addr(i),
                              "dev", self.client_iface(i), "subflow"])

    # -- what happens to a client's uplink (what tests of failover do)

    def set_client_link(self, i: int, up: bool) -> None:
        """Take client interface i down, or bring it up again with its addresses and routes, as a
        network manager restores them: a link going down loses its routes and IPv6 addresses."""
        with NetNS(self.client) as c:
            c.link("set", index=c.link_lookup(ifname=self.client_iface(i))[0], state="up" if up else "down")
            if up:
                self._client_path_config(c, i)

    def set_client_address(self, i: int, present: bool) -> None:
        """Remove path i's IPv4 address from client interface i (its routes go with it), or add
        both back (DHCP losing and renewing the lease)."""
        with NetNS(self.client) as c:
            if present:
                self._client_path_config(c, i, families=(4,))
            else:
                c.addr("del", index=c.link_lookup(ifname=self.client_iface(i))[0],
                       address=self.client_addr(i), prefixlen=24)

    # -- observation

    def path_counters(self, i: int) -> dict[str, int]:
        """Bytes and packets that crossed path i, from the router's interface counters."""
        with NetNS(self.router) as r:
            link = r.get_links(r.link_lookup(ifname=f"p{i}")[0])[0]
            st = link.get_attr("IFLA_STATS64")
            return {"up_bytes": st["rx_bytes"], "down_bytes": st["tx_bytes"],
                    "up_packets": st["rx_packets"], "down_packets": st["tx_packets"]}

    def loss_counters(self) -> dict[str, int]:
        """Packets dropped by each loss rule, keyed 'p<i> up' / 'p<i> down'."""
        proc = run(self.router, ["nft", "-j", "list", "table", "inet", "mptun_lab"], check=False)
        out: dict[str, int] = {}
        if proc.returncode != 0:
            return out
        for item in json.loads(proc.stdout).get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    out[rule.get("comment", "?")] = expr["counter"]["packets"]
        return out

    def delayline_stats(self) -> list[dict]:
        return [dl.stats() for dl in self._delaylines if hasattr(dl, "stats")]

    def describe(self) -> str:
        lines = [f"lab {self.name}: client {self.client}, router {self.router}, server {self.server} "
                 f"({SERVER4}, {SERVER6})"]
        for i, spec in enumerate(self.paths):
            lines.append(f"  path {i}: client {self.client_iface(i)} {self.client_addr(i)} "
                         f"-- {self.links[i]} -- router p{i}: {spec.describe()}")
        return "\n".join(lines)


# ---------------------------------------------------------------- teardown

def _kill(pid: int, what: str) -> None:
    """SIGTERM, then SIGKILL, a process the lab started, checked by its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if what.encode() not in f.read():
                return  # the pid was reused by something else: not ours
    except FileNotFoundError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        if not os.path.exists(f"/proc/{pid}"):
            return
        try:
            # reap if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def teardown(name: str) -> list[str]:
    """Remove everything lab `name` created, as its state file lists it: nothing else.

    Returns what was removed. Safe to call twice, and after the creator crashed.
    """
    removed: list[str] = []
    try:
        with open(state_path(name)) as f:
            state = json.load(f)
    except FileNotFoundError:
        return removed
    except json.JSONDecodeError as e:
        raise LabError(f"lab {name}: state file {state_path(name)} is damaged ({e}); "
                       f"remove its namespaces ({name}-*) by hand") from None
    namespaces = {n for n in state.get("namespaces", []) if exists(n)}
    for p in state.get("pids", []):
        _kill(p["pid"], p["what"])
        for path in p.get("files", []):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    for link in state.get("root_links", []):
        if run(None, ["ip", "link", "del", link], check=False).returncode == 0:
            removed.append(link)
    for ns in sorted(namespaces):
        # Anything still running in the lab's namespaces was started for the lab
        # (servers, clients, delay lines): it would keep the namespace's devices alive.
        for pid in pids_in(ns):
            if pid != os.getpid():
                _kill(pid, "")
        try:
            pr_netns.remove(ns)
            removed.append(ns)
        except OSError:
            pass
    try:
        os.unlink(state_path(name))
    except FileNotFoundError:
        pass
    return removed


def list_labs() -> list[str]:
    """Labs that have a state file (only those are ours to remove)."""
    try:
        return sorted(f[:-5] for f in os.listdir(STATE_DIR)
                      if f.endswith(".json") and not f.endswith(".delayline.json"))
    except FileNotFoundError:
        return []
