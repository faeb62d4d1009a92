"""An independent reader agrees with our emitters: every MPTCP option form, built by the compiled
emitters into Ethernet/IP/TCP packets and written to a pcap, reads back in Wireshark's MPTCP
dissector (tshark -T json) with the field values we meant; tshark also verifies our checksums.

Wireshark 4.0 never shows a DSS option's checksum (it asks for 2 bytes more than the option
has), so for DSS the checksum's presence is checked through the option length instead.
"""

import json
import random
import struct
import subprocess
from ipaddress import IPv4Address, IPv6Address

import pytest

from mptun import impl
from mptun.wire import mptcp as w
from mptun.wire.tcpip import (
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    Mss,
    Nop,
    Sack,
    SackPermitted,
    TcpHeader,
    Timestamps,
    WindowScale,
    build_options,
    build_packet,
)
from tests.conftest import require_commands
from tests.unit.fixtures_mptcp import SUBOPTIONS, emit_with

FAST = impl.load("mptcpopt", "fast")
CLIENT4, SERVER4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
CLIENT6, SERVER6 = IPv6Address("2001:2::1"), IPv6Address("2001:2::2")
LINKTYPE_ETHERNET = 1


def pcap(frames: list[bytes]) -> bytes:
    """A classic little-endian pcap file (magic a1b2c3d4, version 2.4, microseconds)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)
    for i, frame in enumerate(frames):
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame
    return out


def ethernet(ip_packet: bytes) -> bytes:
    ethertype = 0x0800 if ip_packet[0] >> 4 == 4 else 0x86DD
    return bytes.fromhex("020000000002 020000000001") + struct.pack("!H", ethertype) + ip_packet


def tcp_flags_for(value) -> int:
    """The segment each form rides on, so the dissector sees it where a peer would send it."""
    if isinstance(value, (w.MpCapable, w.MpJoin)) and value.form.name == "SYN":
        return TCP_SYN
    if isinstance(value, (w.MpCapable, w.MpJoin)) and value.form.name == "SYNACK":
        return TCP_SYN | TCP_ACK
    if isinstance(value, (w.MpTcpRst, w.MpFastclose)):
        return TCP_RST | TCP_ACK
    return TCP_ACK


def frame_for(index: int, options: list, flags: int = TCP_ACK, ipv6: bool = False, payload: bytes = b"") -> bytes:
    # one TCP connection per frame: Wireshark's MPTCP analysis then has nothing to relate them by
    src, dst = (CLIENT6, SERVER6) if ipv6 else (CLIENT4, SERVER4)
    tcp = TcpHeader(20000 + index, 443, 1000 + index, 2000 if flags & TCP_ACK else 0, flags, 64000,
                    options=build_options(*options))
    return ethernet(build_packet(src, dst, tcp, payload))


def run_tshark(tmp_path, frames: list[bytes]) -> list[dict]:
    """Each frame's fields as {field name: [values in order]}."""
    path = tmp_path / "codec.pcap"
    path.write_bytes(pcap(frames))
    result = subprocess.run(
        ["tshark", "-r", str(path), "-T", "json", "--no-duplicate-keys",
         "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
         "-o", "tcp.relative_sequence_numbers:FALSE"],
        capture_output=True, text=True, timeout=120, check=True)
    packets = json.loads(result.stdout)
    assert len(packets) == len(frames)
    return [flatten(p["_source"]["layers"]) for p in packets]


def flatten(tree, out=None) -> dict:
    out = {} if out is None else out
    for key, value in tree.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, dict):
                flatten(v, out)
            else:
                out.setdefault(key, []).append(v)
    return out


