"""The per-packet datapath without root: the TUN and the interface's packet socket are replaced by
SOCK_SEQPACKET socket pairs (one message = one packet), and packets are built with mptun.wire.

Checked: each kind of packet goes where it must, rewritten as it must (NAT both legs, MPTCP options
added towards the peer and stripped towards the kernel, checksums still right), and what is not
ours is dropped and counted.
"""

import socket
from ipaddress import IPv4Address, IPv4Network

import pytest

from mptun import impl
from mptun.core.connection import Connection
from mptun.core.mib import Counters
from mptun.io.datapath import Datapath
from mptun.io.paths import PathIO
from mptun.io.subflows import SubflowSockets
from mptun.nat.appleg import AppLegTable
from mptun.wire.tcpip import TCP_ACK, TCP_RST, TCP_SYN
from mptun.wire import mptcp as w
from mptun.wire import tcpip

mo = impl.load("mptcpopt")

VNET = 10
TUN_ADDR = IPv4Address("198.19.0.1")
SUB_ADDR = IPv4Address("198.19.64.1")
IF_ADDR = IPv4Address("198.18.1.2")
SERVER = IPv4Address("198.18.100.2")
FAKE = IPv4Network("198.19.128.0/17")
LISTENER_PORT = 45000
ETH = bytes.fromhex("020000000001" "020000000002")
PEER_KEY = 0x0102030405060708


class Rig:
    def __init__(self):
        self.tun_dp, self.tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.wire_dp, self.wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.tun_dp, self.tun, self.wire_dp, self.wire):
            s.setblocking(False)
        self.path = PathIO(0, "eth0", 2, IF_ADDR.packed, SUB_ADDR.packed, ETH, sock=self.wire_dp)
        self.counters = Counters()
        self.legs = AppLegTable(FAKE)
        self.subflows = SubflowSockets([self.path], (61440, 65535), 0, self.counters)
        self.syns = []
        self.dp = Datapath(self.tun_dp.fileno(), VNET, TUN_ADDR, FAKE, LISTENER_PORT, [self.path], self.legs,
                           self.subflows, self.counters, self.new_connection)

    def new_connection(self, app_port, dst, dst_port, syn):
        """What the daemon does with an app's first SYN, without a real subflow socket."""
        conn = Connection(len(self.syns) + 1, 0x1111222233334444, 0.0, self.counters)
        leg = self.legs.add(conn, app_port, dst, dst_port, syn)
        conn.start(0.0)
        sf = conn.subflow_opened(0, 61440 + len(self.syns))
        self.subflows.register(sf, dst, dst_port)
        self.syns.append((leg, sf))

    def to_tun(self, src, dst, tcp, payload=b""):
        self.tun.send(bytes(VNET) + tcpip.build_packet(src, dst, tcp, payload))

    def poll(self):
        return self.dp.poll()

    @staticmethod
    def drain(sock):
        out = []
        while True:
            try:
                out.append(sock.recv(70000))
            except BlockingIOError:
                return out

    def close(self):
        for s in (self.tun_dp, self.tun, self.wire_dp, self.wire):
            s.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def ip_tcp(frame: bytes, l2: int):
    """(src, dst, TcpHeader, checksum ok) of a frame with l2 bytes before the IP header."""
    ip = frame[l2:]
    hdr = tcpip.Ipv4Header.parse(ip)
    seg = ip[hdr.buffer_len:hdr.buffer_len + hdr.payload_len]
    return hdr.src, hdr.dst, tcpip.TcpHeader.parse(seg), tcpip.tcp_checksum_ok(hdr.src, hdr.dst, seg)


def app_syn(rig):
    rig.to_tun(TUN_ADDR, SERVER, tcpip.TcpHeader(40000, 80, 555, 0, flags=TCP_SYN))
    rig.poll()
    return rig.syns[-1]


