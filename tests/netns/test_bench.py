"""The multipath benchmark runs end to end (--quick, two of its sections) and writes what it promises.

Only the shape of its output is checked (sections, runs, figures present, PNG files), never a number:
benchmarks measure, tests assert. About 40 s.
"""

import json
import os
import subprocess
import sys

import pytest

from mptun.lab.netns import list_namespaces
from tests.conftest import require_commands, require_root

pytestmark = pytest.mark.netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("simult", "failover")


def _check_run(run: dict, figures: tuple) -> None:
    """A run names its client and has its figures (a value or None), or says why it has none.
    The kernel's runs must have worked: they are the yardstick, a failure there is the bench's."""
    assert run["client"] in ("kernel", "mptun", "tcp"), run
    if run["client"] == "kernel" or not run.get("error"):
        missing = [k for k in figures + ("server_kernel", "path_bytes", "server_ss") if k not in run]
        assert not missing, f"{run['client']} run lacks {missing}: {run.get('error')}"
    if run["client"] == "kernel":
        assert not run["error"], run["error"]


def test_quick_bench_writes_its_sections_and_plots(tmp_path):
    require_root()
    require_commands("ip", "tc", "nft", "ethtool", "ss")
    pytest.importorskip("matplotlib", reason="the bench draws with matplotlib (scripts/setup.sh installs it)")
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "multipath_bench.py"), "--quick",
                           "--only", ",".join(SECTIONS), "--out", str(out)],
                          capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    assert {"kernel", "python", "mptun_git_rev"} <= set(results["versions"])
    assert {"nproc", "cpu_model"} <= set(results["machine"])
    assert results["mptun"]["schedulers"] and results["mptun"]["note"]
    assert results["sections"] == list(SECTIONS) and "aggregation" not in results
    assert {"kernel", "mptun"} <= set(results["subflow_check"])
    assert "### simult_flows.sh" in results["table_markdown"] and "### failover" in results["table_markdown"]
    assert "### simult_flows.sh" in proc.stdout   # the table is printed too

    simult = results["simult"]
    assert simult["cases"]
    for case in simult["cases"]:
        assert "bound_s" in case
        assert {r["client"] for r in case["runs"]} == {"kernel", "mptun", "tcp"}
        for run in case["runs"]:
            _check_run(run, ("time_s", "pass"))

    failover = results["failover"]
    assert {r["client"] for r in failover["runs"]} >= {"kernel", "mptun"}
    for run in failover["runs"]:
        _check_run(run, ("gap_s", "half_rate_s", "return_s", "samples", "t_down", "t_up"))
    assert all(r["samples"] for r in failover["runs"] if r["client"] == "kernel")

    assert results["plots"] == ["simult_flows.png", "failover-down.png"]
    for name in results["plots"]:
        with open(out / name, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, name
    # Every lab it built is gone.
    labs = {c["lab"] for c in simult["cases"]} | {failover["lab"]}
    left = [ns for ns in list_namespaces() if ns.rsplit("-", 1)[0] in labs]
    assert not left, left
