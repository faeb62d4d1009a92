"""The lab itself: addressing, rate, delay, loss and teardown do what they say.

Rates and delays are checked only against their physical bounds (a shaped path
never runs above its rate, a delayed path never answers faster than its delay):
a busy machine can only make things slower, so these cannot flake.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mptun.lab import Lab, LabError, PathSpec, teardown
from mptun.lab.netns import list_namespaces, run, wait_listening
from mptun.lab.spec import Direction
from mptun.lab.topology import state_path
from tests.conftest import require_commands
from tests.netns.conftest import lab_name

pytestmark = pytest.mark.netns


def ping(lab, ns, dst, count, interval="0.01", source=None, v6=False):
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "1"]
    if v6:
        argv.append("-6")
    if source:
        argv += ["-I", source]
    out = run(ns, argv + [dst], check=False, timeout=count * 1.5 + 20).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out)
    return int(m.group(1)), int(m.group(2)), (float(rtt.group(1)) if rtt else None)


def iperf3(lab, seconds=3, reverse=False, bind=None):
    """Goodput in bit/s measured by the iperf3 receiver over one TCP flow."""
    require_commands("iperf3")
    srv = subprocess.Popen(["ip", "netns", "exec", lab.server, "iperf3", "-s", "-1", "-B", lab.server_addr],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(lab.server, 5201)
        argv = ["iperf3", "-c", lab.server_addr, "-t", str(seconds), "-J"]
        if reverse:
            argv.append("-R")
        if bind:
            argv += ["-B", bind]
        proc = run(lab.client, argv, check=False, timeout=seconds + 30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        return result["end"]["sum_received"]["bits_per_second"], result["end"]["sum_received"]["bytes"]
    finally:
        srv.kill()
        srv.wait()


def test_every_path_reaches_the_server_v4_and_v6(make_lab):
    lab = make_lab([PathSpec(), PathSpec(), PathSpec()], source_routing=True)
    for i in range(3):
        for v6 in (False, True):
            dst = lab.server_addr6 if v6 else lab.server_addr
            sent, received, _ = ping(lab, lab.client, dst, 3, source=lab.client_addr(i, v6), v6=v6)
            assert received == sent == 3
    # Source routing sends each address out of its own path: the router saw
    # ping traffic arrive on every path interface.
    for i in range(3):
        assert lab.path_counters(i)["up_packets"] >= 6


@pytest.mark.parametrize("reverse", [False, True], ids=["upload", "download"])
def test_rate_never_exceeded(make_lab, reverse):
    rate = 40.0
    lab = make_lab([PathSpec.symmetric(rate_mbit=rate)])
    bps, nbytes = iperf3(lab, seconds=3, reverse=reverse)
    assert nbytes > 0
    # Goodput is below the wire rate (headers); more than 3% above it means the shaper leaks.
    assert bps <= rate * 1e6 * 1.03, f"{bps / 1e6:.1f} Mbit/s through a {rate} Mbit/s path"


def test_asymmetric_rates_apply_per_direction(make_lab):
    lab = make_lab([PathSpec(up=Direction(rate_mbit=10), down=Direction(rate_mbit=60))])
    up, _ = iperf3(lab, seconds=2)
    down, _ = iperf3(lab, seconds=2, reverse=True)
    assert up <= 10e6 * 1.03
    assert down <= 60e6 * 1.03


def test_zero_loss_loses_nothing(make_lab):
    lab = make_lab([PathSpec.symmetric(rate_mbit=100, loss_pct=0)])
    sent, received, _ = ping(lab, lab.client, lab.server_addr, 300, interval="0.002")
    assert received == sent == 300
    assert lab.loss_counters() == {}


def test_loss_drops_in_both_directions(make_lab):
    lab = make_lab([PathSpec(), PathSpec.symmetric(loss_pct=20)], source_routing=True)
    sent, received, _ = ping(lab, lab.client, lab.server_addr, 400, interval="0.002",
                             source=lab.client_addr(1))
    counters = lab.loss_counters()
    assert counters["p1 up"] > 0 and counters["p1 down"] > 0
    assert sent - received == counters["p1 up"] + counters["p1 down"]
    # 1 - 0.8^2 = 36% expected; the bounds are many standard deviations wide (n = 400).
    assert 0.20 < (sent - received) / sent < 0.52
    # The other path is untouched.
    sent0, received0, _ = ping(lab, lab.client, lab.server_addr, 100, interval="0.002",
                               source=lab.client_addr(0))
    assert received0 == sent0


def test_delay_rtt_never_below_configured(make_lab):
    lab = make_lab([PathSpec.symmetric(delay_ms=15), PathSpec(up=Direction(delay_ms=5), down=Direction(delay_ms=20))],
                   source_routing=True)
    for i, floor_ms in ((0, 30.0), (1, 25.0)):
        sent, received, rtt_min = ping(lab, lab.client, lab.server_addr, 10, interval="0.05",
                                       source=lab.client_addr(i))
        assert received == sent
        assert rtt_min >= floor_ms, f"path {i}: min RTT {rtt_min} ms < {floor_ms} ms configured"


def test_delay_line_carries_tcp_intact(make_lab):
    lab = make_lab([PathSpec.symmetric(rate_mbit=200, delay_ms=5)])
    bps, nbytes = iperf3(lab, seconds=2)
    assert nbytes > 0 and bps <= 200e6 * 1.03
    stats = lab.delayline_stats()
    assert stats and all(s is not None for s in stats)


def _lab_leftovers(name):
    namespaces = list_namespaces(prefix=f"{name}-")
    links = run(None, ["ip", "-o", "link", "show"]).stdout
    return namespaces, os.path.exists(state_path(name)), links


def test_teardown_leaves_nothing(make_lab):
    lab = make_lab([PathSpec.symmetric(delay_ms=2), PathSpec.symmetric(rate_mbit=10, loss_pct=1)])
    pids = [p["pid"] for p in lab.state.pids]
    files = [f for p in lab.state.pids for f in p["files"]]
    assert pids and all(os.path.exists(f"/proc/{p}") for p in pids)
    assert lab.transient_links
    lab.down()
    namespaces, has_state, links = _lab_leftovers(lab.name)
    assert namespaces == [] and not has_state
    assert not any(os.path.exists(f"/proc/{p}") and _is_zombie_free(p) for p in pids)
    assert not any(f": {name}@" in links or f": {name}:" in links for name in lab.transient_links)
    assert not any(os.path.exists(f) for f in files)
    lab.down()  # twice is fine


def test_namespaces_that_are_not_the_labs_are_never_touched():
    """A namespace with a lab-like name that the lab did not make survives up() and teardown()."""
    from tests.conftest import require_root
    require_root()
    name = lab_name()
    foreign = f"{name}-rtr"
    run(None, ["ip", "netns", "add", foreign])
    sleeper = subprocess.Popen(["ip", "netns", "exec", foreign, "sleep", "60"])
    try:
        with pytest.raises(LabError, match="not this lab's"):
            Lab([PathSpec()], name=name).up()
        assert teardown(name) == []          # no state file: nothing is ours
        from mptun.lab import list_labs
        assert name not in list_labs()
        assert foreign in list_namespaces(prefix=name) and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
        run(None, ["ip", "netns", "del", foreign], check=False)


def _is_zombie_free(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_teardown_after_the_creator_was_killed():
    """A process that built a lab dies by SIGKILL; teardown(name) still removes it all."""
    from tests.conftest import require_root
    require_root()
    name = lab_name()
    code = ("import sys, time; from mptun.lab import Lab, PathSpec;"
            f"Lab([PathSpec.symmetric(delay_ms=1)], name={name!r}).up();"
            "print('up', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(state_path(name)) as f:
            orphan_pids = [p["pid"] for p in json.load(f)["pids"]]
        assert list_namespaces(prefix=f"{name}-")
        removed = teardown(name)
        assert f"{name}-cli" in removed
        namespaces, has_state, _ = _lab_leftovers(name)
        assert namespaces == [] and not has_state
        time.sleep(0.2)
        assert not any(_is_zombie_free(p) for p in orphan_pids)
    finally:
        if proc.poll() is None:
            proc.kill()
        teardown(name)


def test_a_second_lab_with_the_same_name_is_refused(make_lab):
    lab = make_lab([PathSpec()])
    with pytest.raises(LabError, match="exists already"):
        Lab([PathSpec()], name=lab.name).up()
    # the refused attempt did not damage the running lab
    sent, received, _ = ping(lab, lab.client, lab.server_addr, 2)
    assert received == 2
