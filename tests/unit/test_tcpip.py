"""mptun.wire.tcpip and the packet twins: IPv4/IPv6/TCP headers and plain TCP options,
cross-checked against scapy; parse_packet fast == pure, one named test per reason."""

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from mptun import impl
from mptun.wire import mptcp as w
from mptun.wire.tcpip import (
    TCP_ACK,
    TCP_PSH,
    TCP_SYN,
    Ipv4Header,
    Ipv6Header,
    MalformedPacket,
    Mss,
    Nop,
    PacketReason,
    Sack,
    SackPermitted,
    TcpHeader,
    Timestamps,
    UnknownOption,
    WindowScale,
    build_options,
    build_packet,
    internet_checksum,
    tcp_checksum_ok,
)

SETTINGS = settings(max_examples=300, deadline=None)
FAST, PURE = impl.load("packet", "fast"), impl.load("packet", "pure")
A4, B4 = IPv4Address("198.18.0.1"), IPv4Address("198.19.255.2")
A6, B6 = IPv6Address("2001:2::1"), IPv6Address("2001:2:0:ffff::2")
SCAPY_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123456, 654321)), ("NOP", None),
                 ("WScale", 7)]


@pytest.fixture
def pkt(impl_kind):
    return impl.load("packet", impl_kind)


def scapy_v4(payload=b"hello", options=SCAPY_OPTIONS, flags="PA"):
    return bytes(IP(src=str(A4), dst=str(B4), id=7, ttl=33) /
                 TCP(sport=40000, dport=443, seq=0xFFFFFFF0, ack=77, flags=flags, window=1000,
                     options=options) / payload)


def scapy_v6(payload=b"hello", options=SCAPY_OPTIONS, ext=None):
    ip = IPv6(src=str(A6), dst=str(B6), hlim=9)
    if ext is not None:
        ip = ip / ext
    return bytes(ip / TCP(sport=40000, dport=443, seq=1, ack=2, flags="A", options=options) / payload)


# ---- checksums

def test_internet_checksum_rfc1071_example():
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is 220d
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00")


# ---- headers against scapy

def test_ipv4_and_tcp_headers_parse_and_emit_what_scapy_built():
    raw = scapy_v4()
    ip = Ipv4Header.parse(raw)
    assert (ip.src, ip.dst, ip.ttl, ip.identification, ip.protocol) == (A4, B4, 33, 7, 6)
    assert ip.emit() == raw[:20]
    assert Ipv4Header(src=ip.src, dst=ip.dst, payload_len=ip.payload_len, ttl=33, identification=7,
                      flags=ip.flags).emit() == raw[:20], "computed header checksum = scapy's"
    tcp = TcpHeader.parse(raw[20:])
    assert (tcp.src_port, tcp.dst_port, tcp.seq, tcp.ack, tcp.flags, tcp.window) == (
        40000, 443, 0xFFFFFFF0, 77, TCP_PSH | TCP_ACK, 1000)
    assert tcp.emit(b"hello") == raw[20:]
    assert tcp.emit(b"hello", A4, B4) == raw[20:], "computed TCP checksum = scapy's"
    assert tcp_checksum_ok(A4, B4, raw[20:])


def test_ipv6_and_tcp_headers_parse_and_emit_what_scapy_built():
    raw = scapy_v6()
    ip = Ipv6Header.parse(raw)
    assert (ip.src, ip.dst, ip.hop_limit, ip.next_header, ip.payload_len) == (A6, B6, 9, 6, len(raw) - 40)
    assert ip.emit() == raw[:40]
    tcp = TcpHeader.parse(raw[40:])
    assert tcp.emit(b"hello", A6, B6) == raw[40:]


@pytest.mark.parametrize("src,dst", [(A4, B4), (A6, B6)])
def test_build_packet_has_the_checksums_scapy_computes(src, dst):
    options = build_options(Mss(1400), SackPermitted(), Timestamps(5, 6), WindowScale(9),
                            w.MpCapable.syn(0x81))
    raw = build_packet(src, dst, TcpHeader(1234, 80, 99, 0, TCP_SYN, 64240, options=options), b"")
    parsed = (IP if src.version == 4 else IPv6)(raw)
    ours = parsed[TCP].chksum
    del parsed[TCP].chksum
    if src.version == 4:
        ours_ip = parsed[IP].chksum
        del parsed[IP].chksum
    rebuilt = (IP if src.version == 4 else IPv6)(bytes(parsed))
    assert rebuilt[TCP].chksum == ours
    if src.version == 4:
        assert rebuilt[IP].chksum == ours_ip


# ---- plain options against scapy

def scapy_option_values(area: bytes) -> dict:
    """What scapy's TCP dissector reads from the options area of a header we emit."""
    return dict(TCP(TcpHeader(1, 2, 0, options=area).emit(b"", A4, B4)).options)


def test_scapy_reads_the_plain_options_we_emit():
    area = build_options(Nop(), Mss(1460), WindowScale(14), SackPermitted(), Timestamps(0xDEADBEEF, 1),
                         Sack(((1, 2), (3, 4))))
    assert scapy_option_values(area) == {
        "NOP": None, "MSS": 1460, "WScale": 14, "SAckOK": b"", "Timestamp": (0xDEADBEEF, 1), "SAck": (1, 2, 3, 4),
        "EOL": None}


