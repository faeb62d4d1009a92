# cython: language_level=3
"""Facts about the compiled extension build, so tests and `mptun version` can show what loaded."""

cimport cython

COMPILED = cython.compiled
