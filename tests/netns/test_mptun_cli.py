"""`mptun up`, `down` and `status` as commands in a lab's client namespace: `down` restores the
namespace exactly (also after SIGKILL of the daemon), and every wrong use is one line and a
non-zero exit.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from mptun.lab import PathSpec
from mptun.lab.netns import ns_argv, run
from mptun.lab.peer import socket_in_netns, start_peer
from tests.netns.mptun_helpers import SERVER, MptunRunner, diff, echo_once, env, snapshot, wait_gone

pytestmark = pytest.mark.netns


@pytest.fixture
def lab_runner(make_lab, tmp_path):
    lab = make_lab([PathSpec()])
    r = MptunRunner(lab.client, str(tmp_path / "run"))
    yield lab, r
    r.stop()


def one_line_error(proc, *words):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mptun: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_down_restores_everything(lab_runner):
    lab, r = lab_runner
    before = snapshot(lab.client)
    r.up("eth0")
    assert "mptun0" in run(lab.client, ["ip", "link"]).stdout
    assert echo_once(lab, 9001, 100_000)["mptcp"] is True
    pid = r.pid()
    out = r.down()
    assert "down" in out.stdout
    assert wait_gone(pid)
    assert not diff(before, snapshot(lab.client)), diff(before, snapshot(lab.client))
    assert not os.listdir(r.run_dir) or os.listdir(r.run_dir) == ["mptun0.log"]


def test_sigkill_then_down_leaves_nothing_behind(lab_runner):
    lab, r = lab_runner
    before = snapshot(lab.client)
    r.up("eth0")
    echo_once(lab, 9001, 100_000)
    pid = r.pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    # The TUN went with the daemon; its rules and the tc capture did not.
    assert diff(before, snapshot(lab.client))
    st = r.cmd("status")
    one_line_error(st, "not running")
    r.down()
    assert not diff(before, snapshot(lab.client)), diff(before, snapshot(lab.client))
    # Traffic goes direct again: a plain TCP connection works, as plain TCP.
    assert echo_once(lab, 9002, 10_000)["mptcp"] is False


def test_not_root(lab_runner):
    lab, r = lab_runner
    # The venv's interpreter may not be readable by nobody; the system one is, and the
    # root check comes before anything that needs the venv's packages.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that nobody may run")
    for cmd in (["up", "eth0"], ["down"], ["status"]):
        proc = r.cmd(*cmd, python=python, prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
        one_line_error(proc, "needs root")


def test_unknown_interface(lab_runner):
    lab, r = lab_runner
    one_line_error(r.cmd("up", "nosuch0"), "unknown interface", "nosuch0")
    assert r.pid() is None


def test_interface_without_address(lab_runner):
    lab, r = lab_runner
    run(lab.client, ["ip", "link", "add", "bare0", "type", "veth", "peer", "name", "bare1"])
    run(lab.client, ["ip", "link", "set", "bare0", "up"])
    run(lab.client, ["ip", "link", "set", "bare1", "up"])
    before = snapshot(lab.client)
    one_line_error(r.cmd("up", "bare0"), "bare0", "no IPv4 address")
    # A failed up changes nothing.
    assert not diff(before, snapshot(lab.client)), diff(before, snapshot(lab.client))
    # Beside a usable interface it is accepted, and waits unusable until it gets an address.
    r.up("eth0", "bare0")
    paths = {p["name"]: p for p in r.status()["paths"]}
    assert paths["eth0"]["usable"] and not paths["bare0"]["usable"], paths
    assert echo_once(lab, 9002, 10_000)["mptcp"]
    r.down()


def test_up_twice_and_down_twice(lab_runner):
    lab, r = lab_runner
    r.up("eth0")
    one_line_error(r.cmd("up", "eth0"), "already up")
    assert r.status()["pid"] == r.pid()
    r.down()
    one_line_error(r.cmd("down"), "not up")
    one_line_error(r.cmd("status"), "not up")


def test_excluded_destination_goes_direct(lab_runner):
    lab, r = lab_runner
    r.up("eth0", extra=("--exclude", "198.18.100.0/24"))
    rec = echo_once(lab, 9001, 10_000)
    assert rec["mptcp"] is False
    # Not from mptun's subflow port range: the app's own socket, routed as before.
    assert rec["peer"][0] == "198.18.1.2" and rec["peer"][1] < 61440
    assert r.status()["connections"] == []


def test_sigterm_with_a_lingering_connection_restores_everything(lab_runner):
    # The daemon's own SIGTERM path (no `mptun down`) with a finished connection still lingering.
    lab, r = lab_runner
    before = snapshot(lab.client)
    r.up("eth0")
    echo_once(lab, 9001, 10_000)
    assert r.status()["connections"], "the finished connection should still linger"
    pid = r.pid()
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid, 20)
    assert not diff(before, snapshot(lab.client)), diff(before, snapshot(lab.client))
    assert "Traceback" not in r.log(), r.log()[-3000:]


def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True when s reads EOF or a reset within timeout (bytes before that are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(4096):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_down_resets_open_connections_on_both_sides(lab_runner):
    lab, r = lab_runner
    r.up("eth0")
    lst = socket_in_netns(lab.server, mptcp=True)
    app = socket_in_netns(lab.client, mptcp=False)
    srv = None
    try:
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((SERVER, 9301))
        lst.listen(4)
        lst.settimeout(10)
        app.settimeout(10)
        app.connect((SERVER, 9301))
        srv, _ = lst.accept()
        app.sendall(b"hello")
        srv.settimeout(10)
        assert srv.recv(100) == b"hello"
        r.down()
        # Neither end is left hanging: the app's socket and the server's both see the end
        # (bounded waits, far longer than it takes).
        assert _closed_by_peer(app, 5.0), "the app was not told its connection is gone"
        assert _closed_by_peer(srv, 5.0), "the server was not told the connection is gone"
    finally:
        for s in (app, srv, lst):
            if s is not None:
                s.close()


def _daemons(run_dir: str) -> list[int]:
    """Pids of the mptun daemons of this run directory."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mptun.daemon" in argv and run_dir.encode() in argv:
            pids.append(int(d))
    return [p for p in pids if not wait_gone(p, 0)]


