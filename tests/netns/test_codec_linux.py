"""The option codecs against what this kernel's MPTCP puts on the wire.

Two namespaces, two veth paths, Linux MPTCP on both ends with DSS checksums on: one
connection does MP_CAPABLE, MP_JOIN, ADD_ADDR (and its echo), MP_PRIO, REMOVE_ADDR, data
both ways and DATA_FIN; a second is aborted (MP_FASTCLOSE + MP_TCPRST). tcpdump captures the
server side; every MPTCP option must parse cleanly in both twins, re-emit to Linux's bytes,
and carry checksums that our dss_checksum() reproduces.
"""

import hashlib
import struct
import subprocess
import sys
import time
from ipaddress import ip_address

import pytest

from mptun import impl
from mptun.lab.netns import Namespaces, run
from mptun.wire import mptcp as w
from mptun.wire.tcpip import tcp_checksum_ok
from tests.conftest import require_commands, require_root

pytestmark = pytest.mark.netns

FAST_OPT, PURE_OPT = impl.load("mptcpopt", "fast"), impl.load("mptcpopt", "pure")
FAST_PKT, PURE_PKT = impl.load("packet", "fast"), impl.load("packet", "pure")
PORT = 5201

SERVER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen()
print("ready", flush=True)
for _ in range(2):
    c, _ = s.accept()
    try:
        while c.recv(65536):
            pass
        c.sendall(b"y" * 3000)
        c.close()
    except OSError:
        pass
"""

# Pauses only order the events (joins and announcements happen in the background).
CLIENT = """
import socket, struct, subprocess, sys, time
server_ns = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.connect(("198.18.200.2", {port}))
s.sendall(b"a" * 1000); time.sleep(0.5)
for i in range(5):  # small spaced writes: one mapping per segment, so checksums can be checked
    s.sendall(bytes([65 + i]) * (100 + i)); time.sleep(0.05)
