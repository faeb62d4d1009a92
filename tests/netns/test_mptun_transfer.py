"""`mptun up eth0` in a lab's client, and unmodified plain-TCP programs (curl, Python sockets) talk
to the lab's server, whose Linux kernel is the MPTCP peer. What is checked is what a user cares
about: the bytes arrive intact (sha256), the server's kernel calls the connection MPTCP (or a
fallback, for a plain server), and its MPTCP MIB shows no mapping, checksum or window complaint.
"""

import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from mptun.lab import PathSpec
from mptun.lab.netns import run
from mptun.lab.peer import curl_get, curl_put, run_client, run_clients, socket_in_netns, start_peer
from tests.netns.mptun_helpers import SERVER, MptunRunner, assert_server_happy, server_mib

pytestmark = pytest.mark.netns

MB = 1 << 20


@pytest.fixture
def mptun_lab(make_lab, tmp_path):
    """make(paths) -> (lab, runner) with mptun up on eth0 in the client; always taken down."""
    runners = []

    def make(spec: str = ""):
        lab = make_lab([PathSpec.parse(spec)])
        # Strict reverse-path filtering, as many distributions have it.
        run(lab.client, ["sh", "-c", "for f in all default eth0; do echo 1 > /proc/sys/net/ipv4/conf/$f/rp_filter; done"])
        r = MptunRunner(lab.client, str(tmp_path / f"run{len(runners)}"))
        runners.append(r)
        r.up("eth0")
        return lab, r

    yield make
    for r in runners:
        r.stop()


def curl_download(lab, tmp_path, nbytes: int, sha: str, timeout: float) -> None:
    """GET the http peer's file.bin (port 8080) with a plain-TCP curl in the client, through
    mptun: it must arrive whole and intact."""
    got = curl_get(lab.client, f"http://{SERVER}:8080/file.bin", str(tmp_path / "out.bin"), mptcp=False,
                   timeout=timeout)
    assert got.ok, got.stderr
    assert (got.size, got.sha256) == (nbytes, sha)


def curl_upload(lab, directory: str, sha: str, timeout: float, name: str = "file.bin") -> None:
    """PUT directory/name to the http peer as up.bin with a plain-TCP curl in the client: the
    peer answers with the sha256 of what it stored."""
    put = curl_put(lab.client, f"http://{SERVER}:8080/up.bin", os.path.join(directory, name), mptcp=False,
                   timeout=timeout)
    assert put.ok, put.stderr
    assert put.stdout.strip() == sha


def down_and_up(lab, tmp_path, served_file, nbytes: int, timeout: float) -> list[dict]:
    """A file of nbytes down from the http peer and up again, both through mptun and intact; the
    server's records of the two connections."""
    directory, sha = served_file(nbytes)
    with start_peer(lab.server, "http", 8080, directory=directory) as peer:
        curl_download(lab, tmp_path, nbytes, sha, timeout)
        curl_upload(lab, directory, sha, timeout)
        return peer.wait_connections(2, timeout=30)


def only_mptcp_connection(peer, runner):
    rec = peer.wait_connections(1, timeout=30)[-1]
    assert rec["mptcp"] is True, f"the server's kernel saw a fallback: {rec}"
    assert rec["mptcp_info"]["fallback"] is False
    assert rec["subflow_count"] == 1
    st = runner.status()
    assert [c["mode"] for c in st["connections"]] == ["mptcp"], st["connections"]
    return rec


def test_curl_download_100mb_is_mptcp(mptun_lab, tmp_path, served_file):
    lab, r = mptun_lab()
    directory, sha = served_file(100 * MB)
    before = server_mib(lab)
    with start_peer(lab.server, "http", 8080, directory=directory) as peer:
        curl_download(lab, tmp_path, 100 * MB, sha, timeout=120)
        only_mptcp_connection(peer, r)
    assert_server_happy(before, server_mib(lab))
    counters = r.status()["counters"]
    assert counters.get("mptcp_connections") == 1
    for bad in ("malformed_options", "segments_unmapped", "segments_across_mappings", "unmapped_data",
                "dss_conflicts", "internal_errors"):
        assert not counters.get(bad), counters


