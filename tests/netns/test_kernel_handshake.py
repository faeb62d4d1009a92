"""Our MPTCP crypto (mptun.wire.crypto) against the Linux kernel's, over real handshakes.

A raw socket in a client namespace plays the MPTCP client by hand against a kernel MPTCP
listener in a server namespace (veth 198.18.250.1 <-> .2): MP_CAPABLE v1 with our key,
then MP_JOIN with our nonce. The kernel's own view (MPTCP_INFO, its MIB counters, the
HMACs and ADD_ADDR it sends) must match what mptun computes.
"""

import itertools
import os
import secrets
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from mptun.lab import mptcpinfo as mi
from mptun.lab.kstats import mptcp_counters
from mptun.lab.netns import Namespaces, run
from mptun.netcfg.netns import entered
from mptun.wire import crypto
from mptun.wire.mptcp import AddAddr, MpCapable, MpJoin, parse_options
from mptun.wire.tcpip import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Ipv4Header, Mss, TcpHeader
from tests.conftest import require_commands, require_root

pytestmark = pytest.mark.netns

CLIENT_IP = "198.18.250.1"
SERVER_IP = "198.18.250.2"
SIGNAL_IP = "198.18.250.3"  # a second server address, announced by ADD_ADDR
SERVER_PORT = 18080
SIGNAL_ADDR_ID = 5
SIGNAL_PORT = 18099

