"""Named tests of the packet rewriter (NAT, options, MSS clamp, Ethernet header, batches) on IPv4 and
IPv6, with and without a virtio_net_hdr and NEEDS_CSUM, on both the compiled module and its twin.

Packets are built here with struct and checked by independent full recomputation (a word-by-word
sum written here, and scapy's dissector); NEEDS_CSUM packets are completed as the kernel would.
"""

import importlib.util
import ipaddress
import os
import struct
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES

import pytest
from scapy.layers.inet import IP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.utils import checksum as scapy_checksum

from mptun import impl
from mptun.pure import rewrite_ops as ops
from mptun.wire.tcpip import TCP_ACK as ACK
from mptun.wire.tcpip import TCP_FIN as FIN
from mptun.wire.tcpip import TCP_PSH as PSH
from mptun.wire.tcpip import TCP_SYN as SYN
from tests.unit.reference import ref_checksum, ref_sum

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NEEDS_CSUM, DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP = 0, 1, 4, 3

V4_A, V4_B, V4_WIRE = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]), bytes([198, 18, 7, 7])
V6_A = bytes.fromhex("20010002000000000000000000000001")
V6_B = bytes.fromhex("20010002000000000000000000000002")
V6_WIRE = bytes.fromhex("20010002000000070000000000000007")
MACS = bytes.fromhex("02000000000a02000000000b")

NOP = b"\x01"
TS = b"\x08\x0a" + struct.pack("!II", 0x11223344, 0x55667788)
MSS1460 = b"\x02\x04\x05\xb4"
WS7 = b"\x03\x03\x07"
SACK_PERM = b"\x04\x02"


def sack(*blocks):
    return bytes([5, 2 + 8 * len(blocks)]) + b"".join(struct.pack("!II", a, b) for a, b in blocks)


def dss_full(data_ack=0x0102030405060708, dsn=0x1112131415161718, ssn=1, length=1448, csum=None):
    """DSS with 64-bit DATA_ACK and 64-bit DSN mapping (26 bytes, 28 with a checksum)."""
    body = struct.pack("!QQIH", data_ack, dsn, ssn, length) + (struct.pack("!H", csum) if csum is not None else b"")
    return bytes([30, 4 + len(body), 0x20, 0x0F]) + body


def dss_ack_only(data_ack=0x01020304):
    return bytes([30, 8, 0x20, 0x01]) + struct.pack("!I", data_ack)


# --- independent reference ------------------------------------------------------------------------

def pseudo(version, src, dst, l4_len):
    if version == 4:
        return src + dst + b"\0\x06" + struct.pack("!H", l4_len)
    return src + dst + struct.pack("!I", l4_len) + b"\0\0\0\x06"


def tcp_header(sport, dport, seq, ack, flags, window, options, reserved=0):
    assert len(options) % 4 == 0, "test bug: pad the options"
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (doff << 4) | reserved, flags, window, 0, 0) + options


def pad4(options: bytes) -> bytes:
    return options + NOP * (-len(options) % 4)


def vnet_header(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, length=10):
    h = struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    return h + b"\0\0" if length == 12 else h


def build(version=4, *, src=None, dst=None, sport=40000, dport=443, seq=1000, ack=2000, flags=ACK,
          window=502, options=b"", payload=b"", ip_options=b"", hop_by_hop=False, csum="full",
          vnet_len=0, gso_size=0, vnet_flags=None, hdr_len=None, padding=b""):
    """An IPv4/IPv6 TCP packet; csum "full", "partial" (NEEDS_CSUM) or "bad" (full, off by one)."""
    src = src or (V4_A if version == 4 else V6_A)
    dst = dst or (V4_B if version == 4 else V6_B)
    seg = bytearray(tcp_header(sport, dport, seq, ack, flags, window, pad4(options)) + payload)
    if version == 4:
        ihl = 5 + len(ip_options) // 4
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(seg), 0x1234, 0x4000,
                                    64, 6, 0, src, dst) + ip_options)
        hdr[10:12] = struct.pack("!H", ref_checksum(bytes(hdr)))
    else:
        ext = bytes([6, 0, 1, 4, 0, 0, 0, 0]) if hop_by_hop else b""
        hdr = bytearray(struct.pack("!IHBB16s16s", 0x60000000, len(ext) + len(seg), 0 if hop_by_hop else 6,
                                    64, src, dst) + ext)
    ph = pseudo(version, src, dst, len(seg))
    if csum == "partial":
        c = ref_sum(ph)
    else:
        c = ref_checksum(ph + bytes(seg))
        if csum == "bad":
            c ^= 1
    seg[16:18] = struct.pack("!H", c)
    pkt = bytes(hdr) + bytes(seg) + padding
    if not vnet_len:
        assert csum != "partial", "test bug: NEEDS_CSUM needs a virtio_net_hdr"
        return pkt
    gso_type = GSO_NONE if not gso_size else (GSO_TCPV4 if version == 4 else GSO_TCPV6)
    if vnet_flags is None:
        vnet_flags = NEEDS_CSUM if csum == "partial" else 0
    headers = len(hdr) + 20 + len(pad4(options))
    if hdr_len is None:
        hdr_len = headers if gso_size else 0
    partial = vnet_flags & NEEDS_CSUM
    return vnet_header(vnet_flags, gso_type, hdr_len, gso_size, len(hdr) if partial else 0,
                       16 if partial else 0, vnet_len) + pkt


