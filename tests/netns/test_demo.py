"""The README's first command: the demo runs to the end, the bytes are intact, the server saw MPTCP."""

import subprocess
import sys

import pytest

from tests.conftest import require_root

pytestmark = pytest.mark.netns


def test_demo_runs_and_reports_mptcp_both_parts():
    require_root()
    proc = subprocess.run([sys.executable, "-m", "mptun.demo", "--megabytes", "8"], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("sha256 matches what the server sent") == 2
    # Part 1 through mptun, part 2 the kernel's MPTCP: both with a subflow on each of the two paths.
    assert out.count("the server's kernel saw: MPTCP, 2 subflow(s)") == 2, out
    assert "path 0 goes down" in out