def test_we_read_the_plain_options_scapy_emits():
    raw = scapy_v4(options=SCAPY_OPTIONS + [("SAck", (10, 20)), (254, b"\xf9\x89")])
    parsed = w.parse_options(TcpHeader.parse(raw[20:]).options)
    assert parsed.error == 0
    assert parsed.first(Mss) == Mss(1460) and parsed.first(WindowScale) == WindowScale(7)
    assert parsed.first(SackPermitted) == SackPermitted()
    assert parsed.first(Timestamps) == Timestamps(123456, 654321) and parsed.first(Sack) == Sack(((10, 20),))
    assert parsed.first(UnknownOption) == UnknownOption(254, b"\xf9\x89")


@given(st.integers(0, 0xFFFF), st.integers(0, 14), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=2))
@SETTINGS
def test_scapy_agrees_on_generated_plain_options(mss, shift, tsval, tsecr, blocks):
    area = build_options(Mss(mss), WindowScale(shift), Timestamps(tsval, tsecr), Sack(tuple(blocks)))
    values = scapy_option_values(area)
    assert (values["MSS"], values["WScale"], values["Timestamp"]) == (mss, shift, (tsval, tsecr))
    assert values["SAck"] == tuple(x for b in blocks for x in b)
    parsed = w.parse_options(area)
    assert (parsed.first(Mss).value, parsed.first(WindowScale).shift, parsed.first(Sack).blocks) == \
        (mss, shift, tuple(blocks))


def test_build_options_pads_to_4_bytes_with_eol():
    assert build_options(WindowScale(3)) == bytes.fromhex("030303 00")
    with pytest.raises(AssertionError):
        build_options(*[Timestamps(1, 2)] * 5)


# ---- header parse errors

@pytest.mark.parametrize("raw,reason", [
    (b"\x45" + bytes(10), PacketReason.TRUNCATED),
    (b"\x65" + bytes(19), PacketReason.BAD_IP_VERSION),
    (b"\x44" + bytes(19), PacketReason.BAD_IPV4_HEADER_LEN),
    (b"\x45\x00\x00\x10" + bytes(16), PacketReason.BAD_IP_TOTAL_LEN),
    (b"\x45\x00\x00\x40" + bytes(16), PacketReason.TRUNCATED),
], ids=["short", "version", "ihl", "total_below_header", "total_past_buffer"])
def test_ipv4_header_parse_reasons(raw, reason):
    with pytest.raises(MalformedPacket) as e:
        Ipv4Header.parse(raw)
    assert e.value.reason == reason


def test_tcp_header_parse_reasons():
    with pytest.raises(MalformedPacket) as e:
        TcpHeader.parse(bytes(19))
    assert e.value.reason == PacketReason.TRUNCATED
    with pytest.raises(MalformedPacket) as e:
        TcpHeader.parse(bytes(12) + b"\x40" + bytes(7))
    assert e.value.reason == PacketReason.BAD_TCP_HEADER_LEN
    with pytest.raises(MalformedPacket) as e:
        TcpHeader.parse(bytes(12) + b"\x60" + bytes(7))
    assert e.value.reason == PacketReason.TRUNCATED


# ---- packet twins

def test_packet_reason_names_are_the_wire_reasons(pkt):
    assert pkt.PACKET_REASON_NAMES == tuple(r.name for r in PacketReason)


def check_against_value_types(v: dict, raw: bytes):
    """The flat view says what the value types say."""
    if v["ip_version"] == 4:
        ip = Ipv4Header.parse(raw)
        assert (v["ip_header_len"], v["ip_total_len"]) == (ip.buffer_len, ip.buffer_len + ip.payload_len)
        assert (v["src"], v["dst"], v["ttl"], v["protocol"]) == (ip.src.packed, ip.dst.packed, ip.ttl, ip.protocol)
    else:
        ip = Ipv6Header.parse(raw)
        assert (v["src"], v["dst"], v["ttl"]) == (ip.src.packed, ip.dst.packed, ip.hop_limit)
        assert v["ip_total_len"] == 40 + ip.payload_len
    end = v["ip_total_len"]
    tcp = TcpHeader.parse(raw[v["tcp_offset"]:end])
    assert (v["src_port"], v["dst_port"], v["seq"], v["ack"]) == (tcp.src_port, tcp.dst_port, tcp.seq, tcp.ack)
    assert (v["tcp_flags"], v["window"], v["tcp_checksum"], v["urgent"]) == (
        tcp.flags & 0xFF, tcp.window, tcp.checksum, tcp.urgent)
    assert raw[v["options_offset"]:v["options_offset"] + v["options_len"]] == tcp.options
    assert v["payload_offset"] == v["tcp_offset"] + tcp.buffer_len
    assert v["payload_len"] == end - v["payload_offset"]