class Dissected:
    """Raw split of a packet built or rewritten here: virtio_net_hdr, Ethernet, IP, TCP, payload."""

    def __init__(self, pkt: bytes, vnet_len=0, l2_len=0):
        self.vnet = None
        if vnet_len:
            f, g, hl, gs, cs, co = struct.unpack("<BBHHHH", pkt[:10])
            self.vnet = dict(flags=f, gso_type=g, hdr_len=hl, gso_size=gs, csum_start=cs, csum_offset=co)
        self.eth = pkt[vnet_len:vnet_len + l2_len] if l2_len else None
        ip = pkt[vnet_len + l2_len:]
        self.version = ip[0] >> 4
        if self.version == 4:
            self.ip_hlen = (ip[0] & 15) * 4
            self.total = struct.unpack("!H", ip[2:4])[0]
            self.src, self.dst = ip[12:16], ip[16:20]
        else:
            self.total = 40 + struct.unpack("!H", ip[4:6])[0]
            self.src, self.dst = ip[8:24], ip[24:40]
            self.ip_hlen = 48 if ip[6] == 0 else 40
        assert len(ip) == self.total, "trailing bytes after the IP datagram"
        self.ip = ip
        self.seg = ip[self.ip_hlen:self.total]
        self.tcp_hlen = (self.seg[12] >> 4) * 4
        self.options = self.seg[20:self.tcp_hlen]
        self.payload = self.seg[self.tcp_hlen:]
        self.sport, self.dport, self.seq, self.ack = struct.unpack("!HHII", self.seg[:12])
        self.flags = self.seg[13]
        self.check = struct.unpack("!H", self.seg[16:18])[0]

    def option_list(self):
        """[(kind, bytes)] in order, NOPs included, up to EOL."""
        out, i, o = [], 0, self.options
        while i < len(o):
            if o[i] == 0:
                break
            if o[i] == 1:
                out.append((1, b"\x01"))
                i += 1
                continue
            out.append((o[i], o[i:i + o[i + 1]]))
            i += o[i + 1]
        return out

    def kinds(self):
        return [k for k, _ in self.option_list() if k != 1]


def verify(pkt: bytes, vnet_len=0, l2_len=0) -> Dissected:
    """Every checksum and length right, by full recomputation; NEEDS_CSUM completed as the kernel would."""
    d = Dissected(pkt, vnet_len, l2_len)
    if d.version == 4:
        assert ref_sum(d.ip[:d.ip_hlen]) == 0xFFFF, "IPv4 header checksum"
    ph = pseudo(d.version, d.src, d.dst, len(d.seg))
    if d.vnet and d.vnet["flags"] & NEEDS_CSUM:
        assert d.vnet["csum_start"] == l2_len + d.ip_hlen and d.vnet["csum_offset"] == 16
        assert d.check == ref_sum(ph), "NEEDS_CSUM field must hold the folded pseudo-header sum"
        # skb_checksum_help(): sum csum_start..end with the partial sum in place, store ~sum.
        done = ~ref_sum(d.seg) & 0xFFFF
        seg = d.seg[:16] + struct.pack("!H", done) + d.seg[18:]
        assert ref_sum(ph + seg) == 0xFFFF, "completed NEEDS_CSUM checksum"
        whole = d.ip[:d.ip_hlen] + seg
    else:
        assert ref_sum(ph + d.seg) == 0xFFFF, "TCP checksum"
        whole = d.ip
    if d.vnet and d.vnet["gso_type"] & 0x7F:
        assert d.vnet["hdr_len"] == l2_len + d.ip_hlen + d.tcp_hlen
    # A second opinion from scapy's checksum code, over the raw bytes (a scapy rebuild would
    # re-encode the options).
    tcp = whole[d.ip_hlen:]
    zeroed = tcp[:16] + b"\0\0" + tcp[18:]
    if d.version == 4:
        assert scapy_checksum(d.ip[:10] + b"\0\0" + d.ip[12:d.ip_hlen]) == struct.unpack("!H", d.ip[10:12])[0]
        want = in4_chksum(6, IP(src=str(ipaddress.IPv4Address(d.src)), dst=str(ipaddress.IPv4Address(d.dst))), zeroed)
    else:
        want = in6_chksum(6, IPv6(src=str(ipaddress.IPv6Address(d.src)), dst=str(ipaddress.IPv6Address(d.dst))), zeroed)
    assert want == struct.unpack("!H", tcp[16:18])[0]
    return d


@pytest.fixture
def rw(impl_kind):
    return impl.load("rewrite", impl_kind)


VERSIONS = [4, 6]
# (vnet_len, csum): plain IP; virtio_net_hdr with a full checksum; with NEEDS_CSUM; 12-byte header
VARIANTS = [(0, "full"), (10, "full"), (10, "partial"), (12, "partial")]
variant_ids = ["ip", "vnet-full", "vnet-partial", "vnet12-partial"]


def addrs(version):
    return (V4_A, V4_B, V4_WIRE) if version == 4 else (V6_A, V6_B, V6_WIRE)


# --- parse ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_parse_reads_headers(rw, version):
    a, b, _ = addrs(version)
    pkt = build(version, sport=1234, dport=80, seq=7, ack=9, flags=ACK | PSH, options=NOP + NOP + TS,
                payload=b"hello", vnet_len=10, csum="partial")
    status, f = rw.parse(pkt, 10)
    assert status == rw.OK
    assert (f["version"], f["src"], f["dst"], f["sport"], f["dport"], f["seq"], f["ack"]) == (version, a, b, 1234, 80, 7, 9)
    assert f["flags"] == ACK | PSH and f["options"] == NOP + NOP + TS and f["payload_len"] == 5
    assert f["tcp_header_len"] == 32 and f["ip_header_len"] == (20 if version == 4 else 40)
    assert f["vnet"]["flags"] == NEEDS_CSUM and f["vnet"]["csum_start"] == f["ip_header_len"]


def test_status_names(rw):
    assert rw.status_name(rw.OK) == "ok"
    assert rw.status_name(rw.NO_ROOM) == "no room"
    assert rw.status_name(rw.MALFORMED_TRUNCATED) == "malformed:truncated"
    assert rw.STATUS_NAMES[rw.MALFORMED_TCP_OPTIONS] == "malformed:tcp_options"
    assert all(n == "ok" or n in ("no room", "no headroom", "bad request") or n.startswith("malformed:")
               for n in rw.STATUS_NAMES)
    assert set(rw.STATUS_NAMES) <= set(rw.COUNTER_NAMES)


# --- NAT --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vnet_len,csum", VARIANTS, ids=variant_ids)
def test_nat_source_address_and_port(rw, version, vnet_len, csum):
    a, b, wire = addrs(version)
    pkt = build(version, options=NOP + NOP + TS, payload=b"x" * 301, vnet_len=vnet_len, csum=csum)
    status, out = rw.rewrite(pkt, vnet_len, src=wire, sport=61000)
    assert status == rw.OK
    d = verify(out, vnet_len)
    assert (d.src, d.dst, d.sport, d.dport) == (wire, b, 61000, 443)
    assert d.payload == b"x" * 301 and d.options == NOP + NOP + TS
    assert len(out) == len(pkt)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vnet_len,csum", VARIANTS, ids=variant_ids)
