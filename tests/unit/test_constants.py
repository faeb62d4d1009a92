"""One value per constant: the enums of src/fastpath/*.pxd, the Python codecs and the twins agree.

The Python side has each wire constant once, in mptun.wire.tcpip or mptun.wire.mptcp (the pure
twins import them; only what is theirs alone, like the flat record's HAS_* bits or the rewrite
statuses, is defined in mptun.pure). The .pxd files are read as text here: their `cdef enum`
blocks are evaluated (explicit values, expressions of earlier names, and C's implicit +1), and
every constant that exists on both sides must have the same value. The compiled modules' own
exported constants must equal their pure twins'.
"""

import ast
import re
from enum import IntEnum
from pathlib import Path

import pytest

from mptun import impl
from mptun.pure import mptcpopt as pure_mptcpopt
from mptun.pure import packet as pure_packet
from mptun.pure import rewrite_ops
from mptun.wire import mptcp, tcpip

REPO = Path(__file__).resolve().parents[2]
PXD_FILES = sorted((REPO / "src" / "fastpath").glob("*.pxd"))
PURE_FILES = sorted((REPO / "mptun" / "pure").glob("*.py"))
TWINS = ("packet", "mptcpopt", "checksum", "rewrite", "seq", "assembler")

# Groups of .pxd constants that are the wire format or the twins' shared contract: each of these
# must have its Python value. The names listed after a prefix are C-only on purpose.
SHARED_GROUPS = {
    "PACKET_": set(),
    "REASON_": set(),
    "TCPOPT_": set(),
    "TCPOLEN_": set(),
    "SUBTYPE_": set(),
    "SUBOPT_": set(),
    "HAS_": set(),
    "MPTCPOPT_": {"MPTCPOPT_MAX_PER_SEGMENT"},   # the C record's array size
    "MPC_": set(),
    "JOIN_FORM_": set(),
    "DSS_": set(),
    "TCP_": {"TCP_SEQ_OFFSET", "TCP_ACK_OFFSET", "TCP_WINDOW_OFFSET", "TCP_URGENT_OFFSET"},
    "RW_": set(),
    "VNET_": {"VNET_HDR_GSO_UDP", "VNET_HDR_LEN", "VNET_HDR_MRG_LEN",   # see VNET_HDR_LENGTHS below
              "VNET_GSO_SIZE_OFFSET"},
    "ETH": set(),
}


# ---------------------------------------------------------------- the .pxd side, read as text

_ENTRY = re.compile(r"^([A-Za-z_]\w*)\s*(?:=\s*(.+))?$")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.BitOr: lambda a, b: a | b, ast.BitAnd: lambda a, b: a & b, ast.LShift: lambda a, b: a << b,
        ast.RShift: lambda a, b: a >> b}


def _eval(node, names):
    if isinstance(node, ast.Expression):
        return _eval(node.body, names)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]   # KeyError: not resolved yet
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    raise ValueError(f"cannot evaluate {ast.dump(node)}")


def enum_entries(text: str) -> list[tuple[str, str]]:
    """(name, C expression) of every `cdef enum` entry, in order; an entry without a value is
    the previous one + 1 (0 for the first of its block), as in C."""
    entries, in_enum, previous = [], False, None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if re.match(r"^cdef\s+enum\b.*:$", line):
            in_enum, previous = True, None
            continue
        if not in_enum or not line:
            continue
        if not raw[:1].isspace():
            in_enum = False
            continue
        m = _ENTRY.match(line.strip())
        assert m, f"not an enum entry: {raw!r}"
        name, expr = m.group(1), m.group(2)
        if expr is None:
            expr = f"{previous} + 1" if previous else "0"
        entries.append((name, expr.replace("ULL", "").replace("UL", "")))
        previous = name
    return entries


def pxd_constants() -> dict[str, int]:
    """Every enum constant of every .pxd, evaluated (names may come from another .pxd, as cimported)."""
    pending = {}
    for path in PXD_FILES:
        for name, expr in enum_entries(path.read_text()):
            assert name not in pending, f"{name} is defined twice in the .pxd files"
            pending[name] = ast.parse(expr, mode="eval")
    values: dict[str, int] = {}
    while pending:
        done = {}
        for name, tree in pending.items():
            try:
                done[name] = _eval(tree, values)
            except KeyError:
                continue
        assert done, f"unresolved .pxd constants: {sorted(pending)}"
        values.update(done)
        for name in done:
            del pending[name]
    return values


# ---------------------------------------------------------------- the Python side, by .pxd name

def _module_ints(module, prefix: str = "") -> dict[str, int]:
    return {prefix + n: v for n, v in vars(module).items()
            if isinstance(v, int) and not isinstance(v, bool) and n.lstrip("_").isupper()
            and not isinstance(v, IntEnum)}


def _enum(enum: type[IntEnum], prefix: str) -> dict[str, int]:
    return {prefix + m.name: int(m) for m in enum}