def expected_fields(value) -> dict:
    """What Wireshark must show for one suboption, in its field names and text forms."""
    o = "tcp.options.mptcp."
    e = {o + "subtype": str(w.SUBTYPE_OF[type(value)])}
    if isinstance(value, w.MpCapable):
        e.update({o + "version": str(value.version), o + "flags": f"0x{value.flags:02x}",
                  o + "checksumreq.flags": str(value.flags >> 7),
                  o + "extensibility.flag": str(value.flags >> 6 & 1),
                  o + "nomoresubflows.flag": str(value.flags >> 5 & 1),
                  o + "sha256.flag": str(value.flags & 1)})
        if value.sender_key is not None:
            e[o + "sendkey"] = str(value.sender_key)
        if value.receiver_key is not None:
            e[o + "recvkey"] = str(value.receiver_key)
        if value.data_len is not None:
            e[o + "datalvllen"] = str(value.data_len)
        if value.checksum is not None:
            e[o + "checksum"] = f"0x{value.checksum:04x}"
    elif isinstance(value, w.MpJoin):
        if value.form == w.JoinForm.ACK:
            e[o + "sendhmac"] = value.hmac.hex(":")
        else:
            e.update({o + "backup.flag": str(int(value.backup)), o + "addrid": str(value.address_id),
                      o + "sendrand": str(value.nonce)})
            if value.token is not None:
                e[o + "recvtok"] = str(value.token)
            else:
                e[o + "sendtrunchmac"] = str(value.truncated_hmac)
    elif isinstance(value, w.Dss):
        flags = value.flags
        e.update({o + "flags": f"0x{flags:02x}", o + "dataackpresent.flag": str(flags & 1),
                  o + "dataack8.flag": str(flags >> 1 & 1), o + "dseqnpresent.flag": str(flags >> 2 & 1),
                  o + "dseqn8.flag": str(flags >> 3 & 1), o + "datafin.flag": str(flags >> 4 & 1)})
        if value.data_ack is not None:
            e[o + "rawdataack"] = str(value.data_ack)
        if value.dsn is not None:
            e.update({o + "rawdataseqno": str(value.dsn), o + "subflowseqno": str(value.subflow_seq),
                      o + "datalvllen": str(value.data_len)})
    elif isinstance(value, w.AddAddr):
        e.update({o + "echo": str(int(value.echo)), o + "addrid": str(value.address_id),
                  o + ("ipv4" if value.address.version == 4 else "ipv6"): str(value.address)})
        if value.port is not None:
            e[o + "port"] = str(value.port)
        if value.truncated_hmac is not None:
            e[o + "addaddrtrunchmac"] = str(value.truncated_hmac)
    elif isinstance(value, w.RemoveAddr):
        e["mptcp.rm_addr.count"] = str(len(value.address_ids))
        e[o + "addrid"] = [str(i) for i in value.address_ids]
    elif isinstance(value, w.MpPrio):
        e[o + "backup.flag"] = str(int(value.backup))
    elif isinstance(value, w.MpFail):
        e[o + "rawdataseqno"] = str(value.dsn)
    elif isinstance(value, w.MpFastclose):
        e[o + "recvkey"] = str(value.receiver_key)
    elif isinstance(value, w.MpTcpRst):
        e.update({o + "flag_U.flag": str(value.flags >> 3 & 1), o + "flag_V.flag": str(value.flags >> 2 & 1),
                  o + "flag_W.flag": str(value.flags >> 1 & 1), o + "flag_T.flag": str(value.flags & 1),
                  o + "rst_reason": f"0x{value.reason:02x}"})
    return e


def check_frame(fields: dict, value, emitted: bytes):
    assert fields["tcp.checksum.status"] == ["1"], "Wireshark verified our TCP checksum"
    assert fields.get("ip.checksum.status", ["1"]) == ["1"]
    mptcp_lengths = [int(n) for k, n in zip(fields["tcp.option_kind"], fields["tcp.option_len"]) if k == "30"]
    assert mptcp_lengths == [len(emitted)], "the option spans exactly what we wrote (checksum included)"
    for name, want in expected_fields(value).items():
        got = fields.get(name)
        assert got is not None, f"Wireshark shows no {name}"
        assert (got if isinstance(want, list) else got[0]) == want, name


def random_suboptions(rnd: random.Random, count: int) -> list:
    """Values drawn over each type's whole field ranges (version 1, as our emitters send)."""
    u = rnd.getrandbits

    def one(kind):
        if kind == 0:
            flags = (u(8) | 1) & ~0x40
            form = rnd.randrange(4)
            return [w.MpCapable.syn(flags), w.MpCapable.synack(u(64), flags), w.MpCapable.ack(u(64), u(64), flags),
                    w.MpCapable.ack_data(u(64), u(64), u(16), rnd.choice([None, u(16)]), flags)][form]
        if kind == 1:
            return rnd.choice([w.MpJoin.syn(u(8), u(32), u(32), bool(u(1))),
                               w.MpJoin.synack(u(8), u(64), u(32), bool(u(1))), w.MpJoin.ack(rnd.randbytes(20))])
        if kind == 2:
            ack64, dsn64, has_ack, has_map = (bool(u(1)) for _ in range(4))
            return w.Dss(data_ack=u(64 if ack64 else 32) if has_ack else None, data_ack_64=ack64,
                         dsn=u(64 if dsn64 else 32) if has_map else None, dsn_64=dsn64,
                         subflow_seq=u(32) if has_map else None, data_len=u(16) if has_map else None,
                         checksum=rnd.choice([None, u(16)]) if has_map else None,
                         data_fin=bool(u(1)) and has_map)
        if kind == 3:
            echo = bool(u(1))
            address = IPv4Address(u(32)) if u(1) else IPv6Address(u(128))
            return w.AddAddr(u(8), address, rnd.choice([None, u(16)]), echo, None if echo else u(64))
        if kind == 4:
            return w.RemoveAddr(tuple(u(8) for _ in range(rnd.randint(1, 8))))
        return [w.MpPrio(bool(u(1))), w.MpFail(u(64)), w.MpFastclose(u(64)),
                w.MpTcpRst(reason=u(8), flags=u(4))][kind - 5]

    return [one(i % 9) for i in range(count)]