@pytest.mark.parametrize("raw", [
    scapy_v4(), scapy_v4(payload=b"", options=[]), scapy_v6(), scapy_v6(payload=b"x" * 1000, options=[]),
    scapy_v6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()),
], ids=["v4", "v4_bare", "v6", "v6_bare", "v6_hop_by_hop_and_dest_opts"])
def test_parse_packet_reads_what_the_value_types_read(pkt, raw):
    v = pkt.parse_packet(raw)
    assert v["error"] == 0
    check_against_value_types(v, raw)
    assert v == FAST.parse_packet(raw) == PURE.parse_packet(raw)


def test_parse_packet_fields_of_a_known_packet(pkt):
    raw = scapy_v4()
    v = pkt.parse_packet(raw)
    assert (v["ip_version"], v["ip_header_len"], v["tcp_offset"], v["tcp_header_len"]) == (4, 20, 20, 40)
    assert (v["options_offset"], v["options_len"], v["payload_offset"], v["payload_len"]) == (40, 20, 60, 5)
    assert (v["src"], v["dst"], v["src_port"], v["dst_port"]) == (A4.packed, B4.packed, 40000, 443)
    assert (v["seq"], v["ack"], v["tcp_flags"], v["window"]) == (0xFFFFFFF0, 77, TCP_PSH | TCP_ACK, 1000)


def test_parse_packet_ignores_link_padding_past_the_ip_length(pkt):
    raw = bytes(Ether() / IP(src=str(A4), dst=str(B4)) / TCP(flags="A"))[14:] + bytes(6)
    v = pkt.parse_packet(raw)
    assert (v["error"], v["ip_total_len"], v["payload_len"]) == (0, 40, 0)


def test_reason_truncated(pkt):
    raw = scapy_v4()
    for cut in (0, 1, 19, 20, 39, 59, len(raw) - 1):
        assert pkt.parse_packet(raw[:cut])["error"] == PacketReason.TRUNCATED, cut
    assert pkt.parse_packet(scapy_v6()[:70])["error"] == PacketReason.TRUNCATED


def test_reason_bad_ip_version(pkt):
    assert pkt.parse_packet(b"\x55" + scapy_v4()[1:])["error"] == PacketReason.BAD_IP_VERSION


def test_reason_bad_ipv4_header_len(pkt):
    assert pkt.parse_packet(b"\x44" + scapy_v4()[1:])["error"] == PacketReason.BAD_IPV4_HEADER_LEN


def test_reason_bad_ip_total_len(pkt):
    raw = bytearray(scapy_v4())
    raw[2:4] = (19).to_bytes(2, "big")
    assert pkt.parse_packet(bytes(raw))["error"] == PacketReason.BAD_IP_TOTAL_LEN


def test_reason_not_tcp_keeps_the_ip_fields(pkt):
    raw = bytes(IP(src=str(A4), dst=str(B4), proto=17) / (b"\0" * 8))
    v = pkt.parse_packet(raw)
    assert (v["error"], v["protocol"], v["src"], v["tcp_header_len"]) == (PacketReason.NOT_TCP, 17, A4.packed, 0)


def test_reason_fragment(pkt):
    assert pkt.parse_packet(bytes(IP(src=str(A4), dst=str(B4), flags="MF") / TCP()))["error"] == PacketReason.FRAGMENT
    assert pkt.parse_packet(bytes(IP(src=str(A4), dst=str(B4), frag=3) / TCP()))["error"] == PacketReason.FRAGMENT
    assert pkt.parse_packet(scapy_v6(ext=IPv6ExtHdrFragment()))["error"] == PacketReason.FRAGMENT


def test_reason_bad_tcp_header_len(pkt):
    raw = bytearray(scapy_v4())
    raw[20 + 12] = 0x40
    v = pkt.parse_packet(bytes(raw))
    assert (v["error"], v["src_port"]) == (PacketReason.BAD_TCP_HEADER_LEN, 40000)


def test_reason_bad_extension_headers(pkt):
    chain = IPv6ExtHdrDestOpt()
    for _ in range(8):
        chain = chain / IPv6ExtHdrDestOpt()
    assert pkt.parse_packet(scapy_v6(ext=chain))["error"] == PacketReason.BAD_EXTENSION_HEADERS


@given(st.binary(max_size=120))
@SETTINGS
def test_packet_twins_agree_on_any_bytes(raw):
    assert FAST.parse_packet(raw) == PURE.parse_packet(raw)


@st.composite
def mutated_packets(draw):
    raw = bytearray(draw(st.sampled_from([scapy_v4(), scapy_v6(), scapy_v4(b"", []),
                                          scapy_v6(ext=IPv6ExtHdrHopByHop())])))
    for _ in range(draw(st.integers(0, 3))):
        raw[draw(st.integers(0, min(70, len(raw) - 1)))] = draw(st.integers(0, 255))
    return bytes(raw[:draw(st.integers(0, len(raw)))])


@given(mutated_packets())
@SETTINGS
def test_packet_twins_agree_on_near_misses(raw):
    v = FAST.parse_packet(raw)
    assert v == PURE.parse_packet(raw)
    if v["error"] == 0:
        assert v["payload_offset"] + v["payload_len"] == v["ip_total_len"] <= len(raw)
        assert 0 <= v["options_len"] <= 40
