"""Build the compiled datapath: every src/fastpath/<name>.pyx becomes mptun._fast.<name>.

A failed or missing build is an install error on purpose: mptun never falls
back silently to the pure-Python twins (select those with MPTUN_IMPL=pure).
"""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
SOURCES = sorted((HERE / "src" / "fastpath").glob("*.pyx"))
# Developers building one module while others edit theirs:
#   MPTUN_BUILD_ONLY=seq,assembler python setup.py build_ext --inplace
_only = {n for n in os.environ.get("MPTUN_BUILD_ONLY", "").split(",") if n}
if _only:
    SOURCES = [p for p in SOURCES if p.stem in _only]

extensions = [
    Extension(
        f"mptun._fast.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=["src/fastpath"],
        extra_compile_args=["-O3", "-fno-strict-aliasing"],
    )
    for pyx in SOURCES
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src/fastpath"],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
