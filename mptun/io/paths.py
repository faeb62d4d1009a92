"""PathIO: one path interface as the edge uses it: its addresses, link-layer header and AF_PACKET socket.

Subflow packets leave through the path's packet socket whole (with PACKET_VNET_HDR the kernel
segments super-packets and copies mptun's options into every segment: docs/datapath.md, offload).
A path is usable while its interface is up with an address and a resolved gateway; PathMonitor
(mptun/io/pathmon.py) marks it usable and unusable as the interface comes and goes.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mptun import netcfg
from mptun.netcfg import netns

SOL_PACKET = 263
PACKET_VNET_HDR = 15


@dataclass
class PathIO:
    index: int
    ifname: str
    ifindex: int
    addr: bytes | None   # the interface's address: subflow source on the wire; None while unusable
    sub_addr: bytes      # where the subflow sockets of this path are bound (on the TUN)
    eth: bytes           # gateway MAC + own MAC (12 bytes), b"" without a link layer (or while unusable)
    usable: bool = True
    backup: bool = False
    sock: socket.socket | None = None

    def open(self, vnet: bool) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # protocol 0: receives nothing
        try:
            if vnet:
                s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            s.bind((self.ifname, 0))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.sock = s

    def mark_usable(self, addr: bytes, eth: bytes) -> None:
        self.addr, self.eth, self.usable = addr, eth, True

    def set_role(self, backup: bool) -> None:
        self.backup = backup

    def mark_unusable(self) -> None:
        self.addr, self.eth, self.usable = None, b"", False

    def rebind(self, ifindex: int, vnet: bool) -> None:
        """The interface is another device now (unplugged and back): a socket on the new one.
        The caller has entered the path's network namespace."""
        self.close()
        self.ifindex = ifindex
        self.open(vnet)

    def send(self, data) -> bool:
        """One frame out of the interface; False if the kernel refused it (TCP retransmits)."""
        try:
            self.sock.send(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def eth_header(gateway_mac: str | None, own_mac: str | None) -> bytes:
    """The 12 address bytes of the Ethernet header the datapath writes; b"" without a link layer."""
    if not gateway_mac:
        return b""
    return bytes.fromhex(gateway_mac.replace(":", "")) + bytes.fromhex(own_mac.replace(":", ""))


def paths_from_applied(applied: netcfg.Applied, vnet: bool) -> list[PathIO]:
    """A PathIO for every interface `up` was given, each with its packet socket open. One usable
    now gets its address and Ethernet header (its gateway's MAC resolved here, waiting for ARP up
    to a few seconds); the others start unusable (addr None, eth b"") until PathMonitor finds them
    usable, as does one whose gateway does not answer. NetcfgError if no path is usable."""
    paths: list[PathIO] = []
    unresolved = []
    try:
        for i, iface in enumerate(applied.interfaces):
            p = PathIO(index=i, ifname=iface.name, ifindex=iface.index, addr=None,
                       sub_addr=applied.layout.subflow_addr(i).packed, eth=b"", usable=False)
            paths.append(p)
            with netns.entered(applied.netns):
                p.open(vnet)
            if not iface.usable:
                continue
            try:
                mac = netcfg.resolve_gateway_mac(iface, netns_name=applied.netns)
            except netcfg.NetcfgError as e:
                unresolved.append(str(e))
                continue
            p.mark_usable(iface.addr.ip.packed, eth_header(mac, iface.mac))
        if not any(p.usable for p in paths):
            raise netcfg.NetcfgError("; ".join(unresolved))
    except BaseException:
        for p in paths:
            p.close()
        raise
    return paths
