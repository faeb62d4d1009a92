"""ICMP errors for subflows, and subflows told apart by their whole 4-tuple, in the datapath
without root (the rig of test_datapath.py: socket pairs for the TUN and the interface).

Checked: an ICMP error captured on the interface about a subflow's segment reaches the TUN
rewritten for the subflow socket (outer destination and quoted source its internal address, every
checksum right, a fragmentation-needed MTU lowered by the option headroom); malformed ones and
ones about no subflow are dropped and counted; an app whose destination is unreachable gets an
ICMP error quoting its SYN; the peer's MSS reaches the kernel socket less the option headroom
(its segments then fit the peer with mptun's options); two subflows sharing a local port towards different peers each get
their own packets.
"""

import struct
from ipaddress import IPv4Address

import pytest

from mptun.core.connection import Connection
from mptun.wire import mptcp as w
from mptun.wire import tcpip
from mptun.wire.tcpip import TCP_ACK, TCP_SYN
from tests.unit.test_datapath import IF_ADDR, PEER_KEY, SERVER, SUB_ADDR, TUN_ADDR, VNET, Rig, app_syn, ip_tcp, mo

ROUTER = IPv4Address("198.18.1.1")
OTHER = IPv4Address("198.18.100.3")


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def icmp(src, dst, kind, code, quoted, rest=0, bad_checksum=False):
    body = bytearray(struct.pack("!BBHI", kind, code, 0, rest) + quoted)
    csum = tcpip.internet_checksum(bytes(body))
    struct.pack_into("!H", body, 2, csum ^ 0xFFFF if bad_checksum else csum)
    ip = tcpip.Ipv4Header(src, dst, len(body), protocol=1, flags=0)
    return ip.emit() + bytes(body)


def wire_segment(sf, size=1448, dst=SERVER, dport=80):
    """A subflow data segment as it left the interface (NATed to the interface's address)."""
    return tcpip.build_packet(IF_ADDR, dst, tcpip.TcpHeader(sf.local_port, dport, 7001, 9001, flags=TCP_ACK),
                              bytes(size))


def from_wire(rig, pkt):
    rig.tun.send(bytes(VNET) + pkt)
    rig.poll()
    return rig.drain(rig.tun)


def parse_icmp(pkt):
    """(outer header, type, code, rest-of-header word, quoted header, icmp checksum ok)."""
    outer = tcpip.Ipv4Header.parse(pkt)
    body = pkt[outer.buffer_len:outer.buffer_len + outer.payload_len]
    kind, code, _, rest = struct.unpack_from("!BBHI", body)
    return outer, kind, code, rest, body[8:], tcpip.internet_checksum(body) == 0


def ip_header_ok(header: bytes) -> bool:
    return tcpip.internet_checksum(header) == 0


def test_frag_needed_reaches_the_subflow_socket_with_room_for_the_options(rig):
    leg, sf = app_syn(rig)
    seg = wire_segment(sf)
    (out,) = from_wire(rig, icmp(ROUTER, IF_ADDR, 3, 4, seg[:28 + 40], rest=1400))
    pkt = out[VNET:]
    outer, kind, code, rest, quoted, ok = parse_icmp(pkt)
    assert (outer.src, outer.dst, kind, code) == (ROUTER, SUB_ADDR, 3, 4)
    assert ok and ip_header_ok(pkt[:20]), "a checksum of the rewritten ICMP error is wrong"
    assert rest & 0xFFFF == 1400 - 40
    assert quoted[12:16] == SUB_ADDR.packed and quoted[16:20] == SERVER.packed
    assert ip_header_ok(quoted[:20]), "the quoted IP header's checksum is wrong"
    assert struct.unpack_from("!HH", quoted, 20) == (sf.local_port, 80)
    assert rig.counters["icmp_to_subflows"] == 1 and rig.counters["icmp_frag_needed"] == 1


def test_host_unreachable_about_the_subflow_syn_is_passed_as_it_is(rig):
    leg, sf = app_syn(rig)
    syn = tcpip.build_packet(IF_ADDR, SERVER, tcpip.TcpHeader(sf.local_port, 80, 7000, 0, flags=TCP_SYN))
    (out,) = from_wire(rig, icmp(ROUTER, IF_ADDR, 3, 1, syn))
    outer, kind, code, rest, quoted, ok = parse_icmp(out[VNET:])
    assert (outer.dst, kind, code, rest, ok) == (SUB_ADDR, 3, 1, 0, True)
    assert quoted[20:] == syn[20:]                   # the quoted TCP header is the segment's
    assert rig.counters["icmp_to_subflows"] == 1 and not rig.counters["icmp_frag_needed"]


def test_time_exceeded_is_passed_too(rig):
    leg, sf = app_syn(rig)
    (out,) = from_wire(rig, icmp(ROUTER, IF_ADDR, 11, 0, wire_segment(sf)[:28]))
    assert parse_icmp(out[VNET:])[1:3] == (11, 0)


