"""An app that aborts aborts the MPTCP connection (RFC 8684 3.5): the server's kernel must count an
MP_FASTCLOSE every time, never see a clean close, and bytes the app wrote before its abort still
arrive. Repeated many times, since what is checked is a race. docs/datapath.md ("Aborts") says what
mptun promises; these tests hold it to that."""

import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from mptun.lab import PathSpec
from mptun.lab.netns import ns_argv, run
from mptun.lab.peer import socket_in_netns
from tests.netns.mptun_helpers import SERVER, MptunRunner, server_mib, wait_gone

pytestmark = pytest.mark.netns

REPEAT = 200
DOWNLOAD = 1 << 20
REQUEST = 1024


@pytest.fixture
def lab_up(make_lab, tmp_path):
    lab = make_lab([PathSpec.parse("")])
    r = MptunRunner(lab.client, str(tmp_path / "run"))
    try:
        r.up("eth0")
        yield lab, r
    finally:
        r.stop()


class Server:
    """A kernel MPTCP server in the lab's server namespace; each connection is handled by `serve`,
    which returns how the connection ended for the server: "reset" or "eof"."""

    def __init__(self, lab, port: int, serve):
        self.listener = socket_in_netns(lab.server, mptcp=True)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((SERVER, port))
        self.listener.listen(64)
        self.listener.settimeout(30)
        self.serve = serve
        self.results: list = []
        self.errors: list = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                try:
                    self.results.append(self.serve(conn))
                except Exception as e:    # reported by the test, not lost in the thread
                    self.errors.append(repr(e))
                    self.results.append("error")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.listener.close()
        self.thread.join(10)

    def wait(self, n: int, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while len(self.results) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.results) >= n, f"the server handled {len(self.results)} of {n} connections"
        return self.results[n - 1]


def read_until_end(conn) -> tuple[str, bytes]:
    got = bytearray()
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return "eof", bytes(got)
            got += chunk
    except OSError as e:
        # After MP_FASTCLOSE Linux's recv says ECONNRESET, or at times EPIPE or ENOTCONN: an
        # abort all the same (a clean close reads an end).
        if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
            return "reset", bytes(got)
        raise


def fastcloses(lab) -> int:
    return server_mib(lab).get("MPFastcloseRx", 0)