def test_nat_destination_address_and_port(rw, version, vnet_len, csum):
    a, b, wire = addrs(version)
    pkt = build(version, payload=b"\xff" * 17, vnet_len=vnet_len, csum=csum)
    status, out = rw.rewrite(pkt, vnet_len, dst=wire, dport=8443)
    assert status == rw.OK
    d = verify(out, vnet_len)
    assert (d.src, d.dst, d.sport, d.dport) == (a, wire, 40000, 8443)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vnet_len,csum", VARIANTS, ids=variant_ids)
def test_nat_both_ways_and_back_restores_the_packet(rw, version, vnet_len, csum):
    a, b, wire = addrs(version)
    pkt = build(version, payload=b"abc", vnet_len=vnet_len, csum=csum)
    status, out = rw.rewrite(pkt, vnet_len, src=wire, dst=a, sport=1, dport=2)
    assert status == rw.OK
    d = verify(out, vnet_len)
    assert (d.src, d.dst, d.sport, d.dport) == (wire, a, 1, 2)
    status, back = rw.rewrite(out, vnet_len, src=a, dst=b, sport=40000, dport=443)
    assert status == rw.OK and back == pkt


def test_nat_port_only_keeps_the_ipv4_header(rw):
    pkt = build(4, payload=b"q")
    status, out = rw.rewrite(pkt, sport=5)
    assert status == rw.OK and out[:20] == pkt[:20]
    assert verify(out).sport == 5


def test_nat_ports_on_needs_csum_leave_the_partial_sum(rw):
    # Ports are not in the pseudo-header; the device sums them with the rest of the segment.
    pkt = build(4, payload=b"z" * 9, vnet_len=10, csum="partial")
    status, out = rw.rewrite(pkt, 10, sport=1, dport=2)
    assert status == rw.OK
    assert out[10 + 20 + 16:10 + 20 + 18] == pkt[10 + 20 + 16:10 + 20 + 18]
    verify(out, 10)


def test_nat_with_data_valid_flag_updates_the_full_checksum(rw):
    pkt = build(4, payload=b"d" * 40, vnet_len=10, vnet_flags=DATA_VALID)
    status, out = rw.rewrite(pkt, 10, dst=V4_WIRE)
    assert status == rw.OK
    assert verify(out, 10).dst == V4_WIRE


def test_nat_carries_a_wrong_checksum_over(rw):
    """Incremental updates never repair (so never hide) a corrupted packet."""
    pkt = build(4, payload=b"e" * 33, csum="bad")
    status, out = rw.rewrite(pkt, src=V4_WIRE, sport=9)
    assert status == rw.OK
    d = Dissected(out)
    assert ref_sum(pseudo(4, d.src, d.dst, len(d.seg)) + d.seg) != 0xFFFF


def test_nat_address_family_mismatch_is_a_bad_request(rw):
    pkt = build(4, payload=b"a")
    status, out = rw.rewrite(pkt, src=V6_WIRE)
    assert status == rw.BAD_REQUEST and out == pkt


def test_nat_accepts_ipaddress_objects(rw):
    pkt = build(6, payload=b"a")
    status, out = rw.rewrite(pkt, src=ipaddress.IPv6Address(V6_WIRE))
    assert status == rw.OK and verify(out).src == V6_WIRE


# --- options: insert ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vnet_len,csum", VARIANTS, ids=variant_ids)
def test_insert_dss_into_a_data_segment(rw, version, vnet_len, csum):
    """NOP NOP TS (12) + DSS with 64-bit DATA_ACK and mapping (26) = 38, padded to 40."""
    payload = bytes(range(256)) * 5 + b"\x01" * 168
    pkt = build(version, options=NOP + NOP + TS, payload=payload, vnet_len=vnet_len, csum=csum, flags=ACK | PSH)
    dss = dss_full()
    batch = rw.PacketBatch(1, headroom=64, vnet_hdr_len=vnet_len)
    batch.append(pkt)
    batch.set_action(0, options=dss)
    assert batch.run() == 1
    out = batch.packet(0)
    d = verify(out, vnet_len)
    assert d.options == NOP + NOP + TS + dss + NOP + NOP
    assert d.tcp_hlen == 60 and d.payload == payload
    assert len(out) == len(pkt) + 28
    # The headers moved into the headroom; the payload stayed where it was.
    assert batch.start(0) == 64 - 28
    c = batch.counters()
    assert c["ok"] == 1 and c["options_rewritten"] == 1 and c["packets"] == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_insert_into_a_segment_without_options(rw, version):
    pkt = build(version, payload=b"p" * 100)
    status, out = rw.rewrite(pkt, options=dss_ack_only())
    assert status == rw.OK
    d = verify(out)
    assert d.options == dss_ack_only() and d.tcp_hlen == 28


def test_insert_odd_length_block_is_nop_padded(rw):
    pkt = build(4, options=NOP + NOP + TS, payload=b"p")
    block = bytes([30, 3, 0x50])  # an MP_PRIO, 3 bytes
    status, out = rw.rewrite(pkt, options=block)
    assert status == rw.OK
    assert verify(out).options == NOP + NOP + TS + block + NOP


@pytest.mark.parametrize("version", VERSIONS)
def test_pure_ack_with_sack_loses_the_sack_beside_a_full_dss(rw, version):
    """TS 12 + DSS 26 leave 2 bytes: even one SACK block (10) cannot stay."""
    opts = NOP + NOP + TS + NOP + NOP + sack((1, 2), (3, 4), (5, 6))
    pkt = build(version, options=opts)
    batch = rw.PacketBatch(1, max_packet=200)
    batch.append(pkt)
    batch.set_action(0, options=dss_full())
    batch.run()
    d = verify(batch.packet(0))
    assert d.options == NOP + NOP + TS + dss_full() + NOP + NOP
    c = batch.counters()
    assert c["sack_dropped"] == 1 and c["sack_trimmed"] == 0 and c["nop_dropped"] == 0


def test_sack_is_cut_to_its_first_block_when_that_fits(rw):
    opts = NOP + NOP + TS + NOP + NOP + sack((10, 20), (30, 40), (50, 60))
    pkt = build(4, options=opts)
    batch = rw.PacketBatch(1, max_packet=200)
    batch.append(pkt)
    batch.set_action(0, options=dss_ack_only())  # 12 + 12 + 8 = 32
    batch.run()
    d = verify(batch.packet(0))
    assert d.options == NOP + NOP + TS + NOP + NOP + sack((10, 20)) + dss_ack_only()
    assert batch.counters()["sack_trimmed"] == 1


