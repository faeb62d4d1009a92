"""Core and the datapath load their compiled helpers at import; this runs their tests (the sim tier,
core's and the datapath's unit tests) once more in a fresh interpreter on the pure-Python twins."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITES = ["tests/sim", "tests/unit/test_core_connection.py", "tests/unit/test_core_mapping.py",
          "tests/unit/test_datapath.py", "tests/unit/test_scheduler.py", "tests/unit/test_pm.py"]


def test_core_sim_and_datapath_tests_pass_on_the_pure_twins():
    env = dict(os.environ, MPTUN_IMPL="pure")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = "\n".join(run.stdout.splitlines()[-40:])
    assert run.returncode == 0, f"on the pure twins:\n{tail}\n{run.stderr[-2000:]}"
    assert " passed" in run.stdout.splitlines()[-1] and "skipped" not in run.stdout.splitlines()[-1], tail


def test_the_child_interpreter_really_loads_the_pure_twins():
    env = dict(os.environ, MPTUN_IMPL="pure")
    probe = "import mptun.core.connection as c, mptun.io.datapath as d; print(c._opt.__name__, d.rw.__name__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["mptun.pure.mptcpopt", "mptun.pure.rewrite"]