def test_down_while_up_is_starting(lab_runner):
    # `down` soon after `up` started must stop the daemon, not report success while it keeps running.
    lab, r = lab_runner
    before = snapshot(lab.client)
    log = os.path.join(r.run_dir, "mptun0.log")
    for attempt in range(4):
        up = subprocess.Popen(ns_argv(lab.client, [sys.executable, "-m", "mptun", "up", "eth0", "--tun", r.tun,
                                                   "--run-dir", r.run_dir]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                              stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(log) and up.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)   # `up` has started (it creates the log first)
            time.sleep(0.2)
            dn = r.cmd("down")
            out, err = up.communicate(timeout=90)
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
        assert up.returncode == 0, err
        assert dn.returncode == 0, (dn.stdout, dn.stderr)
        left = [p for p in _daemons(r.run_dir) if not wait_gone(p, 20)]
        assert not left, f"attempt {attempt}: the daemon survived `down`: {left}\n{r.log()[-2000:]}"
        assert not diff(before, snapshot(lab.client)), diff(before, snapshot(lab.client))
        assert r.pid() is None


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fd_limit_does_not_make_the_daemon_spin(lab_runner):
    # At its open file limit accept() fails with EMFILE while the connection stays queued: the
    # daemon must back off, not spin on a readable listener logging a warning each time.
    if shutil.which("prlimit") is None:
        pytest.skip("no prlimit")
    lab, r = lab_runner
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = "1024" if hard == resource.RLIM_INFINITY or hard > 1024 else str(max(64, hard // 2))
    r.cmd("up", "eth0", prefix=("prlimit", f"--nofile={low}:{'unlimited' if hard == resource.RLIM_INFINITY else hard}"),
          check=True)
    pid = r.pid()
    soft, hard = _nofile(pid)
    assert soft == hard or hard == "unlimited", "the daemon did not raise its soft fd limit to the hard one"
    # Room for the 20 subflow sockets and half of the app legs: the other accepts get EMFILE.
    n_fds = len(os.listdir(f"/proc/{pid}/fd"))
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={n_fds + 30}:{n_fds + 30}"], check=True)
    socks = []
    log = os.path.join(r.run_dir, "mptun0.log")
    try:
        with start_peer(lab.server, "echo", 9001):
            for _ in range(20):
                s = socket_in_netns(lab.client, mptcp=False)
                s.setblocking(False)
                try:
                    s.connect((SERVER, 9001))
                except BlockingIOError:
                    pass
                socks.append(s)
            time.sleep(1.5)
            # A `status` now queues on the control socket, which cannot accept it either.
            st = subprocess.Popen(ns_argv(lab.client, [sys.executable, "-m", "mptun", "status", "--tun", r.tun,
                                                       "--run-dir", r.run_dir]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
            try:
                time.sleep(0.5)
                size0, cpu0, t0 = os.path.getsize(log), _cpu_seconds(pid), time.monotonic()
                time.sleep(2.0)
                size1, cpu1, t1 = os.path.getsize(log), _cpu_seconds(pid), time.monotonic()
            finally:
                st.kill()
                st.wait()
            share = (cpu1 - cpu0) / (t1 - t0)
            assert share < 0.5, f"the daemon used {share:.0%} of a CPU at its fd limit"
            assert size1 - size0 < 20_000, f"the log grew {size1 - size0} bytes in 2 s"
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    assert r.status()["pid"] == pid     # the control socket still answers once fds are free again


def _nofile(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return line.split()[3], line.split()[4]
