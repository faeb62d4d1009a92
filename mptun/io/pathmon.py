"""PathMonitor: the path interfaces' links, addresses, default routes and gateways, watched over
netlink; each path's configuration and PathIO follow them, and the daemon is told.

A non-blocking rtnetlink socket subscribed to link, IPv4 address, IPv4 route and neighbour
notifications; the daemon's loop watches fileno() and calls on_readable(), which drains what is
queued and notes which paths something happened to, and which went down on the way (a flap that
is over by the end of the drain still flushed their routes). Each noted path is then looked at
once (netcfg.live: read the interface, remove or install its configuration), so a burst of
messages costs one look per path, and no timer delays it.

Down (link down, no carrier, address or default route gone, device deleted): the configuration
is removed, the PathIO marked unusable, on_change(i, False). Usable again, or a new address (a
removal first, as for down): the configuration for the new address is installed, then the
gateway's MAC is taken from the neighbour table or asked for (one ARP request by the kernel).
The answer comes as a neighbour notification on the same socket, so the path is usable one ARP
round trip later; a timer checks every NEIGH_RECHECK and asks again after a failed resolution,
for NEIGH_GIVE_UP at most (then the next change of the interface tries again). Then the PathIO
gets its address and Ethernet header, and on_change(i, True).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable

from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from mptun.io.loop import EventLoop
from mptun.io.paths import PathIO, eth_header
from mptun.netcfg import Applied, netns
from mptun.netcfg.interfaces import IFF_RUNNING, IFF_UP, NUD_FAILED, RT_TABLE_MAIN, Interface
from mptun.netcfg.live import LivePaths

log = logging.getLogger("mptun")

NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH = 24, 25, 28
SO_RCVBUFFORCE = 33
RCVBUF = 1 << 20
RECV_SIZE = 1 << 16
# Datagrams per on_readable; the rest waits for the next round (the fd stays readable).
MAX_READS = 256
NEIGH_RECHECK = 0.2
NEIGH_GIVE_UP = 30.0


class PathMonitor:
    def __init__(self, applied: Applied, paths: list[PathIO], on_change: Callable[[int, bool], None],
                 loop: EventLoop):
        self.paths = paths
        self.on_change = on_change
        self.loop = loop
        self.netns = applied.netns
        self.vnet = applied.tun.vnet_hdr_size > 0
        self._by_name = {name: i for i, name in enumerate(applied.cfg.interfaces)}
        self._marshal = MarshalRtnl()
        self._dirty: set[int] = set()
        self._flapped: set[int] = set()
        self._neigh: set[int] = set()
        self._resolving: dict[int, float] = {}     # path -> when to give up
        self._told_why: list[str | None] = [None] * len(paths)
        self.live = LivePaths(applied)
        try:
            with netns.entered(self.netns):
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
            try:
                try:
                    # Past net.core.rmem_max (root may): a burst must not overflow it.
                    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
                except PermissionError:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                s.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
            except BaseException:
                s.close()
                raise
        except BaseException:
            self.live.close()
            raise
        self.sock = s
        # Whatever changed between `up` reading the interfaces and this subscription, and any
        # path whose gateway did not answer at startup: looked at from the loop.
        self._dirty.update(range(len(paths)))
        loop.call_at(("pathmon", "start"), time.monotonic(), lambda now: self._evaluate())

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Stop watching; the configuration in place stays (Applied.down undoes it)."""
        for key in ["start", *range(len(self.paths))]:
            self.loop.call_at(("pathmon", key), None, _noop)
        self.sock.close()
        self.live.close()

    def on_readable(self) -> None:
        for _ in range(MAX_READS):
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                # Notifications were lost: look at every path as if it had flapped.
                log.warning("path monitor: netlink notifications lost; looking at every path again")
                self._dirty.update(range(len(self.paths)))
                self._flapped.update(range(len(self.paths)))
                continue
            for msg in self._marshal.parse(data):
                self._note(msg)
        self._evaluate()

    # ------------------------------------------------------------ noting

    def _note(self, msg) -> None:
        for i, what in classify(msg, self.live.interfaces, self._by_name):
            (self._neigh if what == NEIGH else self._dirty).add(i)
            if what == DOWN:
                self._flapped.add(i)

    # ------------------------------------------------------------ acting

    def _evaluate(self) -> None:
        dirty, flapped, neigh = self._dirty, self._flapped, self._neigh
        self._dirty, self._flapped, self._neigh = set(), set(), set()
        for i in sorted(dirty | neigh):
            try:
                if i in dirty:
                    self._refresh(i, i in flapped)
                if i in self._resolving:
                    self._resolve(i)
                elif i in neigh and self.paths[i].usable:
                    self._gateway_moved(i)
            except Exception:
                # One path's trouble (or the daemon's callback) must not stop the others' update.
                log.exception("path monitor: %s", self.paths[i].ifname)

    def _refresh(self, i: int, flapped: bool) -> None:
        p = self.paths[i]
        r = self.live.refresh(i, flapped)
        for note in r.notes:
            log.warning("%s: could not remove %s; mptun down retries it", p.ifname, note)
        if r.removed:
            self._stop_resolving(i)
            if p.usable:
                p.mark_unusable()
                log.info("%s: unusable (%s)", p.ifname,
                         self.live.why[i] or "its address, gateway or MTU changed, or it flapped")
                self.on_change(i, False)
        if self.live.installed[i]:
            if not p.usable and i not in self._resolving:
                self._resolving[i] = time.monotonic() + NEIGH_GIVE_UP
        elif self.live.why[i] != self._told_why[i]:
            log.info("%s: not usable: %s", p.ifname, self.live.why[i])
        self._told_why[i] = self.live.why[i]

    def _resolve(self, i: int) -> None:
        """One step of resolving path i's gateway: usable if the neighbour table knows it."""
        iface = self.live.interfaces[i]
        mac = None
        if iface.ethernet:
            state, mac = self.live.gateway(i)
            if mac is None:
                now = time.monotonic()
                if now >= self._resolving[i]:
                    log.warning("%s: gateway %s does not answer ARP; trying again when the interface changes",
                                iface.name, iface.gateway)
                    self._stop_resolving(i)
                    return
                if state == 0 or state & NUD_FAILED:
                    self.live.ask_gateway(i)
                self.loop.call_at(("pathmon", i), now + NEIGH_RECHECK, lambda now: self._recheck(i))
                return
        self._stop_resolving(i)
        p = self.paths[i]
        if p.sock is None or p.ifindex != iface.index:
            with netns.entered(self.netns):
                p.rebind(iface.index, self.vnet)
        p.mark_usable(iface.addr.ip.packed, eth_header(mac, iface.mac))
        log.info("%s: usable, %s via %s", p.ifname, iface.addr.ip, iface.gateway or "the link")
        self.on_change(i, True)

    def _recheck(self, i: int) -> None:
        if i in self._resolving:
            self._neigh.add(i)
            self._evaluate()

    def _gateway_moved(self, i: int) -> None:
        """A usable path's gateway answered from another MAC (router replaced): follow it."""
        iface = self.live.interfaces[i]
        _, mac = self.live.gateway(i)
        eth = eth_header(mac, iface.mac)
        if mac and eth != self.paths[i].eth:
            log.info("%s: gateway %s is at %s now", iface.name, iface.gateway, mac)
            self.paths[i].mark_usable(iface.addr.ip.packed, eth)

    def _stop_resolving(self, i: int) -> None:
        self._resolving.pop(i, None)
        self.loop.call_at(("pathmon", i), None, _noop)