@pytest.fixture(scope="module")
def tshark():
    require_commands("tshark")


def test_every_fixture_form_reads_back_in_wireshark(tshark, tmp_path):
    values = [f.value for f in SUBOPTIONS if getattr(f.value, "version", 1) == w.MPTCP_VERSION]
    emitted = [emit_with(FAST, v) for v in values]
    assert emitted == [v.emit() for v in values]
    frames = [frame_for(i, [_Raw(raw)], tcp_flags_for(v), ipv6=i % 3 == 0)
              for i, (v, raw) in enumerate(zip(values, emitted))]
    for fields, value, raw in zip(run_tshark(tmp_path, frames), values, emitted):
        check_frame(fields, value, raw)


def test_generated_values_read_back_in_wireshark(tshark, tmp_path):
    values = random_suboptions(random.Random(8684), 450)
    emitted = [emit_with(FAST, v) for v in values]
    frames = [frame_for(i, [_Raw(raw)], tcp_flags_for(v), ipv6=i % 2 == 0) for i, (v, raw) in
              enumerate(zip(values, emitted))]
    for fields, value, raw in zip(run_tshark(tmp_path, frames), values, emitted):
        check_frame(fields, value, raw)


def test_plain_options_beside_mptcp_read_back_in_wireshark(tshark, tmp_path):
    syn = [Mss(1460), SackPermitted(), Timestamps(0xDEADBEEF, 0), Nop(), WindowScale(10),
           _Raw(FAST.emit_mp_capable_syn(0x81))]
    # the DESIGN's option budget: timestamps 12 + the largest DSS (28) = 40 bytes
    ack = [Nop(), Nop(), Timestamps(7, 0xFFFFFFFF), _Raw(FAST.emit_dss(True, 1, True, True, 2, True, 3, 4, False,
                                                                        True, 5))]
    sack = [Nop(), Nop(), Sack(((100, 200), (0xFFFFFF00, 50))), _Raw(FAST.emit_dss(True, 9, False))]
    frames = [frame_for(0, syn, TCP_SYN), frame_for(1, ack, TCP_ACK, payload=b"data"),
              frame_for(2, sack, TCP_ACK, ipv6=True)]
    assert len(build_options(*ack)) == 40
    f_syn, f_ack, f_sack = run_tshark(tmp_path, frames)
    assert f_syn["tcp.options.mss_val"] == ["1460"] and f_syn["tcp.options.wscale.shift"] == ["10"]
    assert "tcp.options.sack_perm" in f_syn
    assert (f_syn["tcp.options.timestamp.tsval"], f_syn["tcp.options.timestamp.tsecr"]) == (["3735928559"], ["0"])
    assert f_syn["tcp.options.mptcp.checksumreq.flags"] == ["1"]
    assert (f_ack["tcp.options.timestamp.tsval"], f_ack["tcp.options.timestamp.tsecr"]) == (["7"], ["4294967295"])
    assert f_ack["tcp.options.mptcp.rawdataack"] == ["1"] and f_ack["tcp.options.mptcp.rawdataseqno"] == ["2"]
    assert f_ack["tcp.hdr_len"] == ["60"]
    assert f_sack["tcp.options.sack_le"] == ["100", "4294967040"]
    assert f_sack["tcp.options.sack_re"] == ["200", "50"]
    for fields in (f_syn, f_ack, f_sack):
        assert fields["tcp.checksum.status"] == ["1"]


class _Raw:
    """Already-emitted option bytes, for build_options()."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def emit(self) -> bytes:
        return self.raw
