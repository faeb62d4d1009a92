"""The lab's real peer: a kernel-MPTCP server (or client) run inside a namespace, logging what the kernel saw.

Server: `python -m mptun.lab.peerserver --mode echo|sink|source|http --port P [--bind ADDR]... [--plain]
[--log FILE]`: one thread per connection; just before closing each, one JSON line goes to the log (bytes and
sha256 each way, mptcp or fallback, token, every subflow's addresses). Prints "ready" once listening; SIGTERM
ends it. Client: `--client --host H --port P --mode M` prints one JSON line per connection it made.

One module, over 500 lines because it is the program that runs inside a lab namespace, started as
`python -m mptun.lab.peerserver` for every peer (mptun.lab.peer starts it), and it imports only light
modules of mptun (mptcpinfo, netns), so each start stays quick. Its parts (the payload pattern, the
KernelView sampling, the modes, the HTTP handler, the client) all serve that one process.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.server
import json
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
import urllib.parse

from mptun.lab import mptcpinfo

MODES = ("echo", "sink", "source", "http")
CLIENT_MODES = ("echo", "sink", "source")
DEFAULT_SEED = 1
PATTERN_BLOCK = 65536
IO_CHUNK = 256 * 1024
# How often the kernel is asked about a connection while data flows: subflows that close
# before the end would otherwise never be seen.
SAMPLE_INTERVAL = 0.05
LISTEN_BACKLOG = 256


# ---- the deterministic payload ---------------------------------------------------------------


def pattern_blocks(nbytes: int, seed: int = DEFAULT_SEED):
    """The test payload: consecutive random.Random(seed).randbytes(65536) blocks, cut at nbytes."""
    rng = random.Random(seed)
    left = nbytes
    while left > 0:
        block = rng.randbytes(PATTERN_BLOCK)
        yield block[:left] if left < PATTERN_BLOCK else block
        left -= PATTERN_BLOCK


def pattern_sha256(nbytes: int, seed: int = DEFAULT_SEED) -> str:
    h = hashlib.sha256()
    for block in pattern_blocks(nbytes, seed):
        h.update(block)
    return h.hexdigest()


def write_pattern_file(path: str, nbytes: int, seed: int = DEFAULT_SEED) -> str:
    """Write the payload to path; returns its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for block in pattern_blocks(nbytes, seed):
            f.write(block)
            h.update(block)
    return h.hexdigest()


# ---- what the kernel says about one connection -----------------------------------------------


def _errno_name(code: int) -> str:
    # errno.errorcode maps 95 to its alias ENOTSUP; the kernel's name for it is EOPNOTSUPP.
    return "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode.get(code, str(code))