MSS_OPTION = Mss(1460).emit()
DSN_MOD = 1 << 64
STEP_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def lab():
    """A client and a server namespace joined by one veth (vc 198.18.250.1 -- vs .2 and .3)."""
    require_root()
    require_commands("ip", "nft", "ethtool")
    with Namespaces("mpt-hs", "client", "server") as lab:
        lab.veth("client", "vc", "server", "vs", [f"{CLIENT_IP}/24"], [f"{SERVER_IP}/24", f"{SIGNAL_IP}/24"])
        # veth marks packets as checksum-verified; with rx off the server kernel really
        # checks the TCP checksums of our hand-made segments.
        run(lab.server, ["ethtool", "-K", "vs", "rx", "off"])
        run(lab.server, ["ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "0"])
        # No client socket owns our connections, so the client kernel would answer every
        # SYN/ACK with a RST.
        run(lab.client, ["nft", "add table inet mpt_hs"])
        run(lab.client, ["nft", "add chain inet mpt_hs out { type filter hook output priority 0 ; }"])
        run(lab.client, ["nft", "add rule inet mpt_hs out tcp flags & rst == rst drop"])
        yield lab


@pytest.fixture(scope="module")
def listener(lab):
    with entered(lab.server):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, mi.IPPROTO_MPTCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((SERVER_IP, SERVER_PORT))
    sock.listen(16)
    sock.settimeout(STEP_TIMEOUT)
    yield sock
    sock.close()


@pytest.fixture
def raw(lab):
    with entered(lab.client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sock.bind((CLIENT_IP, 0))
    yield sock
    sock.close()
    # Shown only when the test failed (pytest keeps captured output of failures).
    print(run(lab.server, ["ss", "-Mtnia"], check=False).stdout)
    print({k: v for k, v in mptcp_counters(lab.server).items() if v})


@pytest.fixture
def signal_endpoint(lab, request):
    """The server announces SIGNAL_IP (with the port given by the test's param, or none)."""
    port = request.param
    argv = ["ip", "mptcp", "endpoint", "add", SIGNAL_IP, "id", str(SIGNAL_ADDR_ID)]
    if port is not None:
        argv += ["port", str(port)]
    run(lab.server, [*argv, "signal"])
    yield port
    run(lab.server, ["ip", "mptcp", "endpoint", "flush"], check=False)


# --- a TCP client by hand ---------------------------------------------------------------

def tcp_segment(sport: int, dport: int, seq: int, ack: int, flags: int, options: bytes,
                payload: bytes = b"", window: int = 65535) -> bytes:
    tcp = TcpHeader(sport, dport, seq, ack, flags, window, options=options)
    return tcp.emit(payload, IPv4Address(CLIENT_IP), IPv4Address(SERVER_IP))


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
            ip = Ipv4Header.parse(packet)
            if ip.protocol != socket.IPPROTO_TCP or ip.src != IPv4Address(SERVER_IP):
                continue
            tcp = TcpHeader.parse(packet[ip.buffer_len:])
            if tcp.src_port != SERVER_PORT or tcp.dst_port != self.sport:
                continue
            seg = Received(tcp.seq, tcp.ack, tcp.flags, parse_options(tcp.options),
                           packet[ip.buffer_len + tcp.buffer_len:])
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
        info = mi.mptcp_info(conn.accepted)
        assert not info.fallback
        assert info.remote_key_received
        # RFC 8684 3.2: the listener's token names its connection: SHA-256(key)[:32 bits].
        assert info.token == crypto.key_token(conn.server_key)
        # RFC 8684 3.1: each side's IDSN is SHA-256(its key)[low 64 bits]; the kernel's
        # data sequence starts one past it (the SYN's data-level space).
        assert info.write_seq == (crypto.key_idsn(conn.server_key) + 1) % DSN_MOD
        assert info.rcv_nxt == (crypto.key_idsn(conn.client_key) + 1) % DSN_MOD
        print(f"kernel-observed vectors: server key {conn.server_key:#018x} token "
              f"{info.token:#010x} idsn {(info.write_seq - 1) % DSN_MOD:#018x}; "
              f"client key {conn.client_key:#018x} idsn {(info.rcv_nxt - 1) % DSN_MOD:#018x}")


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
        before_info, before_mib = mi.mptcp_info(conn.accepted), mptcp_counters(lab.server)
        nonce = secrets.randbits(32)
        mpj, _ = join(conn, raw, nonce)
        # RFC 8684 3.2: HMAC-B = HMAC(Key=(Key-B + Key-A), Msg=(R-B + R-A)), leftmost 64 bits.
        assert mpj.truncated_hmac == crypto.join_synack_hmac(
            conn.server_key, conn.client_key, mpj.nonce, nonce)
        print(f"kernel join SYN/ACK: server key {conn.server_key:#018x} client key "
              f"{conn.client_key:#018x} server nonce {mpj.nonce:#010x} client nonce "
              f"{nonce:#010x} hmac {mpj.truncated_hmac:#018x}")
        joined = wait_for(
            lambda: mi.mptcp_info(conn.accepted).subflows == before_info.subflows + 1)
        after_mib = mptcp_counters(lab.server)
        delta = {k: after_mib.get(k, 0) - before_mib.get(k, 0) for k in after_mib}
        assert joined, f"server never counted the joined subflow; MIB delta {delta}"
        if before_info.subflows_total is not None:   # Linux 6.8 and later
            assert (before_info.subflows_total, mi.mptcp_info(conn.accepted).subflows_total) == (1, 2)
        assert delta.get("MPJoinSynRx") == 1
        assert delta.get("MPJoinAckRx") == 1
        assert delta.get("MPJoinAckHMacFailure", 0) == 0


def test_kernel_rejects_a_join_with_a_wrong_hmac(lab, listener, raw):
    # The control for the test above: the kernel does check the third ACK's HMAC.
    conn = mp_capable_handshake(raw, listener)
    with conn.accepted:
        before_info, before_mib = mi.mptcp_info(conn.accepted), mptcp_counters(lab.server)
        _, sf = join(conn, raw, secrets.randbits(32), corrupt_hmac=True)
        sf.receive(lambda s: s.flags & TCP_RST)
        delta = {k: v - before_mib.get(k, 0) for k, v in mptcp_counters(lab.server).items()}
        assert delta.get("MPJoinAckHMacFailure") == 1
        assert mi.mptcp_info(conn.accepted).subflows == before_info.subflows
