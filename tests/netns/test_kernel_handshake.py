"""Our MPTCP crypto (mptun.wire.crypto) against the Linux kernel's, over real handshakes.

A raw socket in a client namespace plays the MPTCP client by hand against a kernel MPTCP
listener in a server namespace (veth 198.18.250.1 <-> .2): MP_CAPABLE v1 with our key,
then MP_JOIN with our nonce. The kernel's own view (MPTCP_INFO, its MIB counters, the
HMACs and ADD_ADDR it sends) must match what mptun computes.
"""

import contextlib
import ctypes
import itertools
import os
import secrets
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from mptun.wire import crypto
from mptun.wire.mptcp import AddAddr, MpCapable, MpJoin, parse_options
from tests.conftest import require_commands, require_root

pytestmark = pytest.mark.netns

CLIENT_IP = "198.18.250.1"
SERVER_IP = "198.18.250.2"
SIGNAL_IP = "198.18.250.3"  # a second server address, announced by ADD_ADDR
SERVER_PORT = 18080
SIGNAL_ADDR_ID = 5
SIGNAL_PORT = 18099

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_INFO_FLAG_FALLBACK = 1 << 0
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 1 << 1
# struct mptcp_info (include/uapi/linux/mptcp.h) up to rcv_nxt: six u8 counters, a 2-byte
# hole, flags, token, write_seq, snd_una, rcv_nxt. Native byte order.
MPTCP_INFO_HEAD = struct.Struct("=BBBBBB2xIIQQQ")
MPTCP_INFO_SUBFLOWS_TOTAL_AT = 80  # since Linux 6.8: all subflows, the initial one included

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
MSS_OPTION = bytes((2, 4)) + (1460).to_bytes(2, "big")
DSN_MOD = 1 << 64
STEP_TIMEOUT = 5.0
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv, ns=None, check=True, timeout=20) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(full)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@contextlib.contextmanager
def inside_netns(name: str):
    """Run the block (this thread only) inside namespace `name`; sockets made there stay there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(target)
        os.close(home)


@dataclass
class Lab:
    client: str
    server: str


@pytest.fixture(scope="module")
def lab():
    require_root()
    require_commands("ip", "nft", "ethtool")
    tag = secrets.token_hex(3)
    lab = Lab(client=f"mpt-hs{tag}-c", server=f"mpt-hs{tag}-s")
    created = []
    try:
        for ns in (lab.client, lab.server):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        sh("ip", "-n", lab.client, "link", "add", "vc", "type", "veth",
           "peer", "name", "vs", "netns", lab.server)
        for ns, dev, addrs in ((lab.client, "vc", [CLIENT_IP]),
                               (lab.server, "vs", [SERVER_IP, SIGNAL_IP])):
            for addr in addrs:
                sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # veth marks packets as checksum-verified; with rx off the server kernel really
        # checks the TCP checksums of our hand-made segments.
        sh("ethtool", "-K", "vs", "rx", "off", ns=lab.server)
        sh("ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "0",
           ns=lab.server)
        # No client socket owns our connections, so the client kernel would answer every
        # SYN/ACK with a RST.
        sh("nft", "add table inet mpt_hs", ns=lab.client)
        sh("nft", "add chain inet mpt_hs out { type filter hook output priority 0 ; }",
           ns=lab.client)
        sh("nft", "add rule inet mpt_hs out tcp flags & rst == rst drop", ns=lab.client)
        yield lab
    finally:
        for ns in created:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def listener(lab):
    with inside_netns(lab.server):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((SERVER_IP, SERVER_PORT))
    sock.listen(16)
    sock.settimeout(STEP_TIMEOUT)
    yield sock
    sock.close()


@pytest.fixture
def raw(lab):
    with inside_netns(lab.client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sock.bind((CLIENT_IP, 0))
    yield sock
    sock.close()
    # Shown only when the test failed (pytest keeps captured output of failures).
    print(sh("ss", "-Mtnia", ns=lab.server, check=False))
    print({k: v for k, v in mib(lab.server).items() if v})


@pytest.fixture
def signal_endpoint(lab, request):
    """The server announces SIGNAL_IP (with the port given by the test's param, or none)."""
    port = request.param
    argv = ["ip", "mptcp", "endpoint", "add", SIGNAL_IP, "id", str(SIGNAL_ADDR_ID)]
    if port is not None:
        argv += ["port", str(port)]
    sh(*argv, "signal", ns=lab.server)
    yield port
    sh("ip", "mptcp", "endpoint", "flush", ns=lab.server, check=False)


# --- a TCP client by hand ---------------------------------------------------------------

def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_segment(sport: int, dport: int, seq: int, ack: int, flags: int, options: bytes,
                payload: bytes = b"", window: int = 65535) -> bytes:
    assert len(options) % 4 == 0 and len(options) <= 40
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (20 + len(options)) // 4 << 4,
                         flags, window, 0, 0) + options
    pseudo = (IPv4Address(CLIENT_IP).packed + IPv4Address(SERVER_IP).packed
              + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header) + len(payload)))
    csum = checksum(pseudo + header + payload)
    return header[:16] + csum.to_bytes(2, "big") + header[18:] + payload


