"""The Cython include path of the compiled datapath, shared by setup.py and the build tests.

Two kinds of .pxd live in src/fastpath (docs/datapath.md, "Build notes"):

- inline headers (checksum, mptcpopt, packet, rewrite, seq): structs, enums and `cdef inline`
  functions only. They are cimported by their short name (`from checksum cimport csum_sum`);
  every cimporter compiles its own copy and imports nothing at run time.
- module pxds (MODULE_PXDS): they declare what lives in one compiled module at run time, such
  as a cdef class. They are cimported by the module's real name
  (`from mptun._fast.assembler cimport DsnAssembler`), and Cython pairs each with its own .pyx.

Cython finds `mptun._fast.<name>` only as mptun/_fast/<name>.pxd below a directory of the
include path, with mptun/ and mptun/_fast/ marked as packages. stage() builds that tree out of
symlinks to src/fastpath (the sources stay where they are) and returns the include path.
Standard library only: setup.py loads this file by path, before anything is built.
"""

import os
import shutil
from pathlib import Path

FASTPATH = Path(__file__).resolve().parent
REPO = FASTPATH.parent.parent
PACKAGE = "mptun._fast"
# Module pxds: cimported as mptun._fast.<name>, never by the short name (tests/unit/test_build.py
# checks both). Add a name here when its .pxd starts declaring a cdef class.
MODULE_PXDS = ("assembler",)
DEFAULT_DEST = REPO / "build" / "cython-include"


def _link(target: Path, link: Path) -> None:
    """link -> target, replacing whatever is there unless it already points at target."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        os.symlink(target, link)
    except FileExistsError:  # a concurrent build got there first
        pass
    except OSError:  # no symlinks here: a copy, with the source's mtime for Cython's dependency check
        shutil.copy2(target, link)


def stage(dest: Path | str = DEFAULT_DEST, fastpath: Path | str = FASTPATH) -> list[str]:
    """Create dest/mptun/__init__.pxd, dest/mptun/_fast/__init__.pxd and a link
    dest/mptun/_fast/<name>.pxd -> fastpath/<name>.pxd per MODULE_PXDS (stale ones removed);
    returns the include path: [dest, fastpath]. Idempotent, cheap, safe to run on every build."""
    dest, fastpath = Path(dest).resolve(), Path(fastpath).resolve()
    package = dest.joinpath(*PACKAGE.split("."))
    package.mkdir(parents=True, exist_ok=True)
    for level in (dest / "mptun", package):
        init = level / "__init__.pxd"
        if not init.exists():
            init.write_text("# Marks a package for Cython's cimport search (src/fastpath/cython_include.py).\n")
    wanted = {f"{name}.pxd" for name in MODULE_PXDS}
    for entry in package.iterdir():
        if entry.name != "__init__.pxd" and entry.name not in wanted:
            entry.unlink()
    for name in sorted(wanted):
        _link(fastpath / name, package / name)
    return [str(dest), str(fastpath)]
