"""Selects the compiled datapath (mptun._fast.<name>) or its pure-Python twin (mptun.pure.<name>).

The compiled modules are what normally loads; MPTUN_IMPL=pure selects the
twins (for debugging, and so every test can run on both). A compiled module
that fails to import is an error, never a silent fallback.
"""

import importlib
import os
from types import ModuleType

KINDS = ("fast", "pure")
_PACKAGES = {"fast": "mptun._fast", "pure": "mptun.pure"}


def default_kind() -> str:
    kind = os.environ.get("MPTUN_IMPL", "fast")
    if kind not in KINDS:
        raise RuntimeError(f"MPTUN_IMPL must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def load(name: str, kind: str | None = None) -> ModuleType:
    """The module `name` of the given kind (default: MPTUN_IMPL, else compiled)."""
    kind = kind or default_kind()
    if kind not in KINDS:
        raise ValueError(f"unknown implementation kind {kind!r}")
    return importlib.import_module(f"{_PACKAGES[kind]}.{name}")