def test_nops_go_before_the_last_sack_block(rw):
    """12 + 12 + 18 = 42 does not fit; without the NOPs 10 + 10 + 18 = 38 does, keeping the SACK."""
    opts = NOP + NOP + TS + NOP + NOP + sack((10, 20))
    block = bytes([30, 18, 0x20, 0x05]) + bytes(14)  # DSS: 32-bit DATA_ACK + 32-bit mapping
    pkt = build(4, options=opts)
    batch = rw.PacketBatch(1, max_packet=200)
    batch.append(pkt)
    batch.set_action(0, options=block)
    batch.run()
    d = verify(batch.packet(0))
    assert d.options == TS + sack((10, 20)) + block + NOP + NOP
    c = batch.counters()
    assert c["nop_dropped"] == 1 and c["sack_dropped"] == 0


def test_sack_dropped_but_nops_kept_when_that_is_enough(rw):
    opts = NOP + NOP + TS + NOP + NOP + sack((1, 2), (3, 4))
    block = bytes([30, 26]) + bytes(24)
    pkt = build(4, options=opts)
    status, out = rw.rewrite(pkt, options=block)
    assert status == rw.OK
    assert verify(out).options == NOP + NOP + TS + block + NOP + NOP


def test_no_room_leaves_the_packet_unchanged(rw):
    """MSS, window scale, SACK-permitted and timestamps are never dropped: a SYN has no room for 28."""
    opts = MSS1460 + SACK_PERM + TS + NOP + WS7
    pkt = build(4, flags=SYN, options=opts)
    batch = rw.PacketBatch(1, max_packet=200)
    batch.append(pkt)
    batch.set_action(0, options=dss_full(csum=0))
    assert batch.run() == 0
    assert batch.status(0) == rw.NO_ROOM
    assert batch.packet(0) == pkt and batch.start(0) == batch.headroom
    assert batch.counters()["no room"] == 1


def test_mptcp_options_are_never_trimmed(rw):
    opts = NOP + NOP + TS + dss_ack_only()
    pkt = build(4, options=opts)
    status, out = rw.rewrite(pkt, options=dss_full())  # 12 + 8 + 26 = 46
    assert status == rw.NO_ROOM and out == pkt


def test_unknown_options_are_kept(rw):
    exp = bytes([254, 6, 0xAB, 0xCD, 1, 2])
    pkt = build(6, options=exp + NOP + NOP, payload=b"u")
    status, out = rw.rewrite(pkt, options=dss_ack_only())
    assert status == rw.OK
    assert verify(out).options == exp + dss_ack_only() + NOP + NOP


def test_insert_needs_headroom(rw):
    pkt = build(4, payload=b"h")
    batch = rw.PacketBatch(1, max_packet=100, headroom=8)
    batch.append(pkt)
    batch.set_action(0, options=dss_full())
    batch.run()
    assert batch.status(0) == rw.NO_HEADROOM and batch.packet(0) == pkt


def test_insert_keeps_room_for_the_ethernet_header(rw):
    pkt = build(4, payload=b"h")
    batch = rw.PacketBatch(1, max_packet=100, headroom=40)
    batch.append(pkt)
    batch.set_action(0, options=dss_full(), eth=MACS)  # 28 + 14 > 40
    batch.run()
    assert batch.status(0) == rw.NO_HEADROOM and batch.packet(0) == pkt
    batch.set_action(0, options=dss_full())
    batch.run()
    assert batch.status(0) == rw.OK


def test_insert_past_the_ip_length_limit_is_no_room(rw):
    pkt = build(4, payload=b"\0" * (65535 - 40))
    status, out = rw.rewrite(pkt, options=dss_ack_only())
    assert status == rw.NO_ROOM and out == pkt


def test_insert_over_40_bytes_is_refused(rw):
    with pytest.raises(ValueError):
        rw.rewrite(build(4), options=bytes(41))


def test_insert_with_ipv4_options(rw):
    ip_options = b"\x94\x04\x00\x00"  # router alert
    pkt = build(4, ip_options=ip_options, options=NOP + NOP + TS, payload=b"o" * 7)
    status, out = rw.rewrite(pkt, options=dss_full(), src=V4_WIRE)
    assert status == rw.OK
    d = verify(out)
    assert d.ip_hlen == 24 and d.ip[20:24] == ip_options and d.src == V4_WIRE


def test_insert_with_an_ipv6_extension_header(rw):
    pkt = build(6, hop_by_hop=True, options=NOP + NOP + TS, payload=b"o" * 7, vnet_len=10, csum="partial")
    status, out = rw.rewrite(pkt, 10, options=dss_full())
    assert status == rw.OK
    d = verify(out, 10)
    assert d.ip_hlen == 48 and d.options == NOP + NOP + TS + dss_full() + NOP + NOP


# An insert block must be whole options end to end, as the MSS clamp and the receiver walk them:
# a block the walk rejects would otherwise be copied in and make a later step fail on a packet
# that has already changed.
BAD_BLOCKS = {
    "length past the end": b"\x1e\x09",
    "kind byte without a length": dss_ack_only() + b"\x1e",
    "length 1": b"\x1e\x01\x00\x00",
    "length 0": b"\x1e\x00",
    "EOL": b"\x00",
    "EOL after an option": dss_ack_only() + b"\x00\x00\x00\x00",
    "NOP then EOL": NOP + b"\x00",
}

# rw_apply with a raw RwAction, the way a C caller of rewrite.pxd drives it (no set_action checks).
PROBE = """
# cython: language_level=3
from libc.string cimport memcpy, memset
from rewrite cimport RW_OP_CLAMP_MSS, RW_OP_INSERT_OPTIONS, RwAction, RwPacket, rw_apply

def apply_raw(bytes pkt, bytes insert, int mss):
    cdef unsigned char buf[1024]
    cdef RwPacket p
    cdef RwAction a
    assert len(pkt) <= 512 and len(insert) <= 40
    memset(buf, 0, sizeof(buf))
    memset(&p, 0, sizeof(p))
    memset(&a, 0, sizeof(a))
    memcpy(buf + 256, <const char*>pkt, len(pkt))
    p.data, p.length, p.headroom = buf + 256, len(pkt), 256
    a.ops = RW_OP_INSERT_OPTIONS | RW_OP_CLAMP_MSS
    a.options_len, a.mss = len(insert), mss
    memcpy(a.options, <const char*>insert, len(insert))
    status = rw_apply(&p, &a, NULL)
    return status, bytes(p.data[:p.length])
"""
_BUILD_PROBE = (
    "from Cython.Build import cythonize\nfrom setuptools import Extension, setup\n"
    "setup(ext_modules=cythonize([Extension('rwprobe', ['rwprobe.pyx'], include_dirs=[{inc!r}])],"
    " include_path=[{inc!r}], quiet=True), script_args=['build_ext', '--inplace'])\n")