# What a notification says about a path: something changed (look again), it went down
# (its installed configuration may be damaged even if it is back by the time we look),
# its gateway's neighbour entry changed.
CHANGED, DOWN, NEIGH = "changed", "down", "neigh"


def classify(msg, interfaces: list[Interface], by_name: dict[str, int]) -> list[tuple[int, str]]:
    """The paths a parsed rtnetlink notification concerns, and how: [(path, CHANGED|DOWN|NEIGH)]."""
    kind = msg["header"]["type"]

    def at(ifindex):
        return next((i for i, iface in enumerate(interfaces) if iface.index == ifindex), None)

    if kind in (RTM_NEWLINK, RTM_DELLINK):
        # By name: a device unplugged and back has another index.
        i = by_name.get(msg.get_attr("IFLA_IFNAME"))
        if i is None:
            return []
        up = (msg["flags"] & (IFF_UP | IFF_RUNNING)) == (IFF_UP | IFF_RUNNING)
        return [(i, DOWN if kind == RTM_DELLINK or not up else CHANGED)]
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        i = at(msg["index"])
        if i is None or msg["family"] != socket.AF_INET:
            return []
        addr = interfaces[i].addr
        gone = kind == RTM_DELADDR and addr is not None and msg.get_attr("IFA_LOCAL") == str(addr.ip)
        return [(i, DOWN if gone else CHANGED)]
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        # Main's routes: where the interfaces' gateways come from. (mptun's own tables change
        # only by mptun, or with a link or address event above.)
        if msg["family"] != socket.AF_INET or (msg.get_attr("RTA_TABLE") or msg["table"]) != RT_TABLE_MAIN:
            return []
        hops = msg.get_attr("RTA_MULTIPATH")
        found = {at(oif) for oif in ([h["oif"] for h in hops] if hops else [msg.get_attr("RTA_OIF")])}
        return [(i, CHANGED) for i in sorted(found - {None})]
    if kind == RTM_NEWNEIGH:
        i = at(msg["ifindex"])
        gw = interfaces[i].gateway if i is not None else None
        if gw is not None and msg.get_attr("NDA_DST") == str(gw):
            return [(i, NEIGH)]
    return []


def _noop(now: float) -> None:
    pass
