"""`mptun up`, `down` and `status` as commands in a lab's client namespace: `down` restores the
namespace exactly (also after SIGKILL of the daemon), and every wrong use is one line and a
non-zero exit.
"""

import os
import shutil
import signal

import pytest

from mptun.lab import PathSpec
from mptun.lab.netns import run
from mptun.lab.peer import run_client, start_peer
from tests.netns.mptun_helpers import SERVER, MptunRunner, diff, snapshot, wait_gone

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
    with start_peer(lab.server, "echo", 9001) as peer:
        assert run_client(lab.client, SERVER, 9001, mode="echo", nbytes=100_000, mptcp=False).ok
        assert peer.wait_connections(1)[0]["mptcp"] is True
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
    with start_peer(lab.server, "echo", 9001):
        assert run_client(lab.client, SERVER, 9001, mode="echo", nbytes=100_000, mptcp=False).ok
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
    with start_peer(lab.server, "echo", 9002) as peer:
        assert run_client(lab.client, SERVER, 9002, mode="echo", nbytes=10_000, mptcp=False).ok
        assert peer.wait_connections(1)[0]["mptcp"] is False


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
    one_line_error(r.cmd("up", "bare0"), "bare0", "no IPv4 address")
    before = snapshot(lab.client)
    one_line_error(r.cmd("up", "eth0", "bare0"), "bare0", "no IPv4 address")
    # A failed up changes nothing.
    assert not diff(before, snapshot(lab.client)), diff(before, snapshot(lab.client))


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
    with start_peer(lab.server, "echo", 9001) as peer:
        assert run_client(lab.client, SERVER, 9001, mode="echo", nbytes=10_000, mptcp=False).ok
        rec = peer.wait_connections(1)[0]
        assert rec["mptcp"] is False
        # Not from mptun's subflow port range: the app's own socket, routed as before.
        assert rec["peer"][0] == "198.18.1.2" and rec["peer"][1] < 61440
    assert r.status()["connections"] == []
