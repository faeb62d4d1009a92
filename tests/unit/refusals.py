"""Checks that bad arguments at the compiled boundary raise ValueError on both twins, with asserts off too."""

import os
import subprocess
import sys

from mptun import impl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def not_refused(module, kind, calls):
    """Labels of the (label, call) pairs that did not raise ValueError on module's `kind` twin."""
    mod = impl.load(module, kind)
    out = []
    for label, call in calls:
        try:
            call(mod)
        except ValueError:
            continue
        except Exception as e:
            out.append(f"{label}: {type(e).__name__}")
            continue
        out.append(label)
    return out


def not_refused_under_python_O(module, test_module):
    """Run not_refused on both twins of `module` in a `python -O` child, with `test_module`.BAD_CALLS.

    Returns the child's output line; "1 {'fast': [], 'pure': []}" means every call was refused.
    """
    code = ("import sys\nassert False, 'asserts are on'\n"
            f"from {test_module} import BAD_CALLS\n"
            "from tests.unit.refusals import not_refused\n"
            f"print(sys.flags.optimize, {{k: not_refused({module!r}, k, BAD_CALLS) for k in ('fast', 'pure')}})\n")
    proc = subprocess.run([sys.executable, "-O", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()
