"""Capture of the peer's answers: tc ingress + u32 + mirred redirect into the TUN.

Pure builders (the port range as u32 value/mask blocks, the u32 keys) and the
pyroute2 calls that add and remove exactly one filter or the qdisc mptun added.
A filter matches IPv4 without options (so the TCP header is at offset 20), not a
later fragment, protocol TCP, destination = the interface's address, destination
port in one block of the subflow range. An ICMP filter matches the errors that
concern subflows: destination unreachable or time exceeded quoting a TCP segment
whose source port is in one block of the subflow range; it does not name the
interface's address, which may change while mptun is up.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Address

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

ETH_P_IP = 0x0800
# Filters on either qdisc's ingress hook are addressed as ffff:fff2, as
# `tc filter add dev X ingress` does. The kernel reports the parent of the last
# filter added for every filter of the qdisc: the same value as tc's keeps
# `tc filter show` of others' filters unchanged.
INGRESS_FILTER_PARENT = 0xFFFFFFF2
# The classid of a filter on ingress means nothing; mirred decides.
_CLASSID = 0x10001


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """lo..hi as the fewest (value, mask) pairs with (port & mask) == value."""
    assert 0 <= lo <= hi <= 0xFFFF, (lo, hi)
    blocks = []
    while lo <= hi:
        size = (lo & -lo) or 0x10000
        while size > hi - lo + 1:
            size >>= 1
        blocks.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return blocks


def capture_keys(dst: str, port_value: int, port_mask: int) -> list[str]:
    """u32 keys in pyroute2's 'value/mask+offset' form (offsets from the IP header)."""
    ip = int(IPv4Address(dst))
    return [
        "0x45000000/0xff000000+0",            # IPv4, header length 5 words: dport is at byte 22
        "0x00000000/0x00001fff+4",            # fragment offset 0: a TCP header is present
        "0x00060000/0x00ff0000+8",            # protocol TCP
        f"0x{ip:08x}/0xffffffff+16",          # destination address
        f"0x{port_value:08x}/0x{port_mask:08x}+20",  # destination port (sport is the high half)
    ]


def icmp_capture_keys(port_value: int, port_mask: int) -> list[str]:
    """u32 keys of the ICMP errors about subflows (offsets from the outer IP header)."""
    return [
        "0x45000000/0xff000000+0",            # IPv4, header length 5 words: the ICMP header is at 20
        "0x00000000/0x00001fff+4",            # fragment offset 0
        "0x00010000/0x00ff0000+8",            # protocol ICMP
        "0x03000000/0xf7000000+20",           # type 3 (unreachable) or 11 (time exceeded): 3 = 11 & 0xf7
        "0x45000000/0xff000000+28",           # the quoted IPv4 header, 5 words: its TCP header is at 48
        "0x00060000/0x00ff0000+36",           # quoted protocol TCP
        f"0x{port_value << 16:08x}/0x{port_mask << 16:08x}+48",  # quoted source port (the high half)
    ]


def add_qdisc(ipr: IPRoute, index: int) -> None:
    ipr.tc("add", "ingress", index=index)


def del_qdisc_if_unused(ipr: IPRoute, index: int) -> bool:
    """Remove the ingress qdisc mptun added, unless someone attached filters of their own to it."""
    qdiscs = [q for q in ipr.get_qdiscs(index=index) if q.get_attr("TCA_KIND") == "ingress"]
    if not qdiscs:
        return True
    if ipr.get_filters(index=index, parent=INGRESS_FILTER_PARENT):
        return False
    ipr.tc("del", "ingress", index=index)
    return True


def _handles(ipr: IPRoute, index: int, parent: int, prio: int) -> set[int]:
    # u32 lists its hash tables too (handles with node 0): only nodes are filters.
    return {f["handle"] for f in ipr.get_filters(index=index, parent=parent)
            if f["info"] >> 16 == prio and f["handle"] & 0xFFF}


def add_filter(ipr: IPRoute, index: int, parent: int, prio: int, keys: list[str], target_index: int) -> int:
    """Add the filter and return the handle the kernel gave it. (u32 handles are
    shared by all u32 filters of a qdisc, so a handle cannot be picked safely.)"""
    before = _handles(ipr, index, parent, prio)
    ipr.tc("add-filter", "u32", index=index, parent=parent, protocol=ETH_P_IP, prio=prio,
           keys=keys, target=_CLASSID,
           action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target_index})
    new = _handles(ipr, index, parent, prio) - before
    assert len(new) == 1, new
    return new.pop()


def del_filter(ipr: IPRoute, index: int, parent: int, prio: int, handle: int | None) -> None:
    """Remove the filter by its handle, then its priority if nothing else is left
    there (u32 keeps an empty one when other u32 filters share the qdisc).
    Without a handle (the process died before recording it) the priority goes,
    where only mptun's filter was put."""
    if handle is not None:
        try:
            _del(ipr, index, parent, prio, handle)
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise
        if _handles(ipr, index, parent, prio):
            return  # someone put a filter of their own at this priority since
    if any(f["info"] >> 16 == prio for f in ipr.get_filters(index=index, parent=parent)):
        _del(ipr, index, parent, prio, 0)


def _del(ipr: IPRoute, index: int, parent: int, prio: int, handle: int) -> None:
    ipr.tc("del-filter", "u32", index=index, parent=parent, protocol=ETH_P_IP, prio=prio, handle=handle,
           target=_CLASSID)
