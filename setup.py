"""Build the compiled datapath: every src/fastpath/<name>.pyx becomes mptun._fast.<name>.

A failed or missing build is an install error on purpose: mptun never falls
back silently to the pure-Python twins (select those with MPTUN_IMPL=pure).
"""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
SOURCES = sorted((HERE / "src" / "fastpath").glob("*.pyx"))

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