@pytest.fixture(scope="module")
def raw_apply(tmp_path_factory):
    """{impl kind: apply_raw(pkt, insert, mss) -> (status, packet)}."""
    d = tmp_path_factory.mktemp("rwprobe")
    (d / "rwprobe.pyx").write_text(PROBE)
    inc = os.path.join(REPO, "src", "fastpath")
    proc = subprocess.run([sys.executable, "-c", _BUILD_PROBE.format(inc=inc)], cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    so = [f for f in os.listdir(d) if f.startswith("rwprobe.") and f.endswith(tuple(EXTENSION_SUFFIXES))]
    spec = importlib.util.spec_from_file_location("rwprobe", d / so[0])
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)

    def pure(pkt, insert, mss):
        a = ops.RwAction()
        a.ops, a.options, a.mss = ops.RW_OP_INSERT_OPTIONS | ops.RW_OP_CLAMP_MSS, insert, mss
        buf = bytearray(256) + bytearray(pkt)
        p = ops.RwPacket(buf, 256, len(pkt), 256, 0)
        status = ops.rw_apply(p, a, [0] * len(ops.COUNTER_NAMES))
        return status, bytes(buf[p.data:p.data + p.length])

    return {"fast": probe.apply_raw, "pure": pure}


@pytest.mark.parametrize("block", BAD_BLOCKS.values(), ids=BAD_BLOCKS.keys())
def test_insert_that_is_not_whole_options_is_a_bad_request_and_changes_nothing(rw, impl_kind, raw_apply, block):
    """The contract of rewrite.pxd: unchanged unless ok. Here the MSS clamp after the insert would fail."""
    syn = build(4, flags=SYN, options=MSS1460)
    assert len(syn) == 44
    status, out = raw_apply[impl_kind](syn, block, 1000)
    assert rw.status_name(status) == "bad request"
    assert out == syn


def test_whole_options_in_a_raw_action_still_go_in(rw, impl_kind, raw_apply):
    syn = build(4, flags=SYN, options=MSS1460)
    status, out = raw_apply[impl_kind](syn, NOP + bytes([30, 3, 0x50]), 1000)
    assert status == rw.OK
    d = verify(out)
    assert d.options == b"\x02\x04\x03\xe8" + NOP + bytes([30, 3, 0x50])


@pytest.mark.parametrize("block", BAD_BLOCKS.values(), ids=BAD_BLOCKS.keys())
def test_set_action_refuses_an_insert_that_is_not_whole_options(rw, block):
    syn = build(4, flags=SYN, options=MSS1460)
    batch = rw.PacketBatch(1, max_packet=200)
    batch.append(syn)
    with pytest.raises(ValueError, match="whole TCP options"):
        batch.set_action(0, options=block, clamp_mss=1000)
    with pytest.raises(ValueError, match="whole TCP options"):
        rw.rewrite(syn, options=block, clamp_mss=1000)
    batch.run()
    assert batch.status(0) == rw.OK and batch.packet(0) == syn


def test_nops_alone_and_around_options_are_whole_options(rw):
    pkt = build(4, options=NOP + NOP + TS, payload=b"n")
    for block in (NOP, NOP + NOP + dss_ack_only(), dss_ack_only() + NOP):
        status, out = rw.rewrite(pkt, options=block)
        assert status == rw.OK, block
        assert verify(out).options == pad4(NOP + NOP + TS + block)


# --- options: strip -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vnet_len,csum", VARIANTS, ids=variant_ids)
def test_strip_mptcp_options(rw, version, vnet_len, csum):
    a, b, wire = addrs(version)
    opts = NOP + NOP + TS + dss_full() + NOP + NOP
    pkt = build(version, options=opts, payload=b"s" * 1000, vnet_len=vnet_len, csum=csum)
    batch = rw.PacketBatch(1, headroom=32, vnet_hdr_len=vnet_len)
    batch.append(pkt)
    batch.set_action(0, strip_mptcp=True, dst=a)
    assert batch.run() == 1
    out = batch.packet(0)
    d = verify(out, vnet_len)
    assert d.options == NOP + NOP + TS and d.dst == a and d.payload == b"s" * 1000
    # The headers moved toward the payload: more headroom afterwards.
    assert batch.start(0) == 32 + 28 and len(out) == len(pkt) - 28
    assert batch.counters()["mptcp_stripped"] == 1


def test_strip_several_mptcp_options_keeps_the_rest_in_order(rw):
    add_addr_echo = bytes([30, 8, 0x31, 0x02, 198, 18, 0, 9])
    opts = MSS1460 + dss_ack_only() + WS7 + NOP + add_addr_echo + NOP + NOP + TS
    pkt = build(4, flags=SYN | ACK, options=opts)
    batch = rw.PacketBatch(1, max_packet=200)
    batch.append(pkt)
    batch.set_action(0, strip_mptcp=True)
    batch.run()
    d = verify(batch.packet(0))
    assert d.options == MSS1460 + WS7 + NOP + NOP + NOP + TS
    assert batch.counters()["mptcp_stripped"] == 2


def test_strip_without_mptcp_options_changes_nothing(rw):
    pkt = build(6, options=NOP + NOP + TS + NOP + NOP + sack((1, 2)), payload=b"n")
    status, out = rw.rewrite(pkt, strip_mptcp=True)
    assert status == rw.OK and out == pkt


def test_strip_and_insert_replaces_the_mptcp_option(rw):
    opts = NOP + NOP + TS + dss_ack_only(5)
    pkt = build(4, options=opts, payload=b"r" * 10)
    status, out = rw.rewrite(pkt, strip_mptcp=True, options=dss_full())
    assert status == rw.OK
    assert verify(out).options == NOP + NOP + TS + dss_full() + NOP + NOP


def test_options_after_eol_are_padding(rw):
    opts = TS + b"\x00" + bytes([30, 3, 0])  # EOL: what follows is padding, not an option
    pkt = build(4, options=opts)
    status, out = rw.rewrite(pkt, options=dss_ack_only())
    assert status == rw.OK
    assert verify(out).options == TS + dss_ack_only() + NOP + NOP


