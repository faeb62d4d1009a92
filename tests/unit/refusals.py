"""Checks that bad arguments at the compiled boundary raise ValueError on both twins, with asserts off too."""

import os
import subprocess
import sys

import pytest

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


def refusal_tests(module, test_module, bad_calls):
    """The two tests of a BAD_CALLS list: each call raises ValueError on both twins of `module`,
    and still does under `python -O`. Assign them to test_* names in `test_module`."""

    @pytest.mark.parametrize("label, call", bad_calls, ids=[c[0] for c in bad_calls])
    def raises_value_error(impl_kind, label, call):
        with pytest.raises(ValueError):
            call(impl.load(module, impl_kind))

    def raises_value_error_under_python_O():
        assert not_refused_under_python_O(module, test_module) == "1 {'fast': [], 'pure': []}"

    return raises_value_error, raises_value_error_under_python_O