def subflow_syn(rig, sf):
    rig.to_tun(SUB_ADDR, SERVER, tcpip.TcpHeader(sf.local_port, 80, 7000, 0, flags=TCP_SYN,
                                                  options=tcpip.build_options(tcpip.Mss(1420))))
    rig.poll()
    return rig.drain(rig.wire)


def test_app_syn_is_held_and_a_connection_made(rig):
    leg, sf = app_syn(rig)
    assert (leg.app_port, leg.dst, leg.dst_port) == (40000, SERVER.packed, 80)
    assert rig.drain(rig.tun) == []                       # held, not passed on
    rig.to_tun(TUN_ADDR, SERVER, tcpip.TcpHeader(40000, 80, 555, 0, flags=TCP_SYN))
    rig.poll()
    assert rig.counters["syn_absorbed"] == 1 and len(rig.syns) == 1


def test_subflow_syn_leaves_by_the_interface_with_mp_capable(rig):
    leg, sf = app_syn(rig)
    frames = subflow_syn(rig, sf)
    assert len(frames) == 1
    frame = frames[0]
    assert frame[VNET:VNET + 12] == ETH and frame[VNET + 12:VNET + 14] == b"\x08\x00"
    src, dst, tcp, ok = ip_tcp(frame, VNET + 14)
    assert (src, dst, tcp.src_port, tcp.dst_port) == (IF_ADDR, SERVER, sf.local_port, 80)
    assert ok, "the rewritten SYN's TCP checksum is wrong"
    o = mo.parse_options(tcp.options)
    assert o["mpc_form"] == 1 and o["mss"] == 1420


def test_peer_synack_is_recorded_stripped_and_natted_back(rig):
    leg, sf = app_syn(rig)
    subflow_syn(rig, sf)
    opts = tcpip.build_options(tcpip.Mss(1460), w.MpCapable.synack(PEER_KEY))
    rig.to_tun(SERVER, IF_ADDR, tcpip.TcpHeader(80, sf.local_port, 9000, 7001, flags=TCP_SYN | TCP_ACK,
                                                options=opts))
    rig.poll()
    (pkt,) = rig.drain(rig.tun)
    src, dst, tcp, ok = ip_tcp(pkt, VNET)
    assert (src, dst, tcp.dst_port) == (SERVER, SUB_ADDR, sf.local_port)
    assert ok
    assert mo.parse_options(tcp.options)["mptcp_count"] == 0
    assert sf.conn.mode == "mptcp" and sf.conn.peer_key == PEER_KEY


def test_released_syn_and_the_listeners_answer_are_natted(rig):
    leg, sf = app_syn(rig)
    rig.dp.release_syn(leg)
    (pkt,) = rig.drain(rig.tun)
    src, dst, tcp, ok = ip_tcp(pkt, VNET)
    assert (src.packed, tcp.src_port) == (leg.fake, leg.fake_port)
    assert (dst, tcp.dst_port) == (TUN_ADDR, LISTENER_PORT) and ok
    # the listener answers the fake peer: the app must see its destination
    rig.to_tun(TUN_ADDR, IPv4Address(leg.fake), tcpip.TcpHeader(LISTENER_PORT, leg.fake_port, 1, 556,
                                                                flags=TCP_SYN | TCP_ACK))
    rig.poll()
    (pkt,) = rig.drain(rig.tun)
    src, dst, tcp, ok = ip_tcp(pkt, VNET)
    assert (src, tcp.src_port, dst, tcp.dst_port) == (SERVER, 80, TUN_ADDR, 40000) and ok
    # and the app's next segment goes to the listener
    rig.to_tun(TUN_ADDR, SERVER, tcpip.TcpHeader(40000, 80, 556, 2, flags=TCP_ACK))
    rig.poll()
    (pkt,) = rig.drain(rig.tun)
    src, dst, tcp, ok = ip_tcp(pkt, VNET)
    assert (src.packed, dst, tcp.dst_port) == (leg.fake, TUN_ADDR, LISTENER_PORT) and ok


