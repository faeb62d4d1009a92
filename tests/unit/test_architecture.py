"""The layering rules of docs/architecture.md, checked on the source: core is sans I/O, the edge moves
core only through its API, every counter the code bumps has a registered meaning, modules stay small."""

import ast
from pathlib import Path

import pytest

from mptun.core import mib

ROOT = Path(__file__).resolve().parents[2] / "mptun"
CORE = sorted((ROOT / "core").glob("*.py"))
EDGE = sorted((ROOT / "io").glob("*.py")) + [ROOT / "daemon.py"] + sorted((ROOT / "nat").glob("*.py"))
# Core is handed `now` and bytes: no clock, no sockets, no polling, no netlink, no process state.
FORBIDDEN_IN_CORE = {"socket", "select", "selectors", "time", "pyroute2", "os", "asyncio", "threading", "errno"}
# Counters is the shared registry every layer counts into; it is not core state.
SHARED = {"counters"}
MUTATORS = {"append", "remove", "pop", "clear", "insert", "extend", "add", "discard", "update", "popitem"}
MAX_LINES = 500


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(module: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_no_io(path):
    bad = imported_modules(tree(path)) & FORBIDDEN_IN_CORE
    assert not bad, f"mptun/core/{path.name} imports {sorted(bad)}: core is sans I/O"


def core_attribute_names() -> set[str]:
    """Every attribute a core class gives its instances (self.X = ... and __slots__)."""
    names = set()
    for path in CORE:
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for sub in ast.walk(t):
                        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                            names.add(sub.attr)
    return names - SHARED


def foreign_attribute(node: ast.AST) -> ast.Attribute | None:
    """The Attribute at the root of an assignment target or mutated container, unless it is self's own."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
        return node
    return None


def edge_writes_to_core(path: Path, core_names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(tree(path)):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in MUTATORS):
            targets = [node.func.value]
        for t in targets:
            attr = foreign_attribute(t)
            if attr is not None and attr.attr in core_names:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(t)}")
    return found


def test_the_edge_never_assigns_or_mutates_core_attributes():
    core_names = core_attribute_names()
    assert {"state", "mode", "error", "subflows", "established"} & core_names, "the scan found core's attributes"
    found = [f for path in EDGE for f in edge_writes_to_core(path, core_names)]
    assert not found, "the edge changes core objects directly (use core's input calls):\n" + "\n".join(found)


def test_the_rule_catches_a_write(tmp_path):
    sample = tmp_path / "edge_sample.py"
    sample.write_text("def f(c, s):\n    c.conn.state = 'x'\n    c.conn.subflows.remove(s)\n    self_ok = 1\n")
    found = edge_writes_to_core(sample, core_attribute_names())
    assert len(found) == 2, found


COUNTING_CALLS = {"abort", "drop", "set_fallback", "subflow_connect_failed"}


def counted_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every constant counter name the module counts or hands to a counting call."""
    out = []

    def constants(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.IfExp):
            yield from constants(node.body)
            yield from constants(node.orelse)

    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Subscript):
            base = node.value
            name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            if name == "counters":
                out.extend((node.lineno, c) for c in constants(node.slice))
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in COUNTING_CALLS and node.args:
                out.extend((node.lineno, c) for c in constants(node.args[0]))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_CONNECT_FAILURES" for t in node.targets):
            out.extend((node.lineno, v.value) for v in node.value.values)
    return out


def test_every_counter_name_in_the_code_has_a_registered_meaning():
    sources = CORE + EDGE
    names = [(p.name, line, n) for p in sources for line, n in counted_names(p)]
    assert len(names) > 40, "the scan found the counters"
    unknown = [f"{f}:{line}: {n}" for f, line, n in names if mib.meaning(n) is None]
    assert not unknown, "counted but not in mptun/core/mib.py REASONS:\n" + "\n".join(unknown)


def test_no_module_is_over_500_lines_without_a_reason_at_its_top():
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_LINES and "over 500 lines because" not in text[:3000]:
            long.append(f"{path.relative_to(ROOT.parent)}: {text.count(chr(10))} lines")
    assert not long, "split these by concern, or say at the top why not:\n" + "\n".join(long)
