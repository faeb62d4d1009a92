"""What core reads from a segment's parsed options: the flat record's bits by name, window scale, timestamps.

The record is mptcpopt.parse_options()'s (compiled or pure twin); its bit meanings come from that
module and from mptun.wire's enums, never restated here as numbers.
"""

from __future__ import annotations

from mptun import impl
from mptun.wire import mptcp as w
from mptun.wire.tcpip import TCPOPT_EOL, TCPOPT_NOP, TCPOPT_TIMESTAMPS

_opt = impl.load("mptcpopt")

HAS_MPTCP = _opt.HAS_MPTCP
HAS_WSCALE = _opt.HAS_WSCALE
SUBOPT_MP_CAPABLE = 1 << w.Subtype.MP_CAPABLE
SUBOPT_DSS = 1 << w.Subtype.DSS
SUBOPT_MP_FAIL = 1 << w.Subtype.MP_FAIL
SUBOPT_MP_FASTCLOSE = 1 << w.Subtype.MP_FASTCLOSE
SUBOPT_MP_JOIN = 1 << w.Subtype.MP_JOIN
SUBOPT_MP_PRIO = 1 << w.Subtype.MP_PRIO
SUBOPT_ADD_ADDR = 1 << w.Subtype.ADD_ADDR
SUBOPT_REMOVE_ADDR = 1 << w.Subtype.REMOVE_ADDR
SUBOPT_MP_TCPRST = 1 << w.Subtype.MP_TCPRST
SUBOPTS_PATH = SUBOPT_MP_PRIO | SUBOPT_ADD_ADDR | SUBOPT_REMOVE_ADDR
JOIN_FORM_SYNACK = int(w.JoinForm.SYNACK)
MPC_FORM_SYNACK = int(w.MpcForm.SYNACK)
REASON_BAD_VERSION = _opt.REASON_NAMES.index("BAD_VERSION")
REASON_UNSUPPORTED_MPC_FLAGS = _opt.REASON_NAMES.index("UNSUPPORTED_MPC_FLAGS")
TIMESTAMPS_LEN = 10
WSCALE_MAX = 14     # RFC 7323 2.3


def wscale_of(options: bytes) -> int:
    """The window scale option of our SYN's options area (0 if absent or unreadable)."""
    o = _opt.parse_options(bytes(options) + b"\x01" * (-len(options) % 4))
    return min(o["wscale"], WSCALE_MAX) if o["present"] & HAS_WSCALE else 0


def timestamps_of(options: bytes) -> bytes:
    """The timestamps option of a segment's options area, NOP-aligned, or b"" (for crafted ACKs)."""
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= n or options[i + 1] < 2:
            break
        length = options[i + 1]
        if kind == TCPOPT_TIMESTAMPS and length == TIMESTAMPS_LEN and i + TIMESTAMPS_LEN <= n:
            return b"\x01\x01" + bytes(options[i:i + TIMESTAMPS_LEN])
        i += length
    return b""
