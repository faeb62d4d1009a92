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


# Names only one twin has, on purpose. Everything else must be on both sides.
API_EXCEPTIONS = {
    # The pure parser names its walk limit; the compiled one has it as a C constant in
    # packet.pxd, which Python does not see (tests/unit/test_constants.py compares the two).
    ("packet", "pure"): {"IPV6_MAX_EXTENSION_HEADERS"},
}


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_") and not inspect.ismodule(getattr(obj, n))}


def _signature(obj):
    """obj's parameters (names, kinds, defaults) without annotations, or None if it has no signature.
    Annotations differ in form only: Cython keeps them as strings."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=inspect.Signature.empty)


@pytest.mark.parametrize("name", TWINS)
def test_twins_have_the_same_public_api(name):
    fast, pure = impl.load(name, "fast"), impl.load(name, "pure")
    only_fast = _public(fast) - _public(pure) - API_EXCEPTIONS.get((name, "fast"), set())
    only_pure = _public(pure) - _public(fast) - API_EXCEPTIONS.get((name, "pure"), set())
    assert not only_fast, f"pure twin of {name} lacks {sorted(only_fast)}"
    assert not only_pure, f"compiled {name} lacks {sorted(only_pure)}"
    # Exceptions that no longer apply are stale: drop them from the list.
    for kind, this, other in (("fast", fast, pure), ("pure", pure, fast)):
        stale = {n for n in API_EXCEPTIONS.get((name, kind), set()) if n not in _public(this) or n in _public(other)}
        assert not stale, f"API_EXCEPTIONS[{name!r}, {kind!r}] lists {sorted(stale)}, which is no exception"

    differ = []
    for attr in sorted(_public(fast) & _public(pure)):
        f, p = getattr(fast, attr), getattr(pure, attr)
        pairs = [(attr, f, p)]
        if inspect.isclass(f) and inspect.isclass(p):
            assert _public(f) == _public(p), f"{name}.{attr}: members differ: {sorted(_public(f) ^ _public(p))}"
            pairs += [(f"{attr}.{m}", getattr(f, m), getattr(p, m)) for m in sorted(_public(f))]
        for label, a, b in pairs:
            sa, sb = _signature(a), _signature(b)
            if sa is not None and sb is not None and sa != sb:
                differ.append(f"{name}.{label}: fast {sa}, pure {sb}")
    assert not differ, "\n".join(differ)


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
