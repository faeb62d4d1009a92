"""Build the compiled datapath: every src/fastpath/<name>.pyx becomes mptun._fast.<name>.

A failed or missing build is an install error on purpose: mptun never falls
back silently to the pure-Python twins (select those with MPTUN_IMPL=pure).

Cython's include path comes from src/fastpath/cython_include.py: src/fastpath for the inline
headers (cimported by short name) and a staged tree build/cython-include/mptun/_fast/ for the
module pxds, so that `from mptun._fast.assembler cimport DsnAssembler` works and each module's
.pyx is paired with its own .pxd (docs/datapath.md, "Build notes").
"""
import importlib.util
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
FASTPATH = HERE / "src" / "fastpath"


def _load_cython_include():
    # By path: src/fastpath is not a package, and nothing of mptun can be imported before the build.
    spec = importlib.util.spec_from_file_location("_mptun_cython_include", FASTPATH / "cython_include.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INCLUDE_PATH = _load_cython_include().stage(HERE / "build" / "cython-include", FASTPATH)
SOURCES = sorted(FASTPATH.glob("*.pyx"))
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
        include_path=INCLUDE_PATH,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    # Type stubs of the compiled modules, and the PEP 561 marker for the whole package.
    package_data={"mptun": ["py.typed"], "mptun._fast": ["*.pyi"]},
)
