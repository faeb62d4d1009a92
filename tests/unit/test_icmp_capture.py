"""The capture of ICMP errors for subflows, without root: the u32 keys select exactly the errors
about TCP segments from the subflow range (checked by evaluating them on packets, as u32 does),
and the plan gives every path device one filter per port block, after the TCP filters'
priorities, independent of the interface's address, with undo recorded like the TCP filter's."""

import dataclasses
import struct
from ipaddress import IPv4Address

import pytest

from mptun.netcfg import NetConfig, NetcfgError
from mptun.netcfg.capture import icmp_capture_keys, port_blocks
from mptun.netcfg.plan import AddCaptureFilter, AddIcmpCaptureFilter, build_plan, op_from_json
from mptun.wire import tcpip
from tests.unit.test_netcfg_plan import host, iface, of, plan_for

ROUTER = IPv4Address("198.18.1.1")
CLIENT = IPv4Address("198.18.1.2")
SERVER = IPv4Address("198.18.100.2")


def u32_matches(keys: list[str], pkt: bytes) -> bool:
    """What the kernel's u32 does with these keys: every 32-bit word at its offset, masked, equals
    the value; a word beyond the packet fails the match."""
    for key in keys:
        vm, _, off = key.partition("+")
        value, mask = (int(x, 16) for x in vm.split("/"))
        off = int(off)
        if off + 4 > len(pkt) or struct.unpack_from("!I", pkt, off)[0] & mask != value:
            return False
    return True


def icmp_about(kind, code, sport, proto=6, quoted_ihl=5, outer_frag=0):
    quoted = bytearray(tcpip.build_packet(CLIENT, SERVER, tcpip.TcpHeader(sport, 80, 1, 0))[:28])
    quoted[0] = 0x40 | quoted_ihl
    quoted[9] = proto
    body = struct.pack("!BBHI", kind, code, 0, 0) + bytes(quoted)
    ip = bytearray(tcpip.Ipv4Header(ROUTER, CLIENT, len(body), protocol=1, flags=0).emit())
    struct.pack_into("!H", ip, 6, outer_frag)
    return bytes(ip) + body


@pytest.mark.parametrize("lo, hi", [(61440, 65535), (61000, 61999)])
def test_icmp_keys_select_errors_about_subflow_ports(lo, hi):
    blocks = [icmp_capture_keys(v, m) for v, m in port_blocks(lo, hi)]

    def captured(pkt):
        return any(u32_matches(k, pkt) for k in blocks)

    for port in (lo, lo + 1, (lo + hi) // 2, hi):
        for kind, code in ((3, 0), (3, 1), (3, 3), (3, 4), (3, 13), (11, 0)):
            assert captured(icmp_about(kind, code, port)), (kind, code, port)
    for port in (p for p in (lo - 1, hi + 1, 1024) if p <= 0xFFFF):
        assert not captured(icmp_about(3, 1, port)), port
    assert not captured(icmp_about(5, 1, lo))              # redirect
    assert not captured(icmp_about(0, 0, lo))              # echo reply
    assert not captured(icmp_about(3, 1, lo, proto=17))    # about UDP
    assert not captured(icmp_about(3, 1, lo, quoted_ihl=6))   # quoted IP options: ports elsewhere
    assert not captured(icmp_about(3, 1, lo, outer_frag=1))   # a later fragment
    assert not captured(icmp_about(3, 1, lo)[:49])          # too short to hold the port


def test_every_device_gets_the_icmp_filters_after_the_tcp_ones():
    plan = plan_for(NetConfig(["eth0", "eth1"], subflow_ports=(61000, 61999)))
    nblocks = len(port_blocks(61000, 61999))
    icmp = of(plan, AddIcmpCaptureFilter)
    assert [f.dev for f in icmp] == ["eth0"] * nblocks + ["eth1"] * nblocks
    assert [f.prio for f in icmp[:nblocks]] == [0x4D50 + nblocks + k for k in range(nblocks)]
    assert {(f.port_value, f.port_mask) for f in icmp} == set(port_blocks(61000, 61999))
    assert {f.target for f in icmp} == {"mptun0"} and {f.parent for f in icmp} == {0xFFFFFFF2}
    assert not {f.prio for f in icmp} & {f.prio for f in of(plan, AddCaptureFilter)}
    # Journaled like any step, and read back as the same operation.
    assert all(op_from_json(f.to_json()) == f and f.journaled for f in icmp)
    # After the qdisc it sits on.
    kinds = [op.kind for op in plan.ops]
    assert kinds.index("qdisc") < kinds.index("icmp_filter")


def test_an_interface_without_address_still_gets_the_icmp_filter():
    h = host(iface(0))
    h = dataclasses.replace(h, interfaces=(*h.interfaces, iface(1, addr=None, addrs=(), gateway=None,
                                                                why="no IPv4 address")),
                            link_names=h.link_names | {"eth1"})
    plan = build_plan(NetConfig(["eth0", "eth1"]), h)
    assert [f.dev for f in of(plan, AddIcmpCaptureFilter)] == ["eth0", "eth1"]
    assert [f.dev for f in of(plan, AddCaptureFilter)] == ["eth0"]


def test_preflight_refuses_a_busy_icmp_priority():
    with pytest.raises(NetcfgError, match="tc filter priority 19793 is in use on eth0"):
        build_plan(NetConfig(["eth0"]), host(iface(0, ingress_qdisc="ingress", ingress_prios=frozenset({0x4D51}))))
    with pytest.raises(NetcfgError, match="no room for the ICMP filters"):
        build_plan(NetConfig(["eth0"], tc_prio=0xFFFF), host(iface(0)))