@contextlib.contextmanager
def wire_capture(lab, port: int, path: str):
    """tcpdump on the server's interface for the test's port (headers and options only)."""
    proc = subprocess.Popen(ns_argv(lab.server, ["tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-B", "16384", "-s", "160", "-w", path,
                                                 f"tcp port {port}"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening" in line, f"tcpdump did not start: {line}"
        yield
        time.sleep(1.0)     # the last packets reach the file
    finally:
        proc.terminate()
        proc.wait(10)


def client_story(path: str, port: int) -> dict[tuple[int, int], dict]:
    """Per connection (client port, ISN), what the client sent on the wire: payload bytes before its first RST, and
    whether that RST carried MP_FASTCLOSE (RFC 8684 3.5: option 30, subtype 7)."""
    from scapy.all import IP, TCP, rdpcap

    story: dict[tuple[int, int], dict] = {}
    current: dict[int, dict] = {}
    for pkt in rdpcap(path):
        if TCP not in pkt or pkt[TCP].dport != port:
            continue
        tcp = pkt[TCP]
        if tcp.flags & 0x12 == 0x02:        # a SYN: a new connection (subflow ports are reused)
            current[tcp.sport] = story.setdefault((tcp.sport, tcp.seq),
                                                  {"bytes_before_rst": 0, "rst": False, "fastclose": False})
        s = current.get(tcp.sport)
        if s is None or s["rst"]:
            continue
        if tcp.flags & 0x04:
            s["rst"] = True
            s["fastclose"] = any(k == 30 and isinstance(v, bytes) and v and v[0] >> 4 == 7
                                 for k, v in tcp.options if isinstance(k, int))
        else:
            # From the headers' lengths: the capture keeps only the first bytes of each packet.
            s["bytes_before_rst"] += pkt[IP].len - pkt[IP].ihl * 4 - tcp.dataofs * 4
    return story


def download_server(payload: bytes):
    """A Server's `serve`: send payload and the DATA_FIN, meanwhile read what the client sends."""
    def serve(conn):
        sender = threading.Thread(target=lambda: _send_quietly(conn, payload, shut=True), daemon=True)
        sender.start()
        how, got = read_until_end(conn)
        sender.join(30)
        return how, got
    return serve


def partial_download_then_exit(lab, port: int, i: int, *, mptcp: bool) -> bytes:
    """The kernel selftest's app: read 1 KB of the download, write 1 KB, shut the write side and
    exit with the rest unread (odd runs wait 0.1 s first, so the whole download and the server's
    DATA_FIN can reach the app's socket). Returns the bytes it read."""
    app = socket_in_netns(lab.client, mptcp=mptcp)
    app.settimeout(30)
    app.connect((SERVER, port))
    first = b""
    while len(first) < REQUEST:
        first += app.recv(REQUEST - len(first))
    app.sendall(b"q" * REQUEST)
    app.shutdown(socket.SHUT_WR)
    if i % 2:
        time.sleep(0.1)
    app.close()                      # ~1 MB unread: the kernel resets the app's leg
    return first


def test_an_app_that_reads_part_of_a_download_and_exits_aborts_with_mp_fastclose_every_time(lab_up, tmp_path):
    """The kernel selftest's case: the server sends 1 MB and its DATA_FIN; the app reads 1 KB,
    writes 1 KB, shuts down its write side and exits with the rest unread (its kernel resets the
    app's leg). The server must see MP_FASTCLOSE, and the app's 1 KB, every time."""
    lab, r = lab_up
    payload = bytes(range(256)) * (DOWNLOAD // 256)
    outcomes = []
    pcap = str(tmp_path / "wire.pcap")
    with Server(lab, 9600, download_server(payload)) as srv, wire_capture(lab, 9600, pcap):
        for i in range(REPEAT):
            before = fastcloses(lab)
            # mptun must not end the app's leg cleanly while the app has not read it all.
            assert partial_download_then_exit(lab, 9600, i, mptcp=False) == payload[:REQUEST]
            srv.wait(i + 1)
            # The app's shutdown is a DATA_FIN, so the server may read an end before the
            # MP_FASTCLOSE arrives: its MIB, not its read, says whether the close was clean.
            outcomes.append(_wait_counter(lab, before))
    assert not srv.errors, srv.errors[:3]
    bad = [(k, n) for k, n in enumerate(outcomes) if n != 1]
    assert not bad, f"{len(bad)} of {REPEAT} runs did not end in one MP_FASTCLOSE at the server: {bad[:10]}"
    story = client_story(pcap, 9600)
    assert len(story) == REPEAT
    wrong = {p: s for p, s in story.items() if s != {"bytes_before_rst": REQUEST, "rst": True, "fastclose": True}}
    assert not wrong, (f"{len(wrong)} of {REPEAT}: the app's {REQUEST} bytes did not all go out before "
                       f"an MP_FASTCLOSE: {list(wrong.values())[:5]}; mptun: {r.status()['counters']}")
    assert r.status()["counters"].get("resets_from_app") == REPEAT


def test_an_app_that_aborts_an_upload_aborts_with_mp_fastclose_every_time(lab_up):
    lab, r = lab_up
    outcomes = []
    with Server(lab, 9601, lambda conn: read_until_end(conn)) as srv:
        for i in range(REPEAT):
            before = fastcloses(lab)
            app = socket_in_netns(lab.client, mptcp=False)
            app.settimeout(30)
            app.connect((SERVER, 9601))
            app.sendall(bytes(200_000 + 997 * i % 300_000))
            app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            app.close()                      # an abort: RST
            result = srv.wait(i + 1)
            assert result != "error", srv.errors[-1]
            how, got = result
            outcomes.append((how, _wait_counter(lab, before)))
    assert not srv.errors, srv.errors[:3]
    bad = [(k, o) for k, o in enumerate(outcomes) if o != ("reset", 1)]
    assert not bad, f"{len(bad)} of {REPEAT} runs did not end in one MP_FASTCLOSE: {bad[:10]}"


def test_what_the_app_wrote_just_before_its_abort_goes_out_before_the_mp_fastclose(lab_up, tmp_path):
    """The app's request is already written when it aborts: the kernel's MPTCP would have sent it
    at write time, so mptun sends it before its MP_FASTCLOSE. (Whether the server's app reads it
    is the server's race: Linux drops what its app has not read when MP_FASTCLOSE arrives.)"""
    lab, r = lab_up
    pcap = str(tmp_path / "wire.pcap")
    with Server(lab, 9602, lambda conn: read_until_end(conn)) as srv, wire_capture(lab, 9602, pcap):
        for i in range(REPEAT):
            app = socket_in_netns(lab.client, mptcp=False)
            app.settimeout(30)
            app.connect((SERVER, 9602))
            app.sendall(b"r" * REQUEST)
            app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            app.close()
            result = srv.wait(i + 1)
            assert result != "error" and result[0] == "reset", (result, srv.errors[-1:])
    story = client_story(pcap, 9602)
    assert len(story) == REPEAT
    wrong = [s for s in story.values() if s != {"bytes_before_rst": REQUEST, "rst": True, "fastclose": True}]
    assert not wrong, f"{len(wrong)} of {REPEAT} runs lost the app's last bytes or their MP_FASTCLOSE: {wrong[:5]}"


def test_the_servers_fastclose_resets_the_app_and_what_it_got_is_a_prefix(lab_up):
    """The server sends and aborts at once: RFC 8684 3.5 abandons the connection, so the app gets a
    reset, never a clean end, and what reached it before is exactly the start of what was sent
    (the kernel's MPTCP client also drops bytes it had not handed to its app yet)."""
    lab, r = lab_up
    payload = bytes(range(251)) * 800

    def serve(conn):
        conn.sendall(payload)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "sent"

    results = []
    with Server(lab, 9603, serve) as srv:
        for i in range(50):
            app = socket_in_netns(lab.client, mptcp=False)
            app.settimeout(30)
            try:
                app.connect((SERVER, 9603))
            except ConnectionResetError:
                # The server reset before mptun finished the app's handshake (mptun holds the
                # app's SYN until the upstream one is done): a reset all the same.
                srv.wait(i + 1)
                app.close()
                results.append(("reset", True))
                continue
            srv.wait(i + 1)
            how, got = read_until_end(app)
            app.close()
            results.append((how, got == payload[:len(got)]))
    assert all(ok for _, ok in results), "the app got bytes that are not a prefix of what was sent"
    assert {how for how, _ in results} == {"reset"}, results


def test_after_the_daemon_is_killed_mptun_down_resets_the_apps_it_left(lab_up):
    """kill -9 leaves apps with intercepted connections and no daemon: `mptun down` resets them,
    so they fail at once instead of hanging."""
    lab, r = lab_up
    with Server(lab, 9604, lambda conn: read_until_end(conn)):
        apps = []
        for _ in range(5):
            app = socket_in_netns(lab.client, mptcp=False)
            app.settimeout(30)
            app.connect((SERVER, 9604))
            app.sendall(b"hello")
            apps.append(app)
        pid = r.pid()
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        r.down()
        for app in apps:
            with pytest.raises(OSError):
                app.settimeout(5)
                app.recv(10)
            app.close()
    left = run(lab.client, ["ss", "-tnH", "state", "established", "src", "198.19.0.1"]).stdout.strip()
    assert not left, f"app sockets still established after down:\n{left}"


def _send_quietly(conn, data: bytes, shut: bool) -> None:
    try:
        conn.sendall(data)
        if shut:
            conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass        # the client aborted mid-transfer: expected


def _wait_counter(lab, before: int, timeout: float = 5.0) -> int:
    """How many MP_FASTCLOSEs the server counted since before (waiting briefly for a late one)."""
    deadline = time.monotonic() + timeout
    while True:
        moved = fastcloses(lab) - before
        if moved or time.monotonic() >= deadline:
            return moved
        time.sleep(0.01)


def test_the_kernels_own_mptcp_client_meets_the_same_bar(make_lab):
    """The yardstick: Linux's MPTCP client, app and all, in the same abort (with and without
    time for the whole download to arrive) makes the server count one MP_FASTCLOSE every time."""
    lab = make_lab([PathSpec.parse("")])
    counts = []
    with Server(lab, 9605, download_server(bytes(DOWNLOAD))) as srv:
        for i in range(40):
            before = fastcloses(lab)
            partial_download_then_exit(lab, 9605, i, mptcp=True)
            srv.wait(i + 1)
            counts.append(_wait_counter(lab, before))
    assert counts == [1] * 40, counts