def python_constants() -> dict[str, int]:
    """Each Python constant under its .pxd name; a name two sources give must agree."""
    rw = rewrite_ops
    statuses = ("OK", "NO_ROOM", "NO_HEADROOM", "BAD_REQUEST", "MALFORMED_VNET", "MALFORMED_TCP_OPTIONS")
    sources = [
        _module_ints(tcpip), _module_ints(mptcp),
        _enum(tcpip.PacketReason, "PACKET_"), _enum(tcpip.Reason, "REASON_"), _enum(mptcp.Subtype, "SUBTYPE_"),
        {f"SUBOPT_{s.name}": 1 << s for s in mptcp.Subtype},   # the flat record's `suboptions` bits
        _enum(mptcp.MpcForm, "MPC_FORM_"), _enum(mptcp.JoinForm, "JOIN_FORM_"),
        {"PACKET_REASON_COUNT": len(tcpip.PacketReason), "REASON_COUNT": len(tcpip.Reason),
         "IPPROTO_TCP_": tcpip.IPPROTO_TCP, "IPV6_ROUTING_HEADER": tcpip.IPPROTO_ROUTING},
        {"IPV6_MAX_EXTENSION_HEADERS": pure_packet.IPV6_MAX_EXTENSION_HEADERS},
        {n: getattr(pure_mptcpopt, n) for n in dir(pure_mptcpopt) if n.startswith("HAS_")},
        {"SUBTYPE_NONE": pure_mptcpopt.SUBTYPE_NONE},
        # the flat record's "no such suboption" form
        {f"{k.upper()}_NONE": v for k, v in pure_mptcpopt.parse_options(b"").items() if k in ("mpc_form", "join_form")},
        {"RW_" + s: getattr(rw, s) for s in statuses},
        {n: v for n, v in _module_ints(rw).items() if n.startswith(("RW_OP", "VNET_", "ETH"))},
        {"RW_STATUS_COUNT": len(rw.STATUS_NAMES), "RW_COUNTER_COUNT": len(rw.COUNTER_NAMES),
         "IP_MAX_LEN": rw.MAX_PACKET},
        {"RW_CNT_" + name.upper(): i for i, name in enumerate(rw.COUNTER_NAMES) if i >= len(rw.STATUS_NAMES)},
    ]
    merged: dict[str, int] = {}
    for source in sources:
        for name, value in source.items():
            assert merged.setdefault(name, value) == value, f"{name}: the Python side has {merged[name]} and {value}"
    return merged


PXD = pxd_constants()
PY = python_constants()


def test_the_pxd_enums_are_read():
    # A parser that read nothing would make the comparison below pass vacuously.
    assert len(PXD) > 180
    assert PXD["RW_CNT_PACKETS"] == PXD["RW_STATUS_COUNT"] and PXD["RW_CNT_NAT"] == PXD["RW_CNT_PACKETS"] + 1
    assert PXD["SUBOPT_MP_TCPRST"] == 1 << 8 and PXD["RW_OPS_NAT"] == 0x78


def test_every_constant_on_both_sides_has_one_value():
    common = PXD.keys() & PY.keys()
    assert len(common) > 180, sorted(common)
    differ = {n: (PXD[n], PY[n]) for n in sorted(common) if PXD[n] != PY[n]}
    assert not differ, f"(.pxd, Python) values differ: {differ}"


@pytest.mark.parametrize("prefix", SHARED_GROUPS)
def test_shared_groups_have_their_python_twin(prefix):
    missing = {n for n in PXD if n.startswith(prefix)} - PY.keys() - SHARED_GROUPS[prefix]
    assert not missing, f"these .pxd constants have no Python value to be checked against: {sorted(missing)}"
    stale = SHARED_GROUPS[prefix] - (PXD.keys() - PY.keys())
    assert not stale, f"SHARED_GROUPS[{prefix!r}] lists {sorted(stale)}, which is no exception"


def test_statuses_and_vnet_lengths_built_from_the_pxd_agree():
    rw = rewrite_ops
    reasons = [n for n, v in sorted(PXD.items(), key=lambda kv: kv[1])
               if n.startswith("PACKET_") and n not in ("PACKET_OK", "PACKET_REASON_COUNT")]
    assert [rw.MALFORMED_TCP_OPTIONS + PXD[n] for n in reasons] == [
        rw.MALFORMED_TRUNCATED, rw.MALFORMED_IP_VERSION, rw.MALFORMED_IPV4_HEADER_LEN, rw.MALFORMED_IP_TOTAL_LEN,
        rw.MALFORMED_NOT_TCP, rw.MALFORMED_FRAGMENT, rw.MALFORMED_TCP_HEADER_LEN,
        rw.MALFORMED_IPV6_EXTENSION_HEADERS]
    assert impl.load("rewrite", "pure").VNET_HDR_LENGTHS == (0, PXD["VNET_HDR_LEN"], PXD["VNET_HDR_MRG_LEN"])
    assert rw.MAX_OPTIONS == PXD["TCP_OPTIONS_MAX_LEN"]


def _exported_constants(module) -> dict:
    return {n: getattr(module, n) for n in dir(module)
            if not n.startswith("_") and isinstance(getattr(module, n), (int, str, tuple, frozenset))}


@pytest.mark.parametrize("name", TWINS)
def test_compiled_modules_export_the_pure_twins_constants(name):
    fast, pure = impl.load(name, "fast"), impl.load(name, "pure")
    exported = _exported_constants(fast)
    differ = {n: (v, getattr(pure, n, "missing")) for n, v in exported.items() if getattr(pure, n, None) != v}
    assert not differ, f"{name}: (compiled, pure) differ: {differ}"


def test_compiled_exports_cover_statuses_and_record_bits():
    assert {"OK", "NO_ROOM", "MALFORMED_TRUNCATED", "STATUS_NAMES", "COUNTER_NAMES"} <= \
        _exported_constants(impl.load("rewrite", "fast")).keys()
    assert {"HAS_MSS", "HAS_EOL", "SUBTYPE_NONE", "REASON_NAMES"} <= _exported_constants(impl.load("mptcpopt", "fast")).keys()


def test_pure_twins_import_the_wire_constants_instead_of_redefining_them():
    wire_names = {n for m in (tcpip, mptcp) for n in _module_ints(m)}
    redefined = []
    for path in PURE_FILES:
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            names = [e.id for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])
                     if isinstance(e, ast.Name)]
            redefined += [f"{path.name}: {n}" for n in names if n.lstrip("_") in wire_names]
    assert not redefined, f"defined in mptun.wire already: {redefined}"