# --- MSS clamp -------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vnet_len,csum", VARIANTS, ids=variant_ids)
@pytest.mark.parametrize("flags", [SYN, SYN | ACK], ids=["syn", "synack"])
def test_clamp_mss_on_syn(rw, version, vnet_len, csum, flags):
    opts = MSS1460 + SACK_PERM + TS + NOP + WS7
    pkt = build(version, flags=flags, options=opts, vnet_len=vnet_len, csum=csum)
    batch = rw.PacketBatch(1, max_packet=200, vnet_hdr_len=vnet_len)
    batch.append(pkt)
    batch.set_action(0, clamp_mss=1400)
    batch.run()
    d = verify(batch.packet(0), vnet_len)
    assert d.option_list()[0] == (2, b"\x02\x04" + struct.pack("!H", 1400))
    assert d.options[4:] == opts[4:]
    assert batch.counters()["mss_clamped"] == 1


def test_clamp_mss_leaves_a_lower_mss(rw):
    pkt = build(4, flags=SYN, options=b"\x02\x04\x02\x00")
    status, out = rw.rewrite(pkt, clamp_mss=1400)
    assert status == rw.OK and out == pkt


def test_clamp_mss_ignores_non_syn(rw):
    pkt = build(4, flags=ACK, options=MSS1460)
    status, out = rw.rewrite(pkt, clamp_mss=1000)
    assert status == rw.OK and out == pkt


def test_clamp_mss_at_an_odd_offset(rw):
    opts = NOP + MSS1460 + NOP + NOP + NOP
    pkt = build(6, flags=SYN, options=opts)
    status, out = rw.rewrite(pkt, clamp_mss=1220)
    assert status == rw.OK
    assert verify(out).options == NOP + b"\x02\x04" + struct.pack("!H", 1220) + NOP * 3


def test_clamp_mss_malformed_options(rw):
    pkt = bytearray(build(4, flags=SYN, options=MSS1460 + NOP + NOP + NOP + NOP))
    pkt[20 + 20 + 5] = 9  # a "length" of 9 at offset 4 runs past the header
    pkt[20 + 20 + 4] = 7
    status, out = rw.rewrite(bytes(pkt), clamp_mss=1000)
    assert status == rw.MALFORMED_TCP_OPTIONS and out == bytes(pkt)


# --- GSO super-packets ----------------------------------------------------------------------------

def kernel_segment(d: Dissected, mss: int):
    """What the kernel does to a GSO packet: one segment per mss of payload, each with the whole
    header (options included), its own length, sequence number and full checksum."""
    segs = []
    for i, off in enumerate(range(0, len(d.payload), mss)):
        chunk = d.payload[off:off + mss]
        last = off + mss >= len(d.payload)
        tcp = bytearray(d.seg[:d.tcp_hlen])
        tcp[4:8] = struct.pack("!I", (d.seq + off) & 0xFFFFFFFF)
        if not last:
            tcp[13] &= ~(FIN | PSH)
        seg = bytes(tcp) + chunk
        # tcp_gso_segment(): the partial field + the length difference, then completed.
        partial = ref_sum(pseudo(d.version, d.src, d.dst, len(seg)))
        body = seg[:16] + struct.pack("!H", partial) + seg[18:]
        seg = seg[:16] + struct.pack("!H", ~ref_sum(body) & 0xFFFF) + seg[18:]
        ip = bytearray(d.ip[:d.ip_hlen])
        if d.version == 4:
            ip[2:4] = struct.pack("!H", len(ip) + len(seg))
            ip[10:12] = b"\0\0"
            ip[10:12] = struct.pack("!H", ref_checksum(bytes(ip)))
        else:
            ip[4:6] = struct.pack("!H", len(ip) - 40 + len(seg))
        segs.append(bytes(ip) + seg)
    return segs


@pytest.mark.parametrize("version", VERSIONS)
def test_gso_packet_gets_the_options_once_and_every_segment_carries_them(rw, version):
    mss = 1448
    payload = bytes(i % 251 for i in range(4 * mss + 100))
    pkt = build(version, options=NOP + NOP + TS, payload=payload, vnet_len=10, csum="partial",
                gso_size=mss, flags=ACK | PSH)
    batch = rw.PacketBatch(1, vnet_hdr_len=10)
    batch.append(pkt)
    batch.set_action(0, options=dss_full(), src=addrs(version)[2], sport=50001)
    assert batch.run() == 1
    out = batch.packet(0)
    d = verify(out, 10)
    assert d.vnet["gso_size"] == mss and d.vnet["gso_type"] == (GSO_TCPV4 if version == 4 else GSO_TCPV6)
    assert d.vnet["hdr_len"] == d.ip_hlen + 60 and d.vnet["csum_start"] == d.ip_hlen
    assert d.payload == payload
    segs = kernel_segment(d, mss)
    assert len(segs) == 5
    for s in segs:
        sd = verify(s)
        assert sd.options == NOP + NOP + TS + dss_full() + NOP + NOP and sd.sport == 50001


def test_gso_ecn_bit_is_accepted(rw):
    pkt = bytearray(build(4, payload=b"e" * 3000, vnet_len=10, csum="partial", gso_size=1448))
    pkt[1] |= 0x80
    status, out = rw.rewrite(bytes(pkt), 10, options=dss_ack_only())
    assert status == rw.OK and out[1] == GSO_TCPV4 | 0x80
    verify(out, 10)


def test_non_gso_hdr_len_hint_is_kept_consistent(rw):
    pkt = build(4, payload=b"k" * 50, vnet_len=10, csum="partial", hdr_len=20 + 20 + 50)
    status, out = rw.rewrite(pkt, 10, options=dss_ack_only())
    assert status == rw.OK
    assert Dissected(out, 10).vnet["hdr_len"] == 20 + 28


# --- Ethernet header --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("vnet_len,csum", VARIANTS, ids=variant_ids)
def test_push_eth(rw, version, vnet_len, csum):
    pkt = build(version, payload=b"m" * 3000 if vnet_len else b"m", vnet_len=vnet_len, csum=csum,
                gso_size=1448 if vnet_len else 0)
    status, out = rw.rewrite(pkt, vnet_len, eth=MACS)
    assert status == rw.OK
    d = verify(out, vnet_len, l2_len=14)
    assert d.eth == MACS + (b"\x08\x00" if version == 4 else b"\x86\xdd")
    if vnet_len:
        before = Dissected(pkt, vnet_len).vnet
        assert d.vnet["hdr_len"] == before["hdr_len"] + 14
        if csum == "partial":
            assert d.vnet["csum_start"] == before["csum_start"] + 14


