"""The build arrangement of the compiled datapath (docs/datapath.md, "Build notes").

- A compiled module can cimport the DsnAssembler cdef class by its real name and reach the C
  state of an object created from Python: a probe .pyx is compiled here, against the include
  tree setup.py uses (src/fastpath/cython_include.py), and run on a live DsnAssembler.
- Module pxds are cimported only by their real name, inline headers only by their short one.
- Every compiled module has a .pyi stub naming exactly its public API, so stubs cannot drift.
"""

import ast
import importlib.machinery
import importlib.util
import inspect
import re
import shutil
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from mptun import impl

REPO = Path(__file__).resolve().parents[2]
FASTPATH = REPO / "src" / "fastpath"
STUBS = REPO / "mptun" / "_fast"
COMPILED = sorted(p.stem for p in FASTPATH.glob("*.pyx"))


def _cython_include():
    spec = importlib.util.spec_from_file_location("_mptun_cython_include", FASTPATH / "cython_include.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cython_include = _cython_include()


# ---- the include tree --------------------------------------------------------------------------

def test_stage_builds_the_package_tree_and_drops_stale_entries(tmp_path):
    dest = tmp_path / "include"
    stale = dest / "mptun" / "_fast" / "gone.pxd"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    path = cython_include.stage(dest)
    assert path == [str(dest.resolve()), str(FASTPATH)]
    assert (dest / "mptun" / "__init__.pxd").is_file()
    assert (dest / "mptun" / "_fast" / "__init__.pxd").is_file()
    assert not stale.exists()
    for name in cython_include.MODULE_PXDS:
        staged = dest / "mptun" / "_fast" / f"{name}.pxd"
        assert staged.read_bytes() == (FASTPATH / f"{name}.pxd").read_bytes()
    assert cython_include.stage(dest) == path  # idempotent


_CDEF_CLASS = re.compile(r"^cdef\s+class\s+\w+", re.M)


def _cimports(text):
    """Module names cimported in text: `from X cimport ...` and `cimport X[, Y]`."""
    names = re.findall(r"^\s*from\s+([\w.]+)\s+cimport\b", text, re.M)
    for group in re.findall(r"^\s*cimport\s+([\w., ]+)", text, re.M):
        names += [n.split(" as ")[0].strip() for n in group.split(",")]
    return names


def test_module_pxds_are_the_pxds_with_cdef_classes():
    declaring = sorted(p.stem for p in FASTPATH.glob("*.pxd") if _CDEF_CLASS.search(p.read_text()))
    assert sorted(cython_include.MODULE_PXDS) == declaring, (
        "a .pxd that declares a cdef class is a module pxd: list it in "
        "src/fastpath/cython_include.py MODULE_PXDS (and only those)")


def test_each_pxd_is_cimported_by_its_one_name():
    # A module pxd cimported by the short name compiles, then fails at import (Cython imports
    # its types from a top-level module of that name); an inline header cimported by the real
    # name would be a second copy of its types, incompatible with the first.
    headers = {p.stem for p in FASTPATH.glob("*.pxd")} - set(cython_include.MODULE_PXDS)
    sources = sorted(FASTPATH.glob("*.pyx")) + sorted(FASTPATH.glob("*.pxd")) + sorted((REPO / "bench").glob("*.py"))
    wrong = []
    for src in sources:
        for name in _cimports(src.read_text()):
            if name in cython_include.MODULE_PXDS:
                wrong.append(f"{src.relative_to(REPO)}: cimport {name} (use mptun._fast.{name})")
            if name.startswith("mptun._fast.") and name.rsplit(".", 1)[1] in headers:
                wrong.append(f"{src.relative_to(REPO)}: cimport {name} (an inline header: use the short name)")
    assert not wrong, "\n".join(wrong)


# ---- a compiled module sharing a DsnAssembler with Python -------------------------------------

PROBE = textwrap.dedent('''
    # cython: language_level=3
    """Reaches a DsnAssembler made in Python through its C state and inline methods only."""
    from libc.stdint cimport uint64_t

    from mptun._fast.assembler cimport DsnAssembler, dsn_assembler_insert


    def insert_state(DsnAssembler a, uint64_t dsn, const unsigned char[::1] data):
        """The inline function on the object's C state."""
        return dsn_assembler_insert(&a.state, dsn, &data[0], data.shape[0])


    def insert_method(DsnAssembler a, uint64_t dsn, const unsigned char[::1] data):
        """The inline method, called without the GIL."""
        cdef Py_ssize_t n
        with nogil:
            n = a.insert_c(dsn, &data[0], data.shape[0])
        return n


    def state(DsnAssembler a):
        return a.state.read_dsn, a.state.next_dsn, a.state.range_count, a.readable_c(), a.window_c()


    def take(DsnAssembler a):
        """The in-order bytes, straight from the ring (peek + consume), without Python calls."""
        cdef const unsigned char* p
        cdef Py_ssize_t n = a.peek_c(&p)
        out = bytes(p[:n])
        a.consume_c(n)
        return out
''')


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc!r} not on PATH): cannot compile the cimport probe")
    cythonize = pytest.importorskip("Cython.Build", reason="Cython is not installed: cannot compile the probe").cythonize
    from setuptools import Distribution, Extension

    work = tmp_path_factory.mktemp("probe")
    name = "_mptun_cimport_probe"
    pyx = work / f"{name}.pyx"
    pyx.write_text(PROBE)
    include_path = cython_include.stage(work / "include")
    ext = Extension(name, [str(pyx)], extra_compile_args=["-O0"])
    dist = Distribution({"ext_modules": cythonize([ext], include_path=include_path, quiet=True,
                                                  language_level=3)})
    build = dist.get_command_obj("build_ext")
    build.build_lib, build.build_temp = str(work), str(work / "tmp")
    dist.run_command("build_ext")
    (so,) = work.glob(f"{name}.*.so")
    loader = importlib.machinery.ExtensionFileLoader(name, str(so))
    spec = importlib.util.spec_from_file_location(name, so, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_a_compiled_module_shares_the_state_of_a_python_dsn_assembler(probe):
    fast = impl.load("assembler", "fast")
    a = fast.DsnAssembler(1000, 16, 4)
    # C inserts, Python sees them.
    assert probe.insert_state(a, 1000, b"abc") == 3
    assert probe.insert_method(a, 1005, b"fg") == 2
    assert (a.read_dsn, a.next_dsn, a.ranges()) == (1000, 1003, [(1005, 1007)])
    assert probe.insert_method(a, 1003, b"de") == 2  # fills the hole: 1000..1007 in order
    assert a.next_dsn == 1007 and a.ranges() == []
    assert a.read(2) == b"ab"
    # Python inserts and reads, C sees them.
    assert a.insert(1007, b"hij") == 3
    assert probe.state(a) == (1002, 1010, 0, 8, 8)
    assert probe.take(a) == b"cdefghij"
    assert (a.read_dsn, a.readable(), a.duplicate_bytes) == (1010, 0, 0)
    # The typed argument is the compiled class itself, not any object with its API.
    with pytest.raises(TypeError):
        probe.state(impl.load("assembler", "pure").DsnAssembler(1000, 16, 4))


# ---- stubs -------------------------------------------------------------------------------------

def _public(names):
    return {n for n in names if not n.startswith("_")}


def _stub_tree(name):
    path = STUBS / f"{name}.pyi"
    assert path.is_file(), f"mptun/_fast/{name}.pyi is missing: every compiled module has a stub"
    return ast.parse(path.read_text(), filename=str(path))


def _stub_names(body):
    """{name: node} of what a stub body defines (functions, classes, annotated or assigned names)."""
    out = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.setdefault(node.name, node)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            out.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
    return out


def _stub_params(fn):
    """[(name, kind, has_default)] of a stub function, as inspect would list them."""
    a, P = fn.args, inspect.Parameter
    pos = [(x.arg, P.POSITIONAL_ONLY) for x in a.posonlyargs] + [(x.arg, P.POSITIONAL_OR_KEYWORD) for x in a.args]
    firstdefault = len(pos) - len(a.defaults)
    params = [(n, k, i >= firstdefault) for i, (n, k) in enumerate(pos)]
    if a.vararg:
        params.append((a.vararg.arg, P.VAR_POSITIONAL, False))
    params += [(x.arg, P.KEYWORD_ONLY, d is not None) for x, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        params.append((a.kwarg.arg, P.VAR_KEYWORD, False))
    return params


def _runtime_params(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()) and "args" in sig.parameters:
        return None  # "(self, /, *args, **kwargs)": a cdef class's __init__, not introspectable
    return [(p.name, p.kind, p.default is not p.empty) for p in sig.parameters.values()]


def _module_public(module):
    return _public(n for n in dir(module) if not inspect.ismodule(getattr(module, n)))


@pytest.mark.parametrize("name", COMPILED)
def test_stub_names_exactly_the_public_api(name):
    module = impl.load(name, "fast")
    stub = _stub_names(_stub_tree(name).body)
    assert _module_public(module) == _public(stub), (
        f"mptun/_fast/{name}.pyi: missing {sorted(_module_public(module) - _public(stub))}, "
        f"extra {sorted(_public(stub) - _module_public(module))}")
    for attr in sorted(_public(stub)):
        node, value = stub[attr], getattr(module, attr)
        if isinstance(node, ast.ClassDef):
            members = _stub_names(node.body)
            assert _public(dir(value)) == _public(members), (
                f"{name}.{attr}: stub members differ: {sorted(_public(dir(value)) ^ _public(members))}")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.annotation, ast.Name):
            kind = {"int": int, "bool": bool, "str": str, "float": float}.get(node.annotation.id)
            assert kind is None or isinstance(value, kind), f"{name}.{attr} is {value!r}, not {kind.__name__}"


def _functions(name):
    """(label, stub function node, runtime object, pure-twin object or None) for the stub's functions."""
    module = impl.load(name, "fast")
    try:
        pure = impl.load(name, "pure")
    except ImportError:
        pure = None
    for attr, node in _stub_names(_stub_tree(name).body).items():
        if attr.startswith("_"):
            continue
        if isinstance(node, ast.FunctionDef):
            yield attr, node, getattr(module, attr), getattr(pure, attr, None)
        elif isinstance(node, ast.ClassDef):
            cls, pcls = getattr(module, attr), getattr(pure, attr, None)
            for member in node.body:
                if isinstance(member, ast.FunctionDef) and not member.decorator_list and (
                        not member.name.startswith("_") or member.name == "__init__"):
                    yield (f"{attr}.{member.name}", member, getattr(cls, member.name),
                           getattr(pcls, member.name, None))


def _show(params):
    """(a, b=…, *, c=…) from [(name, kind, has_default)]."""
    P, out, star = inspect.Parameter, [], False
    for n, kind, default in params:
        if kind is P.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        out.append({P.VAR_POSITIONAL: "*", P.VAR_KEYWORD: "**"}.get(kind, "") + n + ("=…" if default else ""))
        star = star or kind is P.VAR_POSITIONAL
    return "(" + ", ".join(out) + ")"


@pytest.mark.parametrize("name", COMPILED)
def test_stub_signatures_match_the_module(name):
    differ = []
    for label, node, obj, twin in _functions(name):
        stub = _stub_params(node)
        # A cdef class's __init__ has no signature: its pure twin's stands for it.
        runtime = _runtime_params(obj)
        if runtime is None and twin is not None:
            runtime = _runtime_params(twin)
        if runtime is not None and runtime != stub:
            differ.append(f"{name}.{label}: stub {_show(stub)}, module {_show(runtime)}")
    assert not differ, "\n".join(differ)


def test_the_package_is_marked_typed():
    assert (REPO / "mptun" / "py.typed").is_file()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
