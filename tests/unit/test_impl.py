"""The compiled datapath is what normally loads; the pure twins are the same API."""

import importlib.machinery
import inspect
import subprocess
import sys

import pytest

from mptun import impl

TWINS = ("packet", "mptcpopt", "checksum", "rewrite", "seq", "assembler")


@pytest.mark.parametrize("name", TWINS)
def test_compiled_module_loads_by_default(name, monkeypatch):
    monkeypatch.delenv("MPTUN_IMPL", raising=False)
    mod = impl.load(name)
    assert mod.__name__ == f"mptun._fast.{name}"
    # An extension module, not a .py file that happens to sit in _fast/.
    assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), mod.__file__


@pytest.mark.parametrize("name", TWINS)
def test_twins_have_the_same_public_api(name):
    fast, pure = impl.load(name, "fast"), impl.load(name, "pure")
    def public(m):
        return {n for n in dir(m) if not n.startswith("_") and not inspect.ismodule(getattr(m, n))}
    missing = public(fast) - public(pure)
    assert not missing, f"pure twin of {name} lacks {sorted(missing)}"


def test_env_selects_the_pure_twins(monkeypatch):
    monkeypatch.setenv("MPTUN_IMPL", "pure")
    assert impl.load("seq").__name__ == "mptun.pure.seq"


def test_unknown_impl_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setenv("MPTUN_IMPL", "fastest")
    with pytest.raises(RuntimeError, match="MPTUN_IMPL"):
        impl.load("seq")


def test_version_command_reports_the_compiled_datapath():
    out = subprocess.run([sys.executable, "-m", "mptun", "version"], capture_output=True, text=True, check=True)
    assert "datapath: fast, compiled=True" in out.stdout