s.sendall(b"b" * 200000); time.sleep(0.5)
subprocess.run(["ip", "mptcp", "endpoint", "change", "id", "7", "backup"], check=True); time.sleep(0.3)
subprocess.run(["ip", "-n", server_ns, "mptcp", "endpoint", "delete", "id", "5"], check=True); time.sleep(0.3)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
s.close(); time.sleep(0.3)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
t.connect(("198.18.200.2", {port})); t.sendall(b"c" * 10); time.sleep(0.3)
t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); t.close(); time.sleep(0.3)
""".format(port=PORT)


def read_pcap(path) -> list[bytes]:
    """IP packets from a pcap of LINUX_SLL2 (tcpdump -i any), LINUX_SLL or Ethernet frames."""
    data = open(path, "rb").read()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    header_len = {276: 20, 113: 16, 1: 14}[linktype]
    packets, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[pos + 8:pos + 12])[0]
        packets.append(data[pos + 16 + header_len:pos + 16 + incl])
        pos += 16 + incl
    return packets


@pytest.fixture(scope="module")
def linux_packets(tmp_path_factory):
    """Every IP packet of the scenario, as captured in the server namespace."""
    require_root()
    require_commands("ip", "tcpdump", "ethtool")
    pcap = tmp_path_factory.mktemp("codec") / "linux.pcap"
    procs = []   # killed and waited for before the namespaces go
    with Namespaces("mpt-cdc", "server", "client") as ns:
        server_ns, client_ns = ns.server, ns.client
        for i in (1, 2):
            ns.veth("client", f"eth{i}", "server", f"eth{i}", [f"198.18.{199 + i}.1/24"], [f"198.18.{199 + i}.2/24"])
            for netns in (client_ns, server_ns):
                # one wire segment per captured packet, and real checksums on the wire
                run(netns, ["ethtool", "-K", f"eth{i}", "gro", "off", "tso", "off", "gso", "off", "tx", "off"],
                    check=False)
        for netns in (server_ns, client_ns):
            run(netns, ["sysctl", "-qw", "net.mptcp.enabled=1", "net.mptcp.checksum_enabled=1"])
            run(netns, ["ip", "mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4"])
        run(server_ns, ["ip", "mptcp", "endpoint", "add", "198.18.201.2", "dev", "eth2", "id", "5", "signal"])
        run(client_ns, ["ip", "mptcp", "endpoint", "add", "198.18.201.1", "dev", "eth2", "id", "7", "subflow"])
        try:
            dump = subprocess.Popen(["ip", "netns", "exec", server_ns, "tcpdump", "-i", "any", "-U", "-s", "0",
                                     "-w", str(pcap), "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            procs.append(dump)
            banner = [dump.stderr.readline() for _ in range(2)]  # "data link type ...", "listening on ..."
            assert any("listening" in line for line in banner), banner
            server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", SERVER],
                                      stdout=subprocess.PIPE, text=True)
            procs.append(server)
            assert server.stdout.readline().strip() == "ready"
            subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c", CLIENT, server_ns],
                           check=True, timeout=60)
            server.wait(timeout=10)
            time.sleep(0.5)  # let tcpdump write the last packets before it is stopped
            dump.terminate()
            dump.wait(timeout=10)
            return read_pcap(pcap)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def mptcp_segments(packets):
    """(packet view, options area, payload) of every packet that carries a kind-30 option."""
    for raw in packets:
        view = FAST_PKT.parse_packet(raw)
        assert view == PURE_PKT.parse_packet(raw)
        assert view["error"] == 0, f"unreadable packet {raw[:60].hex()}"
        area = raw[view["options_offset"]:view["options_offset"] + view["options_len"]]
        if FAST_OPT.parse_options(area)["present"] & FAST_OPT.HAS_MPTCP:
            yield view, area, raw[view["payload_offset"]:view["payload_offset"] + view["payload_len"]]


def test_every_linux_option_parses_cleanly_and_re_emits_identically(linux_packets):
    count = 0
    for view, area, _ in mptcp_segments(linux_packets):
        record = FAST_OPT.parse_options(area)
        assert record == PURE_OPT.parse_options(area)
        assert record["error"] == 0, (w.Reason(record["error"]).name, area.hex())
        parsed = w.parse_options(area)
        for offset, option in zip(parsed.offsets, parsed.options):
            assert option.emit() == area[offset:offset + option.buffer_len], area.hex()
        count += 1
    assert count > 50


def test_linux_sent_every_form_this_scenario_makes(linux_packets):
    seen = set()
    for view, area, _ in mptcp_segments(linux_packets):
        for option in w.parse_options(area).mptcp:
            form = getattr(option, "form", None)
            seen.add(type(option).__name__ + (f".{form.name}" if form else ""))
            if isinstance(option, w.Dss) and option.data_fin:
                seen.add("Dss.DATA_FIN")
            if isinstance(option, w.AddAddr):
                seen.add("AddAddr.echo" if option.echo else "AddAddr.announce")
    assert seen >= {"MpCapable.SYN", "MpCapable.SYNACK", "MpCapable.ACK", "MpJoin.SYN", "MpJoin.SYNACK",
                    "MpJoin.ACK", "Dss", "Dss.DATA_FIN", "AddAddr.announce", "AddAddr.echo", "RemoveAddr",
                    "MpPrio", "MpFastclose", "MpTcpRst"}, seen


def test_mp_capable_keys_are_where_rfc_8684_puts_them(linux_packets):
    """The third ACK carries the sender's (client's) key first, then the SYN/ACK's key."""
    synack_keys, ack_receiver_keys = set(), set()
    for view, area, _ in mptcp_segments(linux_packets):
        mpc = w.parse_options(area).first(w.MpCapable)
        if mpc is not None and mpc.form == w.MpcForm.SYNACK:
            synack_keys.add(mpc.sender_key)
        elif mpc is not None and mpc.form == w.MpcForm.ACK:
            ack_receiver_keys.add(mpc.receiver_key)
            assert mpc.checksum_required, "checksums were enabled on both ends"
    assert synack_keys and ack_receiver_keys <= synack_keys


def idsn(key: int) -> int:
    """RFC 8684 3.1: the initial data sequence number is the low 64 bits of SHA-256(key)."""
    return int.from_bytes(hashlib.sha256(key.to_bytes(8, "big")).digest()[-8:], "big")


def test_our_dss_checksum_is_linux_s(linux_packets):
    checked = 0
    for view, area, payload in mptcp_segments(linux_packets):
        options = w.parse_options(area)
        dss, mpc = options.first(w.Dss), options.first(w.MpCapable)
        if dss is not None and dss.dsn is not None:
            assert dss.checksum is not None, "checksums were negotiated: every mapping carries one"
            if dss.data_len == len(payload) and payload:  # the whole mapping is in this segment
                assert w.dss_checksum(dss.dsn, dss.subflow_seq, dss.data_len, payload) == dss.checksum
                checked += 1
        elif mpc is not None and mpc.form == w.MpcForm.ACK_DATA and mpc.data_len == len(payload):
            # the first data on MP_CAPABLE maps DSN IDSN+1 to relative subflow seq 1 (3.1, 3.3.1)
            assert mpc.checksum is not None
            dsn = (idsn(mpc.sender_key) + 1) % (1 << 64)
            assert w.dss_checksum(dsn, 1, mpc.data_len, payload) == mpc.checksum
            checked += 1
    assert checked >= 5


def test_linux_tcp_checksums_verify_with_ours(linux_packets):
    for raw in linux_packets:
        view = FAST_PKT.parse_packet(raw)
        segment = raw[view["tcp_offset"]:view["ip_total_len"]]
        assert tcp_checksum_ok(ip_address(view["src"]), ip_address(view["dst"]), segment)
