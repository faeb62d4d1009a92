"""The per-packet loop: read a batch from the TUN, decide each packet's rewrite, run it, send it on.

Four kinds of packet come out of the TUN: an app's packet to its destination (NAT to the local
listener), the listener's answer (NAT back to look like the destination), a subflow socket's
packet (source NAT to the interface, MPTCP options added, out of the interface by AF_PACKET),
and the peer's packet captured on an interface (options recorded and stripped, NAT back to the
subflow socket). The byte work is the compiled rewrite module's; the decisions are mptun.core's.
This class is the seam where the whole loop can move into Cython (src/fastpath/datapath.pyx).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from socket import IPPROTO_ICMP

from mptun import impl
from mptun.core.connection import Connection, Mode
from mptun.core.events import ControlSegment
from mptun.core.mib import REWRITE_PREFIX, Counters
from mptun.io.paths import PathIO
from mptun.io.subflows import SubflowSockets
from mptun.nat.appleg import AppLeg, AppLegTable
from mptun.wire import tcpip
from mptun.wire.tcpip import TCP_ACK, TCP_RST, TCP_SYN

log = logging.getLogger("mptun")
rw = impl.load("rewrite")
_mo = impl.load("mptcpopt")
_ck = impl.load("checksum")

BATCH = 64
HEADROOM = 128
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
ETH_P_IP = 0x0800
# Option bytes the subflow route leaves room for (docs/netcfg.md, "MTU"): a path MTU reported to a
# subflow socket is lowered by as much, so its segments still fit once the options are added.
OPTION_HEADROOM = 40
ICMP_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_TIME_EXCEEDED = 11
IPV4_MIN_MTU = 68
# A subflow socket's connect error that an ICMP destination unreachable gives (net/ipv4/icmp.c,
# icmp_err_convert) -> the code that gives an app's socket the same error.
UNREACH_CODE_OF_ERRNO = {errno.ENETUNREACH: 0, errno.EHOSTUNREACH: 1, errno.ENOPROTOOPT: 2,
                         errno.EHOSTDOWN: 7, errno.ENONET: 8}


class Datapath:
    """Owns the TUN's packet batch and the flow table's per-packet use."""

    def __init__(self, tun_fd: int, vnet_len: int, tun_addr: IPv4Address, fake_block: IPv4Network,
                 listener_port: int, paths: list[PathIO], legs: AppLegTable, subflows: SubflowSockets,
                 counters: Counters, new_connection: Callable[[int, bytes, int, bytes], None],
                 option_headroom: int = OPTION_HEADROOM):
        self.fd = tun_fd
        self.vnet = vnet_len
        self.tun_addr = tun_addr.packed
        self.fake_net = int(fake_block.network_address)
        self.fake_mask = int(fake_block.netmask)
        self.listener_port = listener_port
        self.paths = paths
        self.by_sub_addr: dict[bytes, PathIO] = {}
        self.by_addr: dict[bytes, PathIO] = {}
        self.refresh_paths()
        self.option_headroom = option_headroom
        self.legs = legs
        self.subflows = subflows
        self.counters = counters
        self.new_connection = new_connection
        self.batch = rw.PacketBatch(BATCH, rw.MAX_PACKET, HEADROOM, vnet_len)
        self._dirty: set[Connection] = set()
        self._dest: list = [None] * BATCH
        self._zero_vnet = bytes(vnet_len)

    def fileno(self) -> int:
        return self.fd

    def take_dirty(self) -> set[Connection]:
        """The connections whose peer packets this datapath passed since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def refresh_paths(self) -> None:
        """Rebuild the lookups by address from self.paths (call after an interface's address
        changed). A path without an address has no packets to match."""
        self.by_sub_addr = {p.sub_addr: p for p in self.paths if p.sub_addr}
        self.by_addr = {p.addr: p for p in self.paths if p.addr}

    def rewrite_counters(self) -> dict[str, int]:
        return {k: v for k, v in self.batch.counters().items() if v}

    # ------------------------------------------------------------ the loop

    def poll(self) -> int:
        """Read up to BATCH packets from the TUN, rewrite and forward them; returns how many were read."""
        batch = self.batch
        fd = self.fd
        n = 0
        while n < BATCH:
            try:
                k = os.readv(fd, [batch.recv_buffer(n)])
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            batch.set_received(n, k)
            n += 1
        if not n:
            return 0
        batch.count = n
        dest = self._dest
        for i in range(n):
            try:
                dest[i] = self._decide(i)
            except Exception:
                # A bug must cost one packet (TCP retransmits it), never the daemon.
                log.exception("datapath: packet dropped")
                self.counters["internal_errors"] += 1
                dest[i] = None
        batch.run(n)
        for i in range(n):
            d = dest[i]
            if d is None:
                continue
            status = batch.status(i)
            if status != rw.OK:
                self.counters["no_option_room" if status == rw.NO_ROOM else
                              REWRITE_PREFIX + rw.status_name(status)] += 1
                continue
            if d is self:
                self.write_tun(batch.view(i))
            elif not d.send(batch.view(i)):
                self.counters["send_errors"] += 1
        return n

    def write_tun(self, data) -> None:
        try:
            os.write(self.fd, data)
        except OSError:
            self.counters["tun_write_errors"] += 1

    # ------------------------------------------------------------ decisions, one packet each

    def _decide(self, i: int):
        status, f = rw.parse(self.batch.view(i), self.vnet)
        if status != rw.OK:
            if status == rw.MALFORMED_NOT_TCP:
                return self._icmp_in(i)
            self.counters["malformed_packets"] += 1
            return None
        src = f["src"]
        if src == self.tun_addr:
            dst = f["dst"]
            if int.from_bytes(dst, "big") & self.fake_mask == self.fake_net:
                return self._listener_to_app(i, f)
            return self._app_to_listener(i, f)
        path = self.by_sub_addr.get(src)
        if path is not None:
            return self._subflow_out(i, f, path)
        path = self.by_addr.get(f["dst"])
        if path is not None and self.subflows.in_range(f["dport"]):
            return self._wire_in(i, f, path)
        self.counters["unknown_flow"] += 1
        return None

    def _app_to_listener(self, i: int, f: dict):
        flags = f["flags"]
        key = (f["sport"], f["dst"], f["dport"])
        leg = self.legs.by_app.get(key)
        is_syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        if leg is not None and is_syn and leg.conn.over:
            leg = None      # the app reuses its port towards the same destination: a new connection
        if leg is None:
            if is_syn:
                # Hold the SYN until the upstream MPTCP handshake has succeeded.
                self.new_connection(f["sport"], f["dst"], f["dport"], self.batch.packet(i))
            else:
                self.counters["unknown_flow"] += 1
            return None
        if leg.holding_syn:
            if is_syn:
                self.counters["syn_absorbed"] += 1
            return None
        self.batch.set_action(i, src=leg.fake, sport=leg.fake_port, dst=self.tun_addr, dport=self.listener_port)
        return self

    def _listener_to_app(self, i: int, f: dict):
        leg = self.legs.by_fake.get((f["dst"], f["dport"]))
        if leg is None or f["sport"] != self.listener_port:
            # Only the listener speaks for the destination: another local socket sending to
            # the fake pair must not reach the app's connection.
            self.counters["unknown_flow"] += 1
            return None
        self.batch.set_action(i, src=leg.dst, sport=leg.dst_port, dst=self.tun_addr, dport=leg.app_port)
        return self

    def _subflow_out(self, i: int, f: dict, path: PathIO):
        sf = self.subflows.lookup(path.index, f["sport"], f["dst"], f["dport"])
        if sf is None:
            self.counters["unknown_flow"] += 1
            return None
        opts = sf.conn.outgoing(sf, f["seq"], f["ack"], f["flags"], f["payload_len"], f["window"], f["options"])
        if opts is None:
            return None     # dropped, counted by the connection; TCP retransmits it
        if opts:
            self.batch.set_action(i, options=opts, src=path.addr, eth=path.eth or None)
        else:
            self.batch.set_action(i, src=path.addr, eth=path.eth or None)
        return path

    def _wire_in(self, i: int, f: dict, path: PathIO):
        sf = self.subflows.lookup(path.index, f["dport"], f["src"], f["sport"])
        if sf is None:
            self.counters["unknown_flow"] += 1
            return None
        conn = sf.conn
        vnet = f["vnet"]
        if vnet is not None and not vnet["flags"] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID):
            # Nobody verified this checksum: check it before trusting any option in it.
            if not self._checksum_ok(i, f):
                self.counters["tcp_checksum_failures"] += 1
                return None
        flags = f["flags"]
        mptcp = conn.mode != Mode.FALLBACK or flags & TCP_SYN
        o = _mo.parse_options(f["options"]) if mptcp else None
        if not conn.incoming(sf, f["seq"], f["ack"], flags, f["payload_len"], f["window"], o):
            return None
        if flags & TCP_RST:
            self.counters["rst_from_peer_packets"] += 1
        self._dirty.add(conn)
        if not mptcp:
            self.batch.set_action(i, dst=path.sub_addr)
        elif flags & TCP_SYN and o["present"] & _mo.HAS_MSS and conn.mode == Mode.MPTCP:
            # The peer's MSS counts every option; the kernel socket counts only its own: it gets
            # the MSS less the headroom, so its segments fit the peer once mptun's options are in.
            self.batch.set_action(i, strip_mptcp=True, dst=path.sub_addr,
                                  clamp_mss=max(o["mss"] - self.option_headroom, IPV4_MIN_MTU))
        else:
            self.batch.set_action(i, strip_mptcp=True, dst=path.sub_addr)
        return self

    def _icmp_in(self, i: int):
        """An ICMP error the capture took for a subflow (its quoted TCP header's source port is in the
        subflow range): rewritten as if about the subflow socket's own packet, for its kernel to act
        on (a failed connect, a lower path MTU), and written to the TUN."""
        pkt = bytearray(self.batch.view(i)[self.vnet:])
        if len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[9] != IPPROTO_ICMP:
            self.counters["malformed_packets"] += 1
            return None
        ihl = (pkt[0] & 0x0F) * 4
        total = int.from_bytes(pkt[2:4], "big")
        q = ihl + 8                     # the quoted IP header
        if ihl < 20 or total > len(pkt) or total < q + 20 or pkt[q] >> 4 != 4:
            self.counters["icmp_malformed"] += 1
            return None
        qhl = (pkt[q] & 0x0F) * 4
        kind, code = pkt[ihl], pkt[ihl + 1]
        if (qhl < 20 or total < q + qhl + 4 or pkt[q + 9] != 6 or kind not in (ICMP_UNREACH, ICMP_TIME_EXCEEDED)
                or _ck.internet_checksum(pkt[ihl:total]) != 0):
            self.counters["icmp_malformed"] += 1
            return None
        ours, peer = bytes(pkt[q + 12:q + 16]), bytes(pkt[q + 16:q + 20])
        sport, dport = struct.unpack_from("!HH", pkt, q + qhl)
        path = self.by_addr.get(ours)
        sf = None
        if path is not None and pkt[16:20] == ours:
            sf = self.subflows.lookup(path.index, sport, peer, dport)
        if sf is None:
            self.counters["icmp_unknown_flow"] += 1
            return None
        sub = path.sub_addr
        pkt[16:20] = sub
        struct.pack_into("!H", pkt, 10, _ck.ipv4_header_checksum(pkt[:ihl]))
        # The quoted header as the socket sent it. Its TCP checksum is left: it covers bytes that
        # are not quoted (and options mptun added), so nobody can check it.
        pkt[q + 12:q + 16] = sub
        struct.pack_into("!H", pkt, q + 10, _ck.ipv4_header_checksum(pkt[q:q + qhl]))
        if kind == ICMP_UNREACH and code == ICMP_FRAG_NEEDED:
            mtu = int.from_bytes(pkt[ihl + 6:ihl + 8], "big")
            if mtu:     # 0: a router too old to say; the kernel guesses
                struct.pack_into("!H", pkt, ihl + 6, max(mtu - self.option_headroom, IPV4_MIN_MTU))
            self.counters["icmp_frag_needed"] += 1
        struct.pack_into("!H", pkt, ihl + 2, 0)
        struct.pack_into("!H", pkt, ihl + 2, _ck.internet_checksum(pkt[ihl:total]))
        self.counters["icmp_to_subflows"] += 1
        self.write_tun(self._zero_vnet + pkt[:total])
        return None

    def _checksum_ok(self, i: int, f: dict) -> bool:
        view = self.batch.view(i)
        ip = self.vnet
        start = ip + f["ip_header_len"]
        end = ip + f["ip_total_len"]
        got = _ck.tcp_checksum_v4(f["src"], f["dst"], bytes(view[start:end]))
        return got == f["checksum"] or {got, f["checksum"]} == {0, 0xFFFF}

    # ------------------------------------------------------------ packets mptun makes itself

    def send_control(self, seg: ControlSegment, path: PathIO, peer: bytes, peer_port: int) -> None:
        """A segment of mptun's own (a pure ACK, or a RST) on subflow seg.subflow, straight out of
        its interface."""
        if not path.usable:
            self.counters["send_errors"] += 1
            return
        opts = seg.options
        pad = (-len(opts)) % 4
        tcp = tcpip.TcpHeader(src_port=seg.subflow.local_port, dst_port=peer_port, seq=seg.seq, ack=seg.ack,
                              flags=seg.flags, window=seg.window, options=opts + b"\x01" * pad)
        pkt = tcpip.build_packet(IPv4Address(path.addr), IPv4Address(peer), tcp)
        eth = path.eth + struct.pack("!H", ETH_P_IP) if path.eth else b""
        if not path.send(self._zero_vnet + eth + pkt):
            self.counters["send_errors"] += 1

    def inject_to_app(self, leg: AppLeg, seq: int, ack: int, flags: int) -> None:
        """A segment to the app as if from its destination (the RST of a refused connection)."""
        tcp = tcpip.TcpHeader(src_port=leg.dst_port, dst_port=leg.app_port, seq=seq, ack=ack, flags=flags, window=0)
        pkt = tcpip.build_packet(IPv4Address(leg.dst), IPv4Address(self.tun_addr), tcp)
        self.write_tun(self._zero_vnet + pkt)

    def refuse_syn(self, leg: AppLeg, icmp_code: int | None = None) -> None:
        """Answer the app's held SYN as it would have been answered without mptun: a RST as from
        its destination (refused, or mptun going down), or with icmp_code an ICMP destination
        unreachable quoting it (the same error the subflow's connect got)."""
        syn = leg.take_syn()
        if not syn or len(syn) < self.vnet + 28:
            return
        if icmp_code is not None:
            self.write_tun(self._zero_vnet + icmp_unreachable(leg.dst, self.tun_addr, icmp_code, syn[self.vnet:]))
            return
        ihl = (syn[self.vnet] & 0x0F) * 4
        syn_seq = struct.unpack_from("!I", syn, self.vnet + ihl + 4)[0]
        self.inject_to_app(leg, 0, (syn_seq + 1) & 0xFFFFFFFF, TCP_RST | TCP_ACK)

    def release_syn(self, leg: AppLeg) -> None:
        """The app's held SYN, now NATed to the listener: the app leg's handshake may proceed."""
        syn = leg.take_syn()
        if syn is None:
            return
        status, pkt = rw.rewrite(syn, self.vnet, src=leg.fake, sport=leg.fake_port, dst=self.tun_addr,
                                 dport=self.listener_port)
        if status == rw.OK:
            self.write_tun(pkt)
        else:
            self.counters[REWRITE_PREFIX + rw.status_name(status)] += 1


def icmp_unreachable(src: bytes, dst: bytes, code: int, quoted: bytes) -> bytes:
    """An ICMP destination unreachable from src to dst about the packet `quoted` (its IP header and
    at most 64 bytes after it, as much as RFC 1812 asks routers to quote)."""
    ihl = (quoted[0] & 0x0F) * 4
    body = bytearray(struct.pack("!BBHI", ICMP_UNREACH, code, 0, 0) + quoted[:ihl + 64])
    struct.pack_into("!H", body, 2, _ck.internet_checksum(body))
    ip = tcpip.Ipv4Header(IPv4Address(src), IPv4Address(dst), len(body), protocol=IPPROTO_ICMP, flags=0)
    return ip.emit() + bytes(body)