class KernelView:
    """Samples the kernel's view of one connection.

    Subflows are accumulated over all samples: the kernel forgets a subflow once it is closed,
    which can happen before the connection ends.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.protocol = mptcpinfo.socket_protocol(sock)
        self.samples = 0
        self.mptcp_at_start: bool | None = None
        self.fallback_seen = False
        self.fallback_errno: str | None = None
        self.token: int | None = None
        self.info: dict | None = None
        self.subflows: dict[tuple, dict] = {}
        self.subflows_last: int | None = None
        self.max_concurrent_subflows = 0
        self.error: str | None = None
        self._next_sample = 0.0

    def sample(self) -> None:
        self.samples += 1
        try:
            info = mptcpinfo.mptcp_info(self.sock)
        except OSError as e:
            if e.errno in mptcpinfo.FALLBACK_ERRNOS:
                self.fallback_seen = True
                self.fallback_errno = _errno_name(e.errno)
            elif e.errno not in (errno.EBADF, errno.ENOTCONN):
                self.error = f"MPTCP_INFO: {e}"
            self._note_start(False)
            return
        if info.fallback:
            self.fallback_seen = True
            self._note_start(False)
            return
        self._note_start(True)
        self.token = info.token
        self.info = info.as_dict()
        try:
            addrs = mptcpinfo.subflow_addrs(self.sock)
        except OSError as e:
            if e.errno in mptcpinfo.FALLBACK_ERRNOS:
                self.fallback_seen = True
            else:
                self.error = f"MPTCP_SUBFLOW_ADDRS: {e}"
            return
        # A closed subflow can stay listed with zeroed addresses (measured on 6.18 for the first
        # subflow once the connection is closing): it says nothing about where data came from.
        live = [a for a in addrs if not a.disconnected]
        self.subflows_last = len(live)
        self.max_concurrent_subflows = max(self.max_concurrent_subflows, len(live))
        for a in live:
            self.subflows.setdefault((a.local, a.remote),
                                     {"local": list(a.local), "remote": list(a.remote)})

    def maybe_sample(self) -> None:
        now = time.monotonic()
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_INTERVAL
            self.sample()

    def _note_start(self, mptcp: bool) -> None:
        if self.mptcp_at_start is None:
            self.mptcp_at_start = mptcp

    @property
    def mptcp(self) -> bool:
        return self.protocol == mptcpinfo.IPPROTO_MPTCP and not self.fallback_seen and self.samples > 0

    def as_dict(self) -> dict:
        return {
            "mptcp": self.mptcp,
            "socket_protocol": {mptcpinfo.IPPROTO_MPTCP: "mptcp", socket.IPPROTO_TCP: "tcp"}.get(
                self.protocol, self.protocol),
            "mptcp_at_start": self.mptcp_at_start,
            "fallback_errno": self.fallback_errno,
            "token": self.token,
            "token_hex": None if self.token is None else f"{self.token:08x}",  # as ss prints it
            "subflow_count": len(self.subflows),
            "subflows": list(self.subflows.values()),
            "subflows_at_close": self.subflows_last,
            "max_concurrent_subflows": self.max_concurrent_subflows,
            "mptcp_info": self.info,
            "kernel_samples": self.samples,
            "kernel_error": self.error,
        }


class Transfer:
    """Byte counts and running sha256 of both directions of one connection."""

    def __init__(self):
        self.bytes_in = 0
        self.bytes_out = 0
        self._sha_in = hashlib.sha256()
        self._sha_out = hashlib.sha256()

    def received(self, data) -> None:
        self.bytes_in += len(data)
        self._sha_in.update(data)

    def sent(self, data) -> None:
        self.bytes_out += len(data)
        self._sha_out.update(data)

    def as_dict(self) -> dict:
        return {"bytes_in": self.bytes_in, "sha256_in": self._sha_in.hexdigest(),
                "bytes_out": self.bytes_out, "sha256_out": self._sha_out.hexdigest()}


def _endpoint(addr) -> list:
    return [addr[0], addr[1]]


def _recv_until_eof(sock: socket.socket, transfer: Transfer, view: KernelView, on_data=None) -> None:
    buf = bytearray(IO_CHUNK)
    mem = memoryview(buf)
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            return
        chunk = mem[:n]
        transfer.received(chunk)
        if on_data is not None:
            on_data(chunk)
        view.maybe_sample()


# ---- server modes ----------------------------------------------------------------------------


def serve_sink(sock, transfer, view, cfg) -> None:
    _recv_until_eof(sock, transfer, view)


def serve_echo(sock, transfer, view, cfg) -> None:
    def echo(chunk):
        sock.sendall(chunk)
        transfer.sent(chunk)

    _recv_until_eof(sock, transfer, view, on_data=echo)
    sock.shutdown(socket.SHUT_WR)


def serve_source(sock, transfer, view, cfg) -> None:
    for block in pattern_blocks(cfg.nbytes, cfg.seed):
        sock.sendall(block)
        transfer.sent(block)
        view.maybe_sample()
    sock.shutdown(socket.SHUT_WR)
    # Wait for the client's close, so the log line is written only after it has everything.
    _recv_until_eof(sock, transfer, view)


class _HttpStub:
    """What http.server's handler needs of a 'server' object."""

    server_name = "mptun-peer"
    server_port = 0


