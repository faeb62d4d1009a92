"""Type stub of the compiled mptun._fast.buildinfo (src/fastpath/buildinfo.pyx); compiled only.

tests/unit/test_build.py checks that it names exactly the module's public API.
"""

COMPILED: bool