@dataclass
class Received:
    seq: int
    ack: int
    flags: int
    options: object  # ParsedOptions
    payload: bytes


class RawSubflow:
    """One subflow's TCP state, kept by hand, over the shared raw socket."""

    def __init__(self, raw: socket.socket, sport: int):
        self.raw, self.sport = raw, sport
        self.snd_nxt = secrets.randbits(32)
        self.rcv_nxt = 0

    def send(self, flags: int, options: bytes, payload: bytes = b"") -> None:
        segment = tcp_segment(self.sport, SERVER_PORT, self.snd_nxt, self.rcv_nxt, flags,
                              options, payload)
        self.raw.sendto(segment, (SERVER_IP, 0))
        self.snd_nxt = (self.snd_nxt + len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)) % (1 << 32)

    def receive(self, accept, timeout: float = STEP_TIMEOUT) -> Received:
        """The next segment of this subflow from the server for which accept(segment) is true."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.raw.settimeout(left)
            try:
                packet = self.raw.recv(65535)
            except TimeoutError:
                break
            ihl = (packet[0] & 0x0F) * 4
            if packet[9] != socket.IPPROTO_TCP or packet[12:16] != IPv4Address(SERVER_IP).packed:
                continue
            tcp = packet[ihl:]
            sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", tcp)
            if sport != SERVER_PORT or dport != self.sport:
                continue
            doff = (offset >> 4) * 4
            seg = Received(seq, ack, flags, parse_options(tcp[20:doff]), tcp[doff:])
            if accept(seg):
                return seg
        raise AssertionError(f"no expected segment from the server to port {self.sport} "
                             f"within {timeout}s")


def is_synack(seg: Received) -> bool:
    return seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK


_client_ports = itertools.count(20000 + secrets.randbelow(30000))


def free_port() -> int:
    """A client port not used before in this run (no client socket owns any of them)."""
    return next(_client_ports)


def mptcp_info(sock: socket.socket) -> dict:
    raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 256)
    fields = MPTCP_INFO_HEAD.unpack_from(raw)
    info = dict(zip(("subflows", "add_addr_signal", "add_addr_accepted", "subflows_max",
                     "add_addr_signal_max", "add_addr_accepted_max", "flags", "token",
                     "write_seq", "snd_una", "rcv_nxt"), fields))
    if len(raw) > MPTCP_INFO_SUBFLOWS_TOTAL_AT:
        info["subflows_total"] = raw[MPTCP_INFO_SUBFLOWS_TOTAL_AT]
    return info


def mib(ns: str) -> dict[str, int]:
    """The MPTcpExt counters of namespace ns (/proc/net/netstat as seen inside it)."""
    lines = [ln.split() for ln in sh("cat", "/proc/net/netstat", ns=ns).splitlines()
             if ln.startswith("MPTcpExt:")]
    names, values = lines[0][1:], lines[1][1:]
    return dict(zip(names, map(int, values)))


@dataclass
class Connection:
    client_key: int
    server_key: int
    subflow: RawSubflow
    accepted: socket.socket
    server_packets: list  # segments seen on the initial subflow after the handshake


def mp_capable_handshake(raw, listener) -> Connection:
    """SYN (MP_CAPABLE v1) -> SYN/ACK (server key) -> ACK (both keys) -> accept()."""
    client_key = crypto.new_key(os.urandom)
    sf = RawSubflow(raw, free_port())
    sf.send(TCP_SYN, MSS_OPTION + MpCapable.syn().emit())
    synack = sf.receive(is_synack)
    mpc = synack.options.first(MpCapable)
    assert mpc is not None and mpc.sender_key is not None, (
        f"SYN/ACK without MP_CAPABLE and key (a fallback): {synack.options}")
    assert synack.ack == sf.snd_nxt
    sf.rcv_nxt = (synack.seq + 1) % (1 << 32)
    sf.send(TCP_ACK, MpCapable.ack(client_key, mpc.sender_key).emit())
    accepted, _ = listener.accept()
    accepted.settimeout(STEP_TIMEOUT)
    return Connection(client_key, mpc.sender_key, sf, accepted, [])


def join(conn: Connection, raw, nonce: int, corrupt_hmac: bool = False):
    """MP_JOIN on a new subflow; returns (the SYN/ACK's MpJoin, the server nonce)."""
    sf = RawSubflow(raw, free_port())
    token = crypto.key_token(conn.server_key)
    sf.send(TCP_SYN, MSS_OPTION + MpJoin.syn(address_id=1, token=token, nonce=nonce).emit())
    synack = sf.receive(is_synack)
    mpj = synack.options.first(MpJoin)
    assert mpj is not None and mpj.truncated_hmac is not None, (
        f"SYN/ACK without MP_JOIN: {synack.options}")
    sf.rcv_nxt = (synack.seq + 1) % (1 << 32)
    hmac_a = crypto.join_ack_hmac(conn.client_key, conn.server_key, nonce, mpj.nonce)
    if corrupt_hmac:
        hmac_a = bytes([hmac_a[0] ^ 0x01]) + hmac_a[1:]
    sf.send(TCP_ACK, MpJoin.ack(hmac_a).emit())
    return mpj, sf


def wait_for(predicate, timeout: float = STEP_TIMEOUT, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# --- the tests ---------------------------------------------------------------------------

def test_kernel_token_and_idsns_match_our_crypto(lab, listener, raw):
    conn = mp_capable_handshake(raw, listener)
    with conn.accepted:
        info = mptcp_info(conn.accepted)
        assert not info["flags"] & MPTCP_INFO_FLAG_FALLBACK
        assert info["flags"] & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED
        # RFC 8684 3.2: the listener's token names its connection: SHA-256(key)[:32 bits].
        assert info["token"] == crypto.key_token(conn.server_key)
        # RFC 8684 3.1: each side's IDSN is SHA-256(its key)[low 64 bits]; the kernel's
        # data sequence starts one past it (the SYN's data-level space).
        assert info["write_seq"] == (crypto.key_idsn(conn.server_key) + 1) % DSN_MOD
        assert info["rcv_nxt"] == (crypto.key_idsn(conn.client_key) + 1) % DSN_MOD
        print(f"kernel-observed vectors: server key {conn.server_key:#018x} token "
              f"{info['token']:#010x} idsn {(info['write_seq'] - 1) % DSN_MOD:#018x}; "
              f"client key {conn.client_key:#018x} idsn {(info['rcv_nxt'] - 1) % DSN_MOD:#018x}")


@pytest.mark.parametrize("signal_endpoint", [None, SIGNAL_PORT], indirect=True,
                         ids=["no-port", "port"])
def test_kernel_add_addr_hmac_matches_ours(lab, listener, raw, signal_endpoint):
    conn = mp_capable_handshake(raw, listener)
    with conn.accepted:
        seg = conn.subflow.receive(lambda s: s.options.first(AddAddr) is not None)
        add_addr = seg.options.first(AddAddr)
        assert not add_addr.echo
        assert add_addr.address_id == SIGNAL_ADDR_ID
        assert str(add_addr.address) == SIGNAL_IP
        assert add_addr.port == signal_endpoint
        # RFC 8684 3.4.1: HMAC(Key=(Key-A + Key-B), Msg=(Address ID + IP + Port)), A the sender.
        assert add_addr.truncated_hmac == crypto.add_addr_hmac(
            conn.server_key, conn.client_key, SIGNAL_ADDR_ID, SIGNAL_IP, signal_endpoint)
        print(f"kernel ADD_ADDR: sender key {conn.server_key:#018x} receiver key "
              f"{conn.client_key:#018x} port {signal_endpoint} hmac {add_addr.truncated_hmac:#018x}")


def test_kernel_accepts_our_join(lab, listener, raw):
    conn = mp_capable_handshake(raw, listener)
    with conn.accepted:
        before_info, before_mib = mptcp_info(conn.accepted), mib(lab.server)
        nonce = secrets.randbits(32)
        mpj, _ = join(conn, raw, nonce)
        # RFC 8684 3.2: HMAC-B = HMAC(Key=(Key-B + Key-A), Msg=(R-B + R-A)), leftmost 64 bits.
        assert mpj.truncated_hmac == crypto.join_synack_hmac(
            conn.server_key, conn.client_key, mpj.nonce, nonce)
        print(f"kernel join SYN/ACK: server key {conn.server_key:#018x} client key "
              f"{conn.client_key:#018x} server nonce {mpj.nonce:#010x} client nonce "
              f"{nonce:#010x} hmac {mpj.truncated_hmac:#018x}")
        joined = wait_for(
            lambda: mptcp_info(conn.accepted)["subflows"] == before_info["subflows"] + 1)
        after_mib = mib(lab.server)
        delta = {k: after_mib.get(k, 0) - before_mib.get(k, 0) for k in after_mib}
        assert joined, f"server never counted the joined subflow; MIB delta {delta}"
        if "subflows_total" in before_info:
            assert (before_info["subflows_total"], mptcp_info(conn.accepted)["subflows_total"]) == (1, 2)
        assert delta.get("MPJoinSynRx") == 1
        assert delta.get("MPJoinAckRx") == 1
        assert delta.get("MPJoinAckHMacFailure", 0) == 0


def test_kernel_rejects_a_join_with_a_wrong_hmac(lab, listener, raw):
    # The control for the test above: the kernel does check the third ACK's HMAC.
    conn = mp_capable_handshake(raw, listener)
    with conn.accepted:
        before_info, before_mib = mptcp_info(conn.accepted), mib(lab.server)
        _, sf = join(conn, raw, secrets.randbits(32), corrupt_hmac=True)
        sf.receive(lambda s: s.flags & TCP_RST)
        delta = {k: v - before_mib.get(k, 0) for k, v in mib(lab.server).items()}
        assert delta.get("MPJoinAckHMacFailure") == 1
        assert mptcp_info(conn.accepted)["subflows"] == before_info["subflows"]
