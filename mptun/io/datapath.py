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


class Datapath:
    """Owns the TUN's packet batch and the flow table's per-packet use."""

    def __init__(self, tun_fd: int, vnet_len: int, tun_addr: IPv4Address, fake_block: IPv4Network,
                 listener_port: int, paths: list[PathIO], legs: AppLegTable, subflows: SubflowSockets,
                 counters: Counters, new_connection: Callable[[int, bytes, int, bytes], None]):
        self.fd = tun_fd
        self.vnet = vnet_len
        self.tun_addr = tun_addr.packed
        self.fake_net = int(fake_block.network_address)
        self.fake_mask = int(fake_block.netmask)
        self.listener_port = listener_port
        self.paths = paths
        self.by_sub_addr = {p.sub_addr: p for p in paths}
        self.by_addr = {p.addr: p for p in paths}
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
        sf = self.subflows.lookup(path.index, f["sport"])
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
        sf = self.subflows.lookup(path.index, f["dport"])
        if sf is None:
            self.counters["unknown_flow"] += 1
            return None
        conn = sf.conn
        leg = self.legs.by_conn.get(conn.id)
        if leg is not None and (f["src"] != leg.dst or f["sport"] != leg.dst_port):
            self.counters["unknown_flow"] += 1
            return None
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
        if mptcp:
            self.batch.set_action(i, strip_mptcp=True, dst=path.sub_addr)
        else:
            self.batch.set_action(i, dst=path.sub_addr)
        return self

    def _checksum_ok(self, i: int, f: dict) -> bool:
        view = self.batch.view(i)
        ip = self.vnet
        start = ip + f["ip_header_len"]
        end = ip + f["ip_total_len"]
        got = _ck.tcp_checksum_v4(f["src"], f["dst"], bytes(view[start:end]))
        return got == f["checksum"] or {got, f["checksum"]} == {0, 0xFFFF}

    # ------------------------------------------------------------ packets mptun makes itself

    def send_control(self, seg: ControlSegment, path: PathIO, peer: bytes, peer_port: int) -> None:
        """A pure ACK on subflow seg.subflow, straight out of its interface."""
        opts = seg.options
        pad = (-len(opts)) % 4
        tcp = tcpip.TcpHeader(src_port=seg.subflow.local_port, dst_port=peer_port, seq=seg.seq, ack=seg.ack,
                              flags=TCP_ACK, window=seg.window, options=opts + b"\x01" * pad)
        pkt = tcpip.build_packet(IPv4Address(path.addr), IPv4Address(peer), tcp)
        eth = path.eth + struct.pack("!H", ETH_P_IP) if path.eth else b""
        if not path.send(self._zero_vnet + eth + pkt):
            self.counters["send_errors"] += 1

    def inject_to_app(self, leg: AppLeg, seq: int, ack: int, flags: int) -> None:
        """A segment to the app as if from its destination (the RST of a refused connection)."""
        tcp = tcpip.TcpHeader(src_port=leg.dst_port, dst_port=leg.app_port, seq=seq, ack=ack, flags=flags, window=0)
        pkt = tcpip.build_packet(IPv4Address(leg.dst), IPv4Address(self.tun_addr), tcp)
        self.write_tun(self._zero_vnet + pkt)

    def refuse_syn(self, leg: AppLeg) -> None:
        """A RST for the app's held SYN, as from its destination (refused, or mptun going down)."""
        syn = leg.take_syn()
        if not syn or len(syn) < self.vnet + 28:
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