class PeerHTTPHandler(http.server.SimpleHTTPRequestHandler):
    """GET of files (with Content-Length) and PUT uploads (answered with the upload's sha256)."""

    protocol_version = "HTTP/1.1"
    server_version = "mptun-peer/1"

    def __init__(self, request, client_address, server, *, directory, transfer, view, requests):
        self.transfer = transfer
        self.view = view
        self.requests = requests
        self._status = None
        self._body = None
        super().__init__(request, client_address, server, directory=directory)

    def handle_one_request(self):
        self.command = None
        self._status = None
        self._body = None
        super().handle_one_request()
        if self.command:  # None when the client closed or went idle instead of sending a request
            n, sha = self._body or (0, None)
            self.requests.append({"method": self.command, "path": self.path, "status": self._status,
                                  "bytes": n, "sha256": sha})

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass

    def send_response(self, code, message=None):
        self._status = int(code)
        super().send_response(code, message)

    def copyfile(self, source, outputfile):
        h = hashlib.sha256()
        n = 0
        while True:
            block = source.read(IO_CHUNK)
            if not block:
                break
            outputfile.write(block)
            self.transfer.sent(block)
            h.update(block)
            n += len(block)
            self.view.maybe_sample()
        self._body = (n, h.hexdigest())

    def _body_chunks(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            for _ in range(10_000_000):
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return
                left = size
                while left:
                    block = self.rfile.read(min(left, IO_CHUNK))
                    if not block:
                        raise ConnectionError("EOF inside a chunk")
                    left -= len(block)
                    yield block
                self.rfile.readline(1024)
            return
        left = int(self.headers["Content-Length"])
        while left:
            block = self.rfile.read(min(left, IO_CHUNK))
            if not block:
                raise ConnectionError(f"EOF with {left} body bytes missing")
            left -= len(block)
            yield block

    def do_PUT(self):
        # "Expect: 100-continue" (curl sends it for large uploads) is answered by http.server itself.
        if "Content-Length" not in self.headers and "chunked" not in self.headers.get(
                "Transfer-Encoding", "").lower():
            self.send_error(411, "Length Required")
            return
        target = self.translate_path(urllib.parse.urlsplit(self.path).path)
        if target.endswith("/") or os.path.isdir(target):
            self.send_error(400, "PUT needs a file name")
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.part-{threading.get_ident()}"
        h = hashlib.sha256()
        n = 0
        with open(tmp, "wb") as f:
            for block in self._body_chunks():
                f.write(block)
                self.transfer.received(block)
                h.update(block)
                n += len(block)
                self.view.maybe_sample()
        os.replace(tmp, target)
        body = (h.hexdigest() + "\n").encode()
        self.send_response(201)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._body = (n, h.hexdigest())


def serve_http(sock, transfer, view, cfg, requests) -> None:
    PeerHTTPHandler(sock, sock.getpeername(), _HttpStub(), directory=cfg.directory,
                    transfer=transfer, view=view, requests=requests)


# ---- the server ------------------------------------------------------------------------------


class JsonLog:
    def __init__(self, path: str | None):
        self._lock = threading.Lock()
        self._file = open(path, "a", buffering=1) if path else None

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        line = json.dumps(record, sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def handle_connection(conn: socket.socket, peer, cfg, log: JsonLog) -> None:
    started = time.monotonic()
    transfer = Transfer()
    requests: list[dict] = []
    error = None
    view = None
    try:
        conn.settimeout(cfg.idle_timeout)
        view = KernelView(conn)
        view.sample()
        if cfg.mode == "http":
            serve_http(conn, transfer, view, cfg, requests)
        else:
            {"sink": serve_sink, "echo": serve_echo, "source": serve_source}[cfg.mode](
                conn, transfer, view, cfg)
    except Exception as e:  # recorded in the log line: a test must see why, not a silent thread
        error = f"{type(e).__name__}: {e}"
    try:
        if view is not None:
            view.sample()
        local = conn.getsockname()
    except OSError:
        local = ("", 0)
    record = {
        "mode": cfg.mode,
        "plain_listener": cfg.plain,
        "peer": _endpoint(peer),
        "local": _endpoint(local),
        "family": 6 if conn.family == socket.AF_INET6 else 4,
        **transfer.as_dict(),
        **(view.as_dict() if view is not None else {"mptcp": None}),
        "error": error,
        "duration_s": round(time.monotonic() - started, 6),
        "closed_at": time.time(),
    }
    if cfg.mode == "http":
        record["requests"] = requests
    log.write(record)
    conn.close()


def _listen(family: int, address: str, port: int, plain: bool) -> socket.socket:
    proto = 0 if plain else mptcpinfo.IPPROTO_MPTCP
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # A separate IPv4 listener takes IPv4: no v4-mapped addresses in the log.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def run_server(cfg) -> int:
    binds = cfg.bind or ["0.0.0.0", "::"]
    listeners = [_listen(_family_of(a), a, cfg.port, cfg.plain) for a in binds]
    log = JsonLog(cfg.log)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sel = selectors.DefaultSelector()
    for sock in listeners:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    workers: set[threading.Thread] = set()
    print("ready", flush=True)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            try:
                conn, peer = key.fileobj.accept()
            except (BlockingIOError, InterruptedError):
                continue
            conn.setblocking(True)
            t = threading.Thread(target=handle_connection, args=(conn, peer, cfg, log), daemon=True)
            t.start()
            workers.add(t)
        workers = {t for t in workers if t.is_alive()}
    for sock in listeners:
        sel.unregister(sock)
        sock.close()
    deadline = time.monotonic() + cfg.grace
    for t in list(workers):
        t.join(max(0.0, deadline - time.monotonic()))
    log.close()
    return 0


# ---- the client ------------------------------------------------------------------------------


def run_one_client(cfg, index: int) -> dict:
    family = _family_of(cfg.host)
    proto = 0 if cfg.plain else mptcpinfo.IPPROTO_MPTCP
    transfer = Transfer()
    record: dict = {"mode": cfg.mode, "index": index, "error": None}
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    view = None
    try:
        sock.settimeout(cfg.timeout)
        if cfg.source_address:
            sock.bind((cfg.source_address, 0))
        sock.connect((cfg.host, cfg.port))
        record["local"] = _endpoint(sock.getsockname())
        record["peer"] = _endpoint(sock.getpeername())
        view = KernelView(sock)
        view.sample()
        if cfg.mode in ("sink", "echo"):
            # The server sinks or echoes what we send: send the pattern, then half-close.
            sender_error: list[BaseException] = []

            def send_all():
                try:
                    for block in pattern_blocks(cfg.nbytes, cfg.seed):
                        sock.sendall(block)
                        transfer.sent(block)
                    sock.shutdown(socket.SHUT_WR)
                except BaseException as e:  # reported with the result
                    sender_error.append(e)

            sender = threading.Thread(target=send_all, daemon=True)
            sender.start()
            _recv_until_eof(sock, transfer, view)
            sender.join(cfg.timeout)
            if sender.is_alive():
                raise TimeoutError("sender still running after the server closed")
            if sender_error:
                raise sender_error[0]
        else:
            # source: only read. No early half-close: a DATA_FIN sent at once would stop the
            # client's path manager from opening more subflows.
            _recv_until_eof(sock, transfer, view)
        view.sample()
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
    finally:
        sock.close()
    record.update(transfer.as_dict())
    if view is not None:
        record.update(view.as_dict())
    return record


def run_client(cfg) -> int:
    results: list[dict | None] = [None] * cfg.count
    lock = threading.Lock()

    def one(i):
        r = run_one_client(cfg, i)
        with lock:
            results[i] = r

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(cfg.count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + cfg.timeout + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    failed = False
    for i, r in enumerate(results):
        if r is None:
            r = {"mode": cfg.mode, "index": i, "error": "TimeoutError: client thread did not finish"}
        failed |= r["error"] is not None
        print(json.dumps(r, sort_keys=True), flush=True)
    return 1 if failed else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m mptun.lab.peerserver", description=__doc__.split("\n")[0])
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--plain", action="store_true", help="plain TCP socket instead of IPPROTO_MPTCP")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the pattern payload")
    p.add_argument("--nbytes", type=int, default=0, help="bytes to send (source server; client)")
    # server
    p.add_argument("--bind", action="append", help="listen address (repeatable); default 0.0.0.0 and ::")
    p.add_argument("--directory", default=".", help="http: directory served and written by PUT")
    p.add_argument("--log", help="JSON-lines log, one line per closed connection")
    p.add_argument("--idle-timeout", type=float, default=120.0, help="per-connection socket timeout")
    p.add_argument("--grace", type=float, default=3.0, help="seconds to let connections finish on SIGTERM")
    # client
    p.add_argument("--client", action="store_true", help="be the client instead of the server")
    p.add_argument("--host", help="client: server address")
    p.add_argument("--count", type=int, default=1, help="client: concurrent connections")
    p.add_argument("--source-address", help="client: bind to this local address")
    p.add_argument("--timeout", type=float, default=60.0, help="client: socket timeout")
    cfg = p.parse_args(argv)
    if cfg.client:
        if not cfg.host:
            p.error("--client needs --host")
        if cfg.mode not in CLIENT_MODES:
            p.error(f"--client supports modes {', '.join(CLIENT_MODES)}")
    elif cfg.port <= 0:
        p.error("--port must be > 0")
    return cfg


def main(argv=None) -> int:
    cfg = parse_args(argv)
    return run_client(cfg) if cfg.client else run_server(cfg)


if __name__ == "__main__":
    sys.exit(main())
