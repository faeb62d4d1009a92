"""Compiled datapath modules, built by setup.py from src/fastpath/*.pyx. Load them through mptun.impl."""
