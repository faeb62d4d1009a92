"""The lab-facing API of the real MPTCP peer: start it in a namespace, run clients, read what the kernel saw.

`start_peer` runs mptun.lab.peerserver inside a namespace and returns a PeerServer whose
`connections()` are the server's JSON log lines (one per closed connection). `run_client`,
`run_clients`, `curl_get` and `curl_put` run inside another namespace and return what arrived.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import mptun
from mptun.lab.mptcpinfo import IPPROTO_MPTCP
from mptun.lab.netns import LabError, ns_argv
from mptun.lab.peerserver import DEFAULT_SEED, MODES, pattern_sha256, write_pattern_file

__all__ = [
    "ClientResult", "CurlResult", "PeerServer", "connect_in_netns", "curl_get", "curl_put",
    "pattern_sha256", "run_client", "run_clients", "sha256_file", "socket_in_netns", "start_peer",
    "write_pattern_file",
]

# The package root, so `python -m mptun.lab.peerserver` imports this tree even when it is not installed.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mptun.__file__)))


def _python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _peer_argv(netns: str | None, args: Sequence[str], python: str) -> list[str]:
    return ns_argv(netns, [python, "-m", "mptun.lab.peerserver", *args])


class PeerServer:
    """A running peerserver process (the Popen is of `ip netns exec`, which execs into Python)."""

    def __init__(self, netns: str, mode: str, port: int, proc: subprocess.Popen, log_path: str,
                 stderr_path: str, own_log: bool):
        self.netns = netns
        self.mode = mode
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self._stderr_path = stderr_path
        self._own_log = own_log
        self._final: list[dict] | None = None
        self._final_stderr: str | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def connections(self) -> list[dict]:
        """One dict per connection the server has closed so far (see peerserver for the fields)."""
        if self._final is not None:
            return list(self._final)
        try:
            with open(self.log_path) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):  # a line still being written is read next time
                records.append(json.loads(line))
        return records

    def wait_connections(self, n: int, timeout: float = 30.0) -> list[dict]:
        """Wait until at least n connections are logged; raises LabError after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.connections()
            if len(records) >= n:
                return records
            if self._final is not None or not self.running():
                raise LabError(f"peer in {self.netns} exited with {len(records)}/{n} connections logged; "
                               f"stderr: {self.stderr_text()[-2000:]}")
            if time.monotonic() >= deadline:
                raise LabError(f"peer in {self.netns}: {len(records)}/{n} connections logged after "
                               f"{timeout}s; stderr: {self.stderr_text()[-2000:]}")
            time.sleep(0.05)

    def stderr_text(self) -> str:
        if self._final_stderr is not None:
            return self._final_stderr
        try:
            with open(self._stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by pid (SIGKILL if it lingers); returns the exit status. Idempotent."""
        if self.returncode is None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            self.returncode = self.proc.returncode
            if self.proc.stdout:
                self.proc.stdout.close()
            self._final = self.connections()
            self._final_stderr = self.stderr_text()
            for path in [self._stderr_path] + ([self.log_path] if self._own_log else []):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        return self.returncode

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_ready(proc: subprocess.Popen, timeout: float) -> str:
    """What the process printed up to its first newline, or up to timeout/exit."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    got = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if sel.select(timeout=min(left, 0.2)):
                chunk = os.read(fd, 4096)
                if not chunk:
                    break  # the process closed stdout: it has exited
                got += chunk
    return got.decode(errors="replace")


def start_peer(netns: str, mode: str, port: int, *, plain: bool = False,
               bind: str | Sequence[str] | None = None, directory: str | None = None,
               nbytes: int | None = None, log_path: str | None = None, seed: int = DEFAULT_SEED,
               idle_timeout: float = 120.0, ready_timeout: float = 20.0,
               python: str = sys.executable) -> PeerServer:
    """Start a peerserver in netns and wait for it to listen.

    mode: echo | sink | source | http. plain=True listens with IPPROTO_TCP (fallback tests).
    bind: address(es) to listen on; default 0.0.0.0 and :: (v6only). directory: served by http
    (and written by PUT). nbytes: what source sends. log_path: default a temporary file that
    stop() removes (connections() still answers after stop()).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "http" and directory is None:
        raise ValueError("http mode needs directory=")
    if mode == "source" and nbytes is None:
        raise ValueError("source mode needs nbytes=")
    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix=f"mptun-peer-{netns}-", suffix=".jsonl")
        os.close(fd)
    fd, stderr_path = tempfile.mkstemp(prefix=f"mptun-peer-{netns}-", suffix=".stderr")
    os.close(fd)
    args = ["--mode", mode, "--port", str(port), "--log", log_path, "--seed", str(seed),
            "--idle-timeout", str(idle_timeout)]
    if plain:
        args.append("--plain")
    for address in [bind] if isinstance(bind, str) else (bind or []):
        args += ["--bind", address]
    if directory is not None:
        args += ["--directory", directory]
    if nbytes is not None:
        args += ["--nbytes", str(nbytes)]
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(_peer_argv(netns, args, python), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stderr, env=_python_env())
    server = PeerServer(netns, mode, port, proc, log_path, stderr_path, own_log=own_log)
    first_line = _wait_ready(proc, ready_timeout)
    if first_line.strip() != "ready":
        stderr_text = server.stderr_text()
        server.stop()
        raise LabError(f"peer {mode} on port {port} in {netns} did not become ready "
                       f"(stdout {first_line!r}); stderr: {stderr_text[-2000:]}")
    return server


@dataclass(frozen=True)
class ClientResult:
    """One client connection as the client saw it (and what its own kernel said)."""

    mode: str
    error: str | None
    bytes_out: int = 0
    sha256_out: str = ""
    bytes_in: int = 0
    sha256_in: str = ""
    local: tuple | None = None
    peer: tuple | None = None
    mptcp: bool | None = None
    token: int | None = None
    subflows: list = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_record(cls, r: dict) -> ClientResult:
        return cls(mode=r.get("mode", ""), error=r.get("error"), bytes_out=r.get("bytes_out", 0),
                   sha256_out=r.get("sha256_out", ""), bytes_in=r.get("bytes_in", 0),
                   sha256_in=r.get("sha256_in", ""),
                   local=tuple(r["local"]) if r.get("local") else None,
                   peer=tuple(r["peer"]) if r.get("peer") else None,
                   mptcp=r.get("mptcp"), token=r.get("token"), subflows=r.get("subflows", []), raw=r)


def run_clients(netns: str, host: str, port: int, *, count: int, mode: str, nbytes: int = 0,
                mptcp: bool = True, seed: int = DEFAULT_SEED, source_address: str | None = None,
                timeout: float = 60.0, python: str = sys.executable) -> list[ClientResult]:
    """count concurrent connections from netns to host:port, in one process; one result each.

    mode names the server's mode: sink (we send nbytes of the pattern), source (we read until
    EOF), echo (we send nbytes and read them back). mptcp=False uses a plain TCP socket.
    """
    args = ["--client", "--host", host, "--port", str(port), "--mode", mode, "--nbytes", str(nbytes),
            "--seed", str(seed), "--count", str(count), "--timeout", str(timeout)]
    if not mptcp:
        args.append("--plain")
    if source_address:
        args += ["--source-address", source_address]
    argv = _peer_argv(netns, args, python)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                              stdin=subprocess.DEVNULL, env=_python_env())
    except subprocess.TimeoutExpired as e:
        raise LabError(f"client timed out after {timeout + 30}s: {' '.join(argv)}") from e
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if len(records) != count:
        raise LabError(f"client exit {proc.returncode}, {len(records)}/{count} results: "
                       f"{proc.stderr.strip()[-2000:]}")
    return [ClientResult.from_record(r) for r in sorted(records, key=lambda r: r["index"])]


def run_client(netns: str, host: str, port: int, *, mode: str, nbytes: int = 0, mptcp: bool = True,
               seed: int = DEFAULT_SEED, source_address: str | None = None, timeout: float = 60.0,
               python: str = sys.executable) -> ClientResult:
    """One connection from netns to host:port; see run_clients."""
    return run_clients(netns, host, port, count=1, mode=mode, nbytes=nbytes, mptcp=mptcp, seed=seed,
                       source_address=source_address, timeout=timeout, python=python)[0]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CurlResult:
    returncode: int
    stdout: str
    stderr: str
    size: int | None = None  # of the downloaded file
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _curl(netns: str, curl_args: Sequence[str], mptcp: bool, timeout: float) -> subprocess.CompletedProcess:
    # -g: IPv6 literals in URLs are brackets, which curl would otherwise read as a glob.
    argv = ["curl", "-sS", "--fail", "-g", "--max-time", str(timeout), *curl_args]
    if mptcp:
        argv = ["mptcpize", "run", *argv]
    try:
        return subprocess.run(ns_argv(netns, argv), capture_output=True, text=True,
                              timeout=timeout + 15, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"curl timed out: {' '.join(argv)}") from e


def curl_get(netns: str, url: str, out_path: str, *, mptcp: bool = True,
             timeout: float = 60.0) -> CurlResult:
    """GET url from inside netns into out_path (`mptcpize run curl` when mptcp)."""
    proc = _curl(netns, ["-o", out_path, url], mptcp, timeout)
    size = sha = None
    if proc.returncode == 0 and os.path.exists(out_path):
        size, sha = os.path.getsize(out_path), sha256_file(out_path)
    return CurlResult(proc.returncode, proc.stdout, proc.stderr, size, sha)


def curl_put(netns: str, url: str, in_path: str, *, mptcp: bool = True,
             timeout: float = 60.0) -> CurlResult:
    """PUT in_path to url from inside netns; the peer answers with the sha256 it stored (stdout)."""
    proc = _curl(netns, ["-T", in_path, url], mptcp, timeout)
    return CurlResult(proc.returncode, proc.stdout, proc.stderr)


def socket_in_netns(netns: str, family: int = socket.AF_INET, *, mptcp: bool = True) -> socket.socket:
    """A stream socket that lives in netns, usable from this process (so a test can hold it open).

    setns() moves only the calling thread, so the socket is made in a short-lived thread; a socket
    keeps the namespace it was created in.
    """
    from mptun.netcfg.netns import entered  # here, not at the top: mptun.netcfg loads pyroute2

    result: list = []

    def make():
        try:
            with entered(netns):
                result.append(socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0))
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    t = threading.Thread(target=make)
    t.start()
    t.join(10)
    if not result:
        raise LabError(f"could not make a socket in {netns}: setns thread did not finish")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def connect_in_netns(netns: str, host: str, port: int, *, mptcp: bool = True,
                     timeout: float = 10.0) -> socket.socket:
    """A socket connected from netns to host:port (MPTCP unless mptcp=False); the caller closes it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket_in_netns(netns, family, mptcp=mptcp)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
