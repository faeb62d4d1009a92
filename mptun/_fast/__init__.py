"""Compiled datapath modules, built by setup.py from src/fastpath/*.pyx. Load them through mptun.impl.

Each module has a .pyi stub beside it (kept in step by tests/unit/test_build.py).
"""