def test_curl_upload_100mb_is_mptcp(mptun_lab, tmp_path, served_file):
    lab, r = mptun_lab()
    directory, sha = served_file(100 * MB, "src.bin")
    before = server_mib(lab)
    with start_peer(lab.server, "http", 8080, directory=directory) as peer:
        curl_upload(lab, directory, sha, timeout=120, name="src.bin")
        rec = only_mptcp_connection(peer, r)
        assert rec["requests"][0]["sha256"] == sha
    assert_server_happy(before, server_mib(lab))


def test_plain_tcp_server_works_by_fallback(mptun_lab):
    lab, r = mptun_lab()
    with start_peer(lab.server, "echo", 9000, plain=True) as peer:
        res = run_client(lab.client, SERVER, 9000, mode="echo", nbytes=2 * MB, mptcp=False, timeout=60)
        assert res.ok, res.error
        assert res.bytes_in == 2 * MB and res.sha256_in == res.sha256_out
        assert peer.wait_connections(1)[0]["mptcp"] is False
    st = r.status()
    assert [c["mode"] for c in st["connections"]] == ["fallback"]
    assert st["counters"]["fallback_no_mp_capable"] == 1
    text = r.status_text()
    assert "fallback" in text and "fallback_no_mp_capable" in text


def test_200_concurrent_connections(mptun_lab):
    lab, r = mptun_lab()
    before = server_mib(lab)
    with start_peer(lab.server, "echo", 9001) as peer:
        results = run_clients(lab.client, SERVER, 9001, mode="echo", nbytes=256 * 1024, mptcp=False,
                              count=200, timeout=120)
        bad = [x for x in results if not x.ok or x.bytes_in != 256 * 1024 or x.sha256_in != x.sha256_out]
        assert not bad, bad[:3]
        records = peer.wait_connections(200, timeout=60)
        assert all(rec["mptcp"] for rec in records)
    assert_server_happy(before, server_mib(lab))
    st = r.status()
    assert st["counters"]["mptcp_connections"] == 200
    assert not st["counters"].get("internal_errors")


def test_closed_port_is_refused_at_once_and_silence_times_out(mptun_lab):
    lab, r = mptun_lab()
    # Nobody listens on 8081: the server's kernel answers RST, the app sees ECONNREFUSED.
    refused = run(lab.client, ["curl", "-sS", "--max-time", "20", f"http://{SERVER}:8081/"], check=False, timeout=30)
    assert refused.returncode == 7, refused.stderr           # curl: couldn't connect
    assert "Couldn't connect" in refused.stderr or "refused" in refused.stderr.lower()
    # 198.18.100.99 is on the server's subnet and nobody has it: no answer at all.
    silent = run(lab.client, ["curl", "-sS", "--connect-timeout", "3", "http://198.18.100.99:8080/"],
                 check=False, timeout=30)
    assert silent.returncode == 28, silent.stderr            # curl: timeout
    st = r.status()
    assert st["counters"]["refused"] == 1
    # The held SYN never reached the app as anything but silence (curl timed out); once curl
    # gave up, mptun dropped the connection (tests/netns/test_subflow_sockets.py).
    deadline = time.monotonic() + 10
    while st["connections"]:
        assert time.monotonic() < deadline, st["connections"]
        time.sleep(0.2)
        st = r.status()
    assert st["counters"].get("app_gone") == 1


def test_one_percent_loss_50mb_both_ways(mptun_lab, tmp_path, served_file):
    lab, r = mptun_lab("rate=200mbit,loss=1%")
    before = server_mib(lab)
    records = down_and_up(lab, tmp_path, served_file, 50 * MB, timeout=180)
    assert all(rec["mptcp"] for rec in records)
    assert_server_happy(before, server_mib(lab))
    losses = lab.loss_counters()
    assert sum(losses.values()) > 0, f"the lab dropped nothing: {losses}"


