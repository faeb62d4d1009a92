"""The lab's real MPTCP peer against the kernel's own MPTCP client, over veth pairs between two namespaces.

Each transfer is checked by sha256 on both ends, and by what the server's kernel reported
(MPTCP or fallback, subflows and their addresses) and, where it says more, by ss and the MIB.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from mptun.lab import kstats as ks
from mptun.lab import mptcpinfo as mi
from mptun.lab.netns import Namespaces, run
from mptun.lab.peer import (connect_in_netns, curl_get, curl_put, pattern_sha256, run_client,
                            run_clients, sha256_file, start_peer, write_pattern_file)
from tests.conftest import require_commands, require_root

pytestmark = pytest.mark.netns

CLIENT_IP, SERVER_IP = "198.18.241.1", "198.18.241.2"
CLIENT_IP6, SERVER_IP6 = "2001:2:0:241::1", "2001:2:0:241::2"
CLIENT_IP_B, SERVER_IP_B = "198.18.242.1", "198.18.242.2"
MB = 1_000_000

_ports = iter(range(20000, 21000))


def next_port() -> int:
    return next(_ports)


def _pair(second_path: bool):
    """Two namespaces, client and server, joined by one veth pair (and a second one for two_paths)."""
    require_root()
    require_commands("ip", "ss")
    with Namespaces("mpt-p", "client", "server") as pair:
        pair.veth("client", "ca", "server", "sa", [f"{CLIENT_IP}/24", f"{CLIENT_IP6}/64"],
                  [f"{SERVER_IP}/24", f"{SERVER_IP6}/64"])
        if second_path:
            pair.veth("client", "cb", "server", "sb", [f"{CLIENT_IP_B}/24"], [f"{SERVER_IP_B}/24"])
            # The join from 198.18.242.1 must really leave through the second link.
            run(pair.client, ["ip", "rule", "add", "from", CLIENT_IP_B, "table", "242"])
            run(pair.client, ["ip", "route", "add", "198.18.241.0/24", "dev", "cb", "src", CLIENT_IP_B,
                              "table", "242"])
            run(pair.client, ["ip", "mptcp", "endpoint", "add", CLIENT_IP_B, "dev", "cb", "subflow"])
            for ns in (pair.client, pair.server):
                run(ns, ["ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"])
        yield pair


@pytest.fixture(scope="module")
def pair():
    yield from _pair(second_path=False)


@pytest.fixture(scope="module")
def two_paths():
    yield from _pair(second_path=True)


@pytest.fixture
def peer(pair):
    """peer(mode, **kw) -> a started PeerServer in pair.server, stopped after the test."""
    servers = []

    def start(mode, **kw):
        server = start_peer(pair.server, mode, next_port(), **kw)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def http_peer(peer, served_file):
    """http_peer(nbytes, name) -> (an http PeerServer serving one pattern file, the file's sha256)."""
    def start(nbytes, name="f.bin"):
        directory, sha = served_file(nbytes, name)
        return peer("http", directory=directory), sha

    return start


def only_connection(server, timeout=30):
    records = server.wait_connections(1, timeout)
    assert len(records) == 1, records
    assert records[0]["error"] is None, records[0]
    return records[0]


# ---- one path ------------------------------------------------------------------------------------


def test_mptcp_client_to_sink(pair, peer):
    server = peer("sink")
    before = ks.mptcp_counters(pair.server)
    result = run_client(pair.client, SERVER_IP, server.port, mode="sink", nbytes=5 * MB)
    assert result.ok, result.error
    assert result.mptcp is True

    rec = only_connection(server)
    assert rec["mptcp"] is True and rec["socket_protocol"] == "mptcp"
    assert rec["fallback_errno"] is None
    assert rec["bytes_in"] == 5 * MB
    assert rec["sha256_in"] == result.sha256_out == pattern_sha256(5 * MB)
    assert rec["subflow_count"] == 1
    assert rec["subflows"] == [{"local": [SERVER_IP, server.port], "remote": list(result.local)}]
    assert rec["peer"] == list(result.local) and rec["local"] == [SERVER_IP, server.port]
    assert isinstance(rec["token"], int) and rec["mptcp_info"]["remote_key_received"]

    delta = ks.counters_delta(before, ks.mptcp_counters(pair.server))
    assert delta.get("MPCapableSYNRX") == 1 and delta.get("MPCapableACKRX") == 1
    for bad in ("MPCapableFallbackACK", "DSSNotMatching", "InfiniteMapRx", "NoDSSInWindow"):
        assert bad not in delta


def test_source(pair, peer):
    n = 4 * MB + 17
    server = peer("source", nbytes=n)
    result = run_client(pair.client, SERVER_IP, server.port, mode="source")
    assert result.ok, result.error
    assert result.bytes_in == n
    assert result.sha256_in == pattern_sha256(n)
    rec = only_connection(server)
    assert rec["mptcp"] is True and rec["bytes_out"] == n and rec["sha256_out"] == result.sha256_in


def test_echo_round_trip(pair, peer):
    server = peer("echo")
    result = run_client(pair.client, SERVER_IP, server.port, mode="echo", nbytes=3 * MB)
    assert result.ok, result.error
    assert result.bytes_in == result.bytes_out == 3 * MB
    assert result.sha256_in == result.sha256_out == pattern_sha256(3 * MB)
    rec = only_connection(server)
    assert rec["mptcp"] is True
    assert rec["sha256_in"] == rec["sha256_out"] == result.sha256_out


def test_plain_client_against_mptcp_server_is_fallback(pair, peer):
    server = peer("sink")
    result = run_client(pair.client, SERVER_IP, server.port, mode="sink", nbytes=MB, mptcp=False)
    assert result.ok, result.error
    rec = only_connection(server)
    # The MPTCP listener hands a plain TCP socket to a client whose SYN had no MP_CAPABLE.
    assert rec["mptcp"] is False and rec["socket_protocol"] == "tcp"
    assert rec["fallback_errno"] == "EOPNOTSUPP"  # IPv4; IPv6 answers ENOPROTOOPT
    assert rec["subflow_count"] == 0 and rec["token"] is None
    assert rec["sha256_in"] == pattern_sha256(MB)


def test_plain_server_with_mptcp_client_falls_back(pair, peer):
    server = peer("sink", plain=True)
    before = ks.mptcp_counters(pair.client)
    result = run_client(pair.client, SERVER_IP, server.port, mode="sink", nbytes=MB, mptcp=True)
    assert result.ok, result.error
    assert result.mptcp is False and result.raw["socket_protocol"] == "mptcp"
    rec = only_connection(server)
    assert rec["mptcp"] is False and rec["plain_listener"] is True
    assert rec["sha256_in"] == pattern_sha256(MB)
    delta = ks.counters_delta(before, ks.mptcp_counters(pair.client))
    assert delta.get("MPCapableFallbackSYNACK") == 1


def test_readers_and_ss_on_live_connections(pair, peer):
    """mptcp_info / subflow_addrs / full_info / is_fallback on open sockets, and ss agreeing."""
    server = peer("echo")
    mptcp_sock = connect_in_netns(pair.client, SERVER_IP, server.port)
    plain_sock = connect_in_netns(pair.client, SERVER_IP, server.port, mptcp=False)
    try:
        for s in (mptcp_sock, plain_sock):
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        info = mi.mptcp_info(mptcp_sock)
        assert info.remote_key_received and not info.fallback and info.length == 96
        assert not mi.is_fallback(mptcp_sock)
        assert mi.is_fallback(plain_sock)
        with pytest.raises(OSError) as err:
            mi.mptcp_info(plain_sock)
        assert err.value.errno in mi.FALLBACK_ERRNOS
        (addrs,) = mi.subflow_addrs(mptcp_sock)
        assert addrs.local == mptcp_sock.getsockname() and addrs.remote == (SERVER_IP, server.port)
        full = mi.full_info(mptcp_sock)
        assert full.num_subflows == 1 and full.subflows[0].addrs == addrs
        assert full.subflows[0].tcp.bytes_received == 4

        client_view = ks.group_ss_subflows(ks.ss_mptcp(pair.client))
        (conn,) = [c for c in client_view if c["local"] == mptcp_sock.getsockname()]
        assert conn["token"] == info.token and conn["remote_key"]
        assert [s["subflow"]["flags"] for s in conn["subflow_sockets"]] == ["Mmec"]

        server_entries = ks.ss_mptcp(pair.server)
        plain_entry = [e for e in server_entries if e["peer"] == plain_sock.getsockname()]
        assert [e["netid"] for e in plain_entry] == ["tcp"] and plain_entry[0]["subflow"] is None
        (server_conn,) = [c for c in ks.group_ss_subflows(server_entries)
                          if c["peer"] == mptcp_sock.getsockname()]
        assert not server_conn["mptcp_fallback"] and len(server_conn["subflow_sockets"]) == 1
    finally:
        mptcp_sock.close()
        plain_sock.close()
    records = server.wait_connections(2, 30)
    assert sorted(r["mptcp"] for r in records) == [False, True]


def test_http_get_20mb_with_mptcpize_curl(pair, http_peer, tmp_path):
    require_commands("curl", "mptcpize")
    server, sha = http_peer(20 * MB, "big.bin")
    out = tmp_path / "got.bin"
    got = curl_get(pair.client, f"http://{SERVER_IP}:{server.port}/big.bin", str(out), mptcp=True)
    assert got.ok, got.stderr
    assert got.size == 20 * MB and got.sha256 == sha
    rec = only_connection(server)
    assert rec["mptcp"] is True and rec["subflow_count"] == 1
    assert rec["requests"] == [{"method": "GET", "path": "/big.bin", "status": 200,
                                "bytes": 20 * MB, "sha256": sha}]
    assert rec["sha256_out"] == sha


def test_http_put_upload(pair, peer, tmp_path):
    require_commands("curl", "mptcpize")
    served = tmp_path / "www"
    served.mkdir()
    upload = tmp_path / "up.bin"
    sha = write_pattern_file(str(upload), 5 * MB + 3, seed=9)
    server = peer("http", directory=str(served))
    put = curl_put(pair.client, f"http://{SERVER_IP}:{server.port}/uploads/up.bin", str(upload))
    assert put.ok, put.stderr
    assert put.stdout.strip() == sha
    assert sha256_file(str(served / "uploads" / "up.bin")) == sha
    rec = only_connection(server)
    assert rec["mptcp"] is True and rec["bytes_in"] == 5 * MB + 3 and rec["sha256_in"] == sha
    assert rec["requests"][0]["method"] == "PUT" and rec["requests"][0]["status"] == 201


def test_http_concurrent_gets(pair, http_peer, tmp_path):
    require_commands("curl", "mptcpize")
    server, sha = http_peer(2 * MB, "f.bin")
    url = f"http://{SERVER_IP}:{server.port}/f.bin"
    with ThreadPoolExecutor(max_workers=10) as pool:
        gots = list(pool.map(lambda i: curl_get(pair.client, url, str(tmp_path / f"got{i}")), range(10)))
    assert all(g.ok and g.sha256 == sha for g in gots), [g.stderr for g in gots if not g.ok]
    records = server.wait_connections(10, 60)
    assert len(records) == 10
    assert all(r["error"] is None and r["mptcp"] is True and r["sha256_out"] == sha for r in records)


def test_http_get_without_mptcp_is_fallback(pair, http_peer, tmp_path):
    require_commands("curl")
    server, sha = http_peer(MB, "f.bin")
    got = curl_get(pair.client, f"http://{SERVER_IP}:{server.port}/f.bin", str(tmp_path / "f"),
                   mptcp=False)
    assert got.ok and got.sha256 == sha
    assert only_connection(server)["mptcp"] is False


def test_ipv6(pair, peer):
    server = peer("sink")
    result = run_client(pair.client, SERVER_IP6, server.port, mode="sink", nbytes=2 * MB)
    assert result.ok, result.error
    assert result.mptcp is True
    rec = only_connection(server)
    assert rec["family"] == 6 and rec["mptcp"] is True
    assert rec["subflows"] == [{"local": [SERVER_IP6, server.port], "remote": list(result.local)}]
    assert rec["sha256_in"] == pattern_sha256(2 * MB)


def test_ipv6_plain_client_fallback_errno(pair, peer):
    server = peer("sink")
    result = run_client(pair.client, SERVER_IP6, server.port, mode="sink", nbytes=1000, mptcp=False)
    assert result.ok, result.error
    rec = only_connection(server)
    assert rec["mptcp"] is False and rec["fallback_errno"] == "ENOPROTOOPT"


def test_ipv6_http_get_with_curl(pair, http_peer, tmp_path):
    require_commands("curl", "mptcpize")
    server, sha = http_peer(2 * MB, "f.bin")
    got = curl_get(pair.client, f"http://[{SERVER_IP6}]:{server.port}/f.bin", str(tmp_path / "f"))
    assert got.ok, got.stderr
    assert got.sha256 == sha
    rec = only_connection(server)
    assert rec["family"] == 6 and rec["mptcp"] is True


def test_20_concurrent_clients(pair, peer):
    server = peer("echo")
    results = run_clients(pair.client, SERVER_IP, server.port, count=20, mode="echo", nbytes=MB)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    expected = pattern_sha256(MB)
    assert all(r.sha256_in == r.sha256_out == expected for r in results)
    records = server.wait_connections(20, 60)
    assert len(records) == 20
    assert sorted(tuple(r["peer"]) for r in records) == sorted(r.local for r in results)
    assert all(r["error"] is None and r["mptcp"] is True for r in records)
    assert all(r["sha256_in"] == r["sha256_out"] == expected for r in records)
    assert len({r["token"] for r in records}) == 20


def test_stop_is_clean_and_idempotent(pair, peer):
    server = peer("sink")
    assert server.running()
    assert server.stop() == 0
    assert server.stop() == 0
    assert not server.running()
    assert server.connections() == []


# ---- two paths -----------------------------------------------------------------------------------


def _assert_two_subflows(rec, port):
    assert rec["mptcp"] is True, rec
    assert rec["subflow_count"] == 2, rec["subflows"]
    assert sorted(s["remote"][0] for s in rec["subflows"]) == [CLIENT_IP, CLIENT_IP_B]
    assert all(s["local"] == [SERVER_IP, port] for s in rec["subflows"])


def test_two_subflows_upload_50mb(two_paths):
    server = start_peer(two_paths.server, "sink", next_port())
    try:
        before = ks.mptcp_counters(two_paths.server)
        result = run_client(two_paths.client, SERVER_IP, server.port, mode="sink", nbytes=50 * MB)
        assert result.ok, result.error
        rec = only_connection(server, timeout=60)
        assert rec["bytes_in"] == 50 * MB and rec["sha256_in"] == pattern_sha256(50 * MB)
        _assert_two_subflows(rec, server.port)
        delta = ks.counters_delta(before, ks.mptcp_counters(two_paths.server))
        assert delta.get("MPJoinSynRx") == 1 and delta.get("MPJoinAckRx") == 1
        for bad in ("DSSNotMatching", "InfiniteMapRx", "NoDSSInWindow", "MPCapableFallbackACK"):
            assert bad not in delta
    finally:
        server.stop()


def test_two_subflows_download_50mb(two_paths):
    server = start_peer(two_paths.server, "source", next_port(), nbytes=50 * MB)
    try:
        result = run_client(two_paths.client, SERVER_IP, server.port, mode="source")
        assert result.ok, result.error
        assert result.bytes_in == 50 * MB and result.sha256_in == pattern_sha256(50 * MB)
        rec = only_connection(server, timeout=60)
        _assert_two_subflows(rec, server.port)
        client_sources = sorted(s["local"][0] for s in result.subflows)
        assert client_sources == [CLIENT_IP, CLIENT_IP_B]
    finally:
        server.stop()