def test_malformed_or_foreign_icmp_errors_are_dropped_and_counted(rig):
    leg, sf = app_syn(rig)
    seg = wire_segment(sf)[:48]
    udp = bytearray(seg)
    udp[9] = 17
    cases = {
        "icmp_malformed": [
            icmp(ROUTER, IF_ADDR, 3, 1, seg, bad_checksum=True),
            icmp(ROUTER, IF_ADDR, 3, 1, seg[:22]),                     # quote ends before the ports
            icmp(ROUTER, IF_ADDR, 3, 1, bytes(udp)),                   # about UDP
            icmp(ROUTER, IF_ADDR, 5, 1, seg),                          # a redirect, not an error for us
        ],
        "icmp_unknown_flow": [
            icmp(ROUTER, IF_ADDR, 3, 1, wire_segment(sf, dst=OTHER)),  # another peer: no such subflow
            icmp(ROUTER, IF_ADDR, 3, 1, wire_segment(sf, dport=81)),
            icmp(ROUTER, OTHER, 3, 1, seg),                            # not sent to the segment's source
        ],
    }
    for counter, packets in cases.items():
        for p in packets:
            assert from_wire(rig, p) == [], counter
        assert rig.counters[counter] == len(packets), counter
    assert not rig.counters["icmp_to_subflows"]
    # Neither TCP nor ICMP, or shorter than its IP header says: dropped as before.
    assert from_wire(rig, bytes(udp)) == [] and from_wire(rig, icmp(ROUTER, IF_ADDR, 3, 1, seg)[:40]) == []
    assert rig.counters["malformed_packets"] == 2


def test_unreachable_app_gets_an_icmp_error_quoting_its_syn(rig):
    leg, sf = app_syn(rig)
    syn = leg.syn[VNET:]
    rig.dp.refuse_syn(leg, icmp_code=1)
    (out,) = rig.drain(rig.tun)
    assert out[:VNET] == bytes(VNET)
    outer, kind, code, rest, quoted, ok = parse_icmp(out[VNET:])
    assert (outer.src, outer.dst, kind, code, ok) == (SERVER, TUN_ADDR, 3, 1, True)
    assert ip_header_ok(out[VNET:VNET + 20])
    assert quoted == syn                               # all of it: a SYN is shorter than 64 bytes of TCP
    assert not leg.holding_syn


def second_subflow_on_the_same_port(rig, sf, peer):
    """Another connection's subflow on sf's path and port, towards peer:80."""
    conn2 = Connection(99, 0x5555666677778888, 0.0, rig.counters)
    conn2.start(0.0)
    sf2 = conn2.subflow_opened(0, sf.local_port)
    rig.subflows.register(sf2, peer.packed, 80)
    return sf2


def test_subflows_sharing_a_port_are_told_apart_by_their_peer(rig):
    leg, sf = app_syn(rig)
    sf2 = second_subflow_on_the_same_port(rig, sf, OTHER)
    assert rig.subflows.lookup(0, sf.local_port, SERVER.packed, 80) is sf
    assert rig.subflows.lookup(0, sf.local_port, OTHER.packed, 80) is sf2
    assert rig.subflows.remote_of(sf2) == (OTHER.packed, 80)
    # The kernel's SYN of each goes out; the answer of each reaches its own socket.
    for peer in (SERVER, OTHER):
        rig.to_tun(SUB_ADDR, peer, tcpip.TcpHeader(sf.local_port, 80, 7000, 0, flags=TCP_SYN))
    rig.poll()
    assert len(rig.drain(rig.wire)) == 2
    rig.to_tun(OTHER, IF_ADDR, tcpip.TcpHeader(80, sf.local_port, 5000, 7001, flags=TCP_SYN | TCP_ACK))
    rig.poll()
    (pkt,) = rig.drain(rig.tun)
    assert ip_tcp(pkt, VNET)[:2] == (OTHER, SUB_ADDR)
    assert sf2.peer_isn == 5000 and sf.peer_isn is None


def test_a_lingering_entry_is_replaced_when_its_4_tuple_is_connected_again(rig):
    leg, sf = app_syn(rig)
    sf2 = second_subflow_on_the_same_port(rig, sf, SERVER)
    assert rig.subflows.lookup(0, sf.local_port, SERVER.packed, 80) is sf2
    assert rig.counters["subflow_tuples_reused"] == 1
    rig.subflows.forget(sf)                            # the old connection expires: sf2 stays
    assert rig.subflows.lookup(0, sf.local_port, SERVER.packed, 80) is sf2
    rig.subflows.forget(sf2)
    assert rig.subflows.lookup(0, sf.local_port, SERVER.packed, 80) is None


@pytest.mark.parametrize("mptcp, seen", [(True, 1460 - 40), (False, 1460)])
def test_the_peers_mss_leaves_room_for_mptuns_options(rig, mptcp, seen):
    leg, sf = app_syn(rig)
    opts = [tcpip.Mss(1460)] + ([w.MpCapable.synack(PEER_KEY)] if mptcp else [])
    rig.to_tun(SERVER, IF_ADDR, tcpip.TcpHeader(80, sf.local_port, 9000, 7001, flags=TCP_SYN | TCP_ACK,
                                                options=tcpip.build_options(*opts)))
    rig.poll()
    (pkt,) = rig.drain(rig.tun)
    src, dst, tcp, ok = ip_tcp(pkt, VNET)
    assert ok and mo.parse_options(tcp.options)["mss"] == seen