def test_outbound_pipeline_in_one_action(rw):
    """TUN -> wire: DSS in, MSS clamp (a no-op on data), NAT to the subflow's address, Ethernet."""
    pkt = build(4, options=NOP + NOP + TS, payload=b"w" * 1448, vnet_len=10, csum="partial", flags=ACK | PSH)
    batch = rw.PacketBatch(4, vnet_hdr_len=10)
    batch.append(pkt)
    batch.set_action(0, options=dss_full(), clamp_mss=1400, src=V4_WIRE, sport=61001, eth=MACS)
    assert batch.run() == 1
    d = verify(batch.packet(0), 10, l2_len=14)
    assert (d.src, d.sport) == (V4_WIRE, 61001) and d.kinds() == [8, 30]
    assert batch.start(0) == batch.headroom - 28 - 14


def test_inbound_pipeline_in_one_action(rw):
    """wire -> TUN: MPTCP options out, NAT back to the subflow socket's address and port."""
    pkt = build(6, src=V6_B, dst=V6_WIRE, dport=61001, options=NOP + NOP + TS + dss_full(), payload=b"i" * 500,
                vnet_len=10, vnet_flags=DATA_VALID)
    status, out = rw.rewrite(pkt, 10, strip_mptcp=True, dst=V6_A, dport=40000)
    assert status == rw.OK
    d = verify(out, 10)
    assert (d.dst, d.dport, d.kinds()) == (V6_A, 40000, [8])


def test_eth_twice_is_a_bad_request(rw):
    batch = rw.PacketBatch(1, max_packet=100)
    batch.append(build(4))
    batch.set_action(0, eth=MACS)
    batch.run()
    assert batch.status(0) == rw.OK
    # The slot now starts with an Ethernet header: it no longer parses as IP.
    batch.run()
    assert batch.status(0) == rw.MALFORMED_IP_VERSION


def test_push_eth_needs_headroom(rw):
    batch = rw.PacketBatch(1, max_packet=100, headroom=10)
    batch.append(build(4))
    batch.set_action(0, eth=MACS)
    batch.run()
    assert batch.status(0) == rw.NO_HEADROOM and batch.packet(0) == build(4)


# --- padding, malformed input -----------------------------------------------------------------------

def test_link_layer_padding_is_trimmed(rw):
    pkt = build(4)  # a 40-byte ACK padded to a 60-byte Ethernet minimum (minus the 14-byte header)
    batch = rw.PacketBatch(1, max_packet=100)
    batch.append(pkt + b"\0" * 6)
    batch.run()
    assert batch.status(0) == rw.OK and batch.packet(0) == pkt
    assert batch.counters()["padding_trimmed"] == 1