def test_refused_app_gets_a_reset_from_its_destination(rig):
    leg, sf = app_syn(rig)
    rig.dp.refuse_syn(leg)
    (pkt,) = rig.drain(rig.tun)
    src, dst, tcp, ok = ip_tcp(pkt, VNET)
    assert (src, tcp.src_port, dst, tcp.dst_port) == (SERVER, 80, TUN_ADDR, 40000)
    assert tcp.flags == TCP_RST | TCP_ACK and tcp.ack == 556 and ok


def test_what_is_not_ours_is_dropped_and_counted(rig):
    rig.tun.send(bytes(VNET) + b"\x45\x00\x00")            # truncated
    rig.to_tun(IPv4Address("198.18.5.5"), SERVER, tcpip.TcpHeader(1, 2, 3, 4))
    rig.to_tun(SERVER, IF_ADDR, tcpip.TcpHeader(80, 61999, 1, 1))   # no such subflow
    rig.to_tun(TUN_ADDR, SERVER, tcpip.TcpHeader(40001, 80, 1, 1))  # not a SYN, no connection
    rig.poll()
    assert rig.drain(rig.tun) == [] and rig.drain(rig.wire) == []
    assert rig.counters["malformed_packets"] == 1
    assert rig.counters["unknown_flow"] == 3


def test_peer_packet_with_malformed_mptcp_option_is_dropped(rig):
    leg, sf = app_syn(rig)
    subflow_syn(rig, sf)
    rig.to_tun(SERVER, IF_ADDR, tcpip.TcpHeader(80, sf.local_port, 9000, 7001, flags=TCP_SYN | TCP_ACK,
                                                options=tcpip.build_options(w.MpCapable.synack(PEER_KEY))))
    rig.poll()
    rig.drain(rig.tun)
    bad = bytes([30, 5, 0x20, 0x01, 0]) + b"\x01\x01\x01"
    rig.to_tun(SERVER, IF_ADDR, tcpip.TcpHeader(80, sf.local_port, 9001, 7001, flags=TCP_ACK, options=bad))
    rig.poll()
    assert rig.drain(rig.tun) == []
    assert rig.counters["malformed_options"] == 1


def test_a_bug_costs_one_packet_not_the_loop(rig, monkeypatch):
    def boom(*a):
        raise RuntimeError("bug")

    monkeypatch.setattr(rig.dp, "_app_to_listener", boom)
    rig.to_tun(TUN_ADDR, SERVER, tcpip.TcpHeader(40000, 80, 555, 0, flags=TCP_SYN))
    rig.to_tun(SERVER, IF_ADDR, tcpip.TcpHeader(80, 61999, 1, 1))
    assert rig.poll() == 2
    assert rig.counters["internal_errors"] == 1 and rig.counters["unknown_flow"] == 1


def test_only_the_listener_reaches_an_app_through_its_fake_pair(rig):
    # Another local process sending to the fake pair must not be NATed into the app's connection.
    leg, sf = app_syn(rig)
    rig.dp.release_syn(leg)
    rig.drain(rig.tun)
    before = rig.counters["unknown_flow"]
    rig.to_tun(TUN_ADDR, IPv4Address(leg.fake), tcpip.TcpHeader(50505, leg.fake_port, 1, 0,
                                                                flags=TCP_ACK | TCP_RST))
    rig.poll()
    assert rig.drain(rig.tun) == [], "a packet not from the listener was NATed to the app"
    assert rig.counters["unknown_flow"] == before + 1
    # the listener's own packets still go through
    rig.to_tun(TUN_ADDR, IPv4Address(leg.fake), tcpip.TcpHeader(LISTENER_PORT, leg.fake_port, 1, 556,
                                                                flags=TCP_SYN | TCP_ACK))
    rig.poll()
    (pkt,) = rig.drain(rig.tun)
    src, dst, tcp, ok = ip_tcp(pkt, VNET)
    assert (src, tcp.src_port, dst, tcp.dst_port) == (SERVER, 80, TUN_ADDR, 40000) and ok