def test_a_stalled_reader_gets_every_byte(mptun_lab, tmp_path, served_file):
    """The app stops reading: windows close, Linux probes the zero window (mapping the probe byte
    one DSN below: docs/netcfg.md, "Peer behaviour the datapath relies on"), and once the app reads
    again every byte arrives, in order."""
    lab, r = mptun_lab()
    directory, sha = served_file(30 * MB)
    with start_peer(lab.server, "http", 8080, directory=directory) as peer:
        s = socket_in_netns(lab.client, mptcp=False)
        with s:
            s.settimeout(30)
            s.connect((SERVER, 8080))
            s.sendall(b"GET /file.bin HTTP/1.0\r\nHost: lab\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            _, body = head.split(b"\r\n\r\n", 1)
            h = hashlib.sha256(body)
            got = len(body)
            for _ in range(4):
                time.sleep(1.0)
                for _ in range(16):
                    d = s.recv(4096)
                    h.update(d)
                    got += len(d)
            while True:
                d = s.recv(1 << 20)
                if not d:
                    break
                h.update(d)
                got += len(d)
        assert (got, h.hexdigest()) == (30 * MB, sha)
        only_mptcp_connection(peer, r)


def test_dss_checksums_when_the_server_requires_them(mptun_lab, tmp_path, served_file):
    lab, r = mptun_lab()
    run(lab.server, ["sysctl", "-qw", "net.mptcp.checksum_enabled=1"])
    before = server_mib(lab)
    records = down_and_up(lab, tmp_path, served_file, 20 * MB, timeout=120)
    assert all(rec["mptcp"] and rec["mptcp_info"]["csum_enabled"] for rec in records)
    assert_server_happy(before, server_mib(lab))
    assert not r.status()["counters"].get("dss_checksum_failures")

    # A slow path and a server that writes and closes at once: its DATA_FIN rides on its last data
    # mapping (data-level length = data + 1), and the checksum covers that announced length.
    lab, r = mptun_lab("rate=20mbit")
    run(lab.server, ["sysctl", "-qw", "net.mptcp.checksum_enabled=1"])
    before = server_mib(lab)
    with start_peer(lab.server, "source", 9001, nbytes=MB) as peer:
        results = run_clients(lab.client, SERVER, 9001, mode="source", mptcp=False, count=5, timeout=60)
        records = peer.wait_connections(5, timeout=30)
    assert all(res.ok and res.bytes_in == MB for res in results), results
    assert {res.sha256_in for res in results} == {rec["sha256_out"] for rec in records}
    assert all(rec["mptcp"] and rec["mptcp_info"]["csum_enabled"] for rec in records)
    assert_server_happy(before, server_mib(lab))
    counters = r.status()["counters"]
    assert not counters.get("dss_checksum_failures"), counters


def test_connect_then_close_without_data_closes_the_mptcp_connection(mptun_lab):
    """The app connects and closes without a byte, to a server waiting for a request (it never
    sends a DSS): mptun still sends the DATA_FIN, as Linux does, and both sides close."""
    lab, r = mptun_lab()
    with start_peer(lab.server, "echo", 9002) as peer:
        app = socket_in_netns(lab.client, mptcp=False)
        app.settimeout(10)
        app.connect((SERVER, 9002))
        time.sleep(0.3)
        app.close()
        rec = peer.wait_connections(1, timeout=10)[-1]     # logged when the server saw EOF
        assert rec["mptcp"] is True and rec["bytes_in"] == 0, rec
    deadline = time.monotonic() + 10
    while True:
        states = [c["state"] for c in r.status()["connections"]]
        if all(st == "closed" for st in states):
            break
        assert time.monotonic() < deadline, f"connections left open: {r.status()['connections']}"
        time.sleep(0.2)
    assert not r.status()["counters"].get("data_fin_timeouts")


def test_upload_survives_the_loss_of_the_servers_one_window_update(mptun_lab):
    """The server's app stalls until every window is closed, then reads once, and the one window
    update its kernel sends is lost: mptun's persist timer must probe, or the upload hangs."""
    lab, r = mptun_lab()
    listener = socket_in_netns(lab.server, mptcp=True)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    listener.bind((SERVER, 9500))
    listener.listen(4)
    listener.settimeout(10)
    app = socket_in_netns(lab.client, mptcp=False)
    app.settimeout(120)
    total = 40 * MB
    try:
        app.connect((SERVER, 9500))
        srv, _ = listener.accept()

        def upload():
            try:
                app.sendall(b"z" * total)
                app.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=upload, daemon=True).start()
        time.sleep(3)                       # the server's app reads nothing: every window closes
        run(lab.router, ["nft", "-f", "-"], input=(
            "table inet wdrop {\n chain forward {\n  type filter hook forward priority -10; policy accept;\n"
            f"  ip saddr {SERVER} tcp sport 9500 drop\n }}\n}}\n"))
        got = 0
        srv.setblocking(False)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:  # the server's app drains what it holds, once
            try:
                d = srv.recv(1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not d:
                break
            got += len(d)
        time.sleep(0.5)
        run(lab.router, ["nft", "delete", "table", "inet", "wdrop"])
        srv.settimeout(15)
        while got < total:
            d = srv.recv(1 << 20)           # TimeoutError: the upload stalled
            if not d:
                break
            got += len(d)
        assert got == total
        assert r.status()["counters"].get("window_probes_sent", 0) >= 1
        srv.close()
    finally:
        app.close()
        listener.close()


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_resets_cross_mptun_both_ways(mptun_lab):
    """The server aborts: the app gets a reset. The app aborts: mptun sends MP_FASTCLOSE and the
    server's kernel closes the MPTCP connection (RFC 8684 3.5)."""
    lab, r = mptun_lab()
    listener = socket_in_netns(lab.server, mptcp=True)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((SERVER, 9100))
    listener.listen(8)
    listener.settimeout(20)
    accepted = []

    def serve(n):
        for _ in range(n):
            conn, _ = listener.accept()
            conn.sendall(b"x" * 100_000)
            accepted.append(conn)

    with listener:
        t = threading.Thread(target=serve, args=(2,), daemon=True)
        t.start()
        # 1. The server resets.
        app = socket_in_netns(lab.client, mptcp=False)
        with app:
            app.settimeout(20)
            app.connect((SERVER, 9100))
            got = 0
            while got < 100_000:
                got += len(app.recv(65536))
            deadline = time.monotonic() + 10
            while not accepted and time.monotonic() < deadline:
                time.sleep(0.01)
            _reset(accepted[0])
            with pytest.raises(ConnectionResetError):
                while time.monotonic() < deadline:
                    if not app.recv(65536):
                        break
                    time.sleep(0.01)
        # 2. The app resets.
        before = server_mib(lab)
        app = socket_in_netns(lab.client, mptcp=False)
        app.settimeout(20)
        app.connect((SERVER, 9100))
        app.recv(1000)
        _reset(app)
        t.join(20)
        srv = accepted[1]
        srv.settimeout(10)
        with pytest.raises(ConnectionResetError):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not srv.recv(65536):
                    break
        srv.close()
    after = server_mib(lab)
    assert after.get("MPFastcloseRx", 0) - before.get("MPFastcloseRx", 0) == 1
    counters = r.status()["counters"]
    assert counters.get("resets_from_app") == 1
    assert counters.get("resets_from_peer", 0) + counters.get("fastclose_from_peer", 0) == 1


def test_packets_mptun_sends_fit_the_interface_mtu(mptun_lab, tmp_path, served_file):
    """The options mptun adds never push a segment past the interface MTU (1500 here).

    With TSO and GSO off on eth0 the kernel cuts every super-packet mptun sends into
    on-the-wire segments right there, so the router sees exactly what a real link would carry.
    """
    lab, r = mptun_lab("rate=500mbit")
    run(lab.client, ["ethtool", "-K", "eth0", "tso", "off", "gso", "off"])
    run(lab.router, ["nft", "-f", "-"], input=(
        "table inet mtu_check {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n"
        '    iifname "p0" meta length > 1500 counter comment "oversize"\n'
        '    iifname "p0" meta l4proto tcp counter comment "all"\n  }\n}\n'))
    records = down_and_up(lab, tmp_path, served_file, 20 * MB, timeout=120)
    assert all(rec["mptcp"] for rec in records)
    counts = {}
    for line in run(lab.router, ["nft", "list", "table", "inet", "mtu_check"]).stdout.splitlines():
        if "counter packets" in line:
            counts[line.split('comment "')[1].rstrip('"')] = int(line.split("counter packets ")[1].split()[0])
    assert counts["all"] > 10_000, counts  # the upload's data segments crossed here
    # (eth0's tx_dropped is no witness here: on veth it also counts the peer's backlog
    # overflows under CPU pressure; the intact transfers and the router's count are.)
    assert counts["oversize"] == 0, counts