MALFORMED = {
    "truncated ip": (lambda p: p[:15], "malformed:truncated"),
    "truncated tcp": (lambda p: p[:30], "malformed:truncated"),
    "short of total length": (lambda p: p[:-1], "malformed:truncated"),
    "ip version 5": (lambda p: b"\x55" + p[1:], "malformed:ip_version"),
    "ihl 4": (lambda p: b"\x44" + p[1:], "malformed:ipv4_header_len"),
    "total length below header": (lambda p: p[:2] + b"\x00\x10" + p[4:], "malformed:ip_total_len"),
    "udp": (lambda p: p[:9] + b"\x11" + p[10:], "malformed:not_tcp"),
    "fragment": (lambda p: p[:6] + b"\x20\x00" + p[8:], "malformed:fragment"),
    "data offset 4": (lambda p: p[:32] + b"\x40" + p[33:], "malformed:tcp_header_len"),
    "data offset past the end": (lambda p: p[:32] + b"\xf0" + p[33:], "malformed:truncated"),
    "option length 0": (lambda p: p[:40] + b"\x08\x00" + p[42:], "malformed:tcp_options"),
    "option length past the header": (lambda p: p[:40] + b"\x08\x0e" + p[42:], "malformed:tcp_options"),
    "empty": (lambda p: b"", "malformed:truncated"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_packets_are_reported_and_left_alone(rw, case):
    mutate, reason = MALFORMED[case]
    bad = mutate(build(4, options=NOP + NOP + TS, payload=b"x" * 20))
    batch = rw.PacketBatch(1, max_packet=200)
    batch.append(bad)
    batch.set_action(0, options=dss_full(), strip_mptcp=True, src=V4_WIRE, clamp_mss=1000)
    assert batch.run() == 0
    assert rw.status_name(batch.status(0)) == reason
    assert batch.packet(0) == bad
    assert batch.counters()[reason] == 1


def test_ipv6_routing_header_is_refused(rw):
    # The TCP pseudo-header would hold the routing header's final destination (RFC 8200 8.1).
    plain = build(6, payload=b"r")
    routing = bytes([6, 2, 0, 0, 0, 0, 0, 0]) + V6_WIRE
    pkt = plain[:4] + struct.pack("!H", len(plain) - 40 + 24) + b"\x2b" + plain[7:40] + routing + plain[40:]
    status, out = rw.rewrite(pkt, src=V6_WIRE)
    assert status == rw.MALFORMED_IPV6_EXTENSION_HEADERS and out == pkt
    assert rw.parse(pkt)[0] == rw.MALFORMED_IPV6_EXTENSION_HEADERS


def test_malformed_ipv6(rw):
    pkt = build(6, payload=b"6")
    assert rw.rewrite(pkt[:39], src=V6_WIRE)[0] == rw.MALFORMED_TRUNCATED
    assert rw.rewrite(pkt[:6] + b"\x11" + pkt[7:], src=V6_WIRE)[0] == rw.MALFORMED_NOT_TCP
    assert rw.rewrite(pkt[:6] + b"\x2c" + pkt[7:], src=V6_WIRE)[0] == rw.MALFORMED_FRAGMENT


VNET_MALFORMED = {
    "gso udp": (lambda p: p[:1] + bytes([GSO_UDP]) + p[2:], 4),
    "gso tcpv6 on ipv4": (lambda p: p[:1] + bytes([GSO_TCPV6]) + p[2:], 4),
    "gso tcpv4 on ipv6": (lambda p: p[:1] + bytes([GSO_TCPV4]) + p[2:], 6),
    "csum_start not at tcp": (lambda p: p[:6] + b"\x14\x01" + p[8:], 4),
    "csum_offset not 16": (lambda p: p[:8] + b"\x06\x00" + p[10:], 6),
    "shorter than the vnet header": (lambda p: p[:7], 4),
}


@pytest.mark.parametrize("case", sorted(VNET_MALFORMED))
def test_malformed_virtio_header(rw, case):
    mutate, version = VNET_MALFORMED[case]
    bad = mutate(build(version, payload=b"v" * 3000, vnet_len=10, csum="partial", gso_size=1448))
    status, out = rw.rewrite(bad, 10, options=dss_ack_only())
    want = rw.MALFORMED_TRUNCATED if case.startswith("shorter") else rw.MALFORMED_VNET
    assert status == want and out == bad


# --- batch API ----------------------------------------------------------------------------------------

def test_batch_applies_a_different_action_per_slot(rw):
    batch = rw.PacketBatch(8, max_packet=2000, headroom=64)
    pkts = [build(4, seq=i, payload=b"b" * (10 * i), options=NOP + NOP + TS) for i in range(5)]
    pkts.append(b"\x45garbage")
    pkts.append(build(6, seq=99, payload=b"6"))
    for p in pkts:
        batch.append(p)
    assert batch.count == 7
    batch.set_action(0, src=V4_WIRE)
    batch.set_action(1, options=dss_full())
    batch.set_action(2, options=dss_full() + dss_ack_only())  # 12 + 34 > 40
    batch.set_action(3, sport=7)
    # slot 4: no action, just validated
    batch.set_action(5, src=V4_WIRE)
    batch.set_action(6, src=V4_WIRE)  # wrong family
    assert batch.run() == 4
    assert list(batch.statuses()) == [rw.OK, rw.OK, rw.NO_ROOM, rw.OK, rw.OK, rw.MALFORMED_TRUNCATED,
                                      rw.BAD_REQUEST]
    assert verify(batch.packet(0)).src == V4_WIRE
    assert verify(batch.packet(1)).kinds() == [8, 30]
    assert batch.packet(2) == pkts[2]
    assert verify(batch.packet(3)).sport == 7
    assert batch.packet(4) == pkts[4]
    c = batch.counters()
    assert c["packets"] == 7 and c["ok"] == 4 and c["no room"] == 1 and c["bad request"] == 1
    assert c["malformed:truncated"] == 1 and c["nat"] == 2
    batch.reset_counters()
    assert not any(batch.counters().values())


def test_batch_run_covers_only_n_slots(rw):
    batch = rw.PacketBatch(3, max_packet=100)
    for i in range(3):
        batch.append(build(4, seq=i))
    batch.set_action_all(sport=1)
    assert batch.run(2) == 2
    assert Dissected(batch.packet(1)).sport == 1 and Dissected(batch.packet(2)).sport == 40000
    assert batch.counters()["packets"] == 2


def test_batch_receive_buffer_round_trip(rw):
    batch = rw.PacketBatch(2, max_packet=1500, headroom=32, vnet_hdr_len=10)
    pkt = build(4, payload=b"r" * 100, vnet_len=10, csum="partial")
    buf = batch.recv_buffer(1)
    assert len(buf) == batch.slot_size - 32 and not buf.readonly
    buf[:len(pkt)] = pkt
    batch.set_received(1, len(pkt))
    batch.count = 2
    batch.set_action(1, options=dss_ack_only())
    batch.run()
    assert batch.status(0) == rw.MALFORMED_TRUNCATED  # never filled
    view = batch.view(1)
    assert bytes(view) == batch.packet(1) and len(view) == batch.length(1) == len(pkt) + 8
    verify(bytes(view), 10)


def test_batch_views_keep_the_batch_alive(rw):
    batch = rw.PacketBatch(1, max_packet=100)
    batch.append(build(4))
    view = batch.view(0)
    del batch
    assert bytes(view) == build(4)


def test_batch_geometry_and_limits(rw):
    batch = rw.PacketBatch(2, max_packet=1500, headroom=100, vnet_hdr_len=12)
    assert (batch.capacity, batch.max_packet, batch.headroom, batch.vnet_hdr_len) == (2, 1500, 100, 12)
    assert batch.slot_size % 64 == 0 and batch.slot_size >= 100 + 12 + 1500
    with pytest.raises(ValueError):
        batch.load(0, bytes(12 + 1501))
    with pytest.raises(IndexError):
        batch.load(2, b"")
    batch.append(b"")
    batch.append(b"")
    with pytest.raises(IndexError):
        batch.append(b"")
    batch.clear()
    assert batch.count == 0
    for bad in [dict(capacity=0), dict(capacity=1, max_packet=65536), dict(capacity=1, vnet_hdr_len=8),
                dict(capacity=1, headroom=-1)]:
        with pytest.raises(ValueError):
            rw.PacketBatch(**bad)
    with pytest.raises(ValueError):
        batch.set_action(0, eth=b"\0" * 14)
    with pytest.raises(ValueError):
        batch.set_action(0, src=V4_WIRE, dst=V6_WIRE)
    with pytest.raises(OverflowError):
        batch.set_action(0, sport=65536)


# --- twins agree --------------------------------------------------------------------------------------

def test_fast_and_pure_agree_on_the_named_cases():
    fast, pure = impl.load("rewrite", "fast"), impl.load("rewrite", "pure")
    cases = [
        (build(4, options=NOP + NOP + TS + NOP + NOP + sack((1, 2), (3, 4))), 0, dict(options=dss_full())),
        (build(6, options=NOP + NOP + TS + dss_full(), vnet_len=10, csum="partial"), 10,
         dict(strip_mptcp=True, dst=V6_A)),
        (build(4, flags=SYN, options=MSS1460 + SACK_PERM + TS + NOP + WS7), 0, dict(clamp_mss=1300, eth=MACS)),
        (build(4, payload=b"z" * 3000, vnet_len=12, csum="partial", gso_size=1448), 12,
         dict(options=dss_full(), src=V4_WIRE, eth=MACS)),
        (b"\x45\x00\x00", 0, dict(src=V4_WIRE)),
    ]
    for pkt, vnet_len, action in cases:
        assert fast.rewrite(pkt, vnet_len, **action) == pure.rewrite(pkt, vnet_len, **action)
        assert fast.parse(pkt, vnet_len) == pure.parse(pkt, vnet_len)
    assert fast.STATUS_NAMES == pure.STATUS_NAMES and fast.COUNTER_NAMES == pure.COUNTER_NAMES
