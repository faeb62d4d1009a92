"""Unwrapped sequence spaces: 64-bit DSNs and 32-bit subflow offsets kept as Python ints that never wrap.

Core keeps every DSN and subflow offset unwrapped; only what goes on the wire is taken mod 2^64 or
2^32. `unwrap64`/`unwrap32` expand a wire value to the unwrapped number nearest a reference point.
"""

from __future__ import annotations

from mptun import impl

_seq = impl.load("seq")

M32 = (1 << 32) - 1
M64 = (1 << 64) - 1


def unwrap64(ref: int, value: int) -> int:
    """The unwrapped DSN whose low 64 bits are value, nearest to the unwrapped ref."""
    return ref + _seq.diff64(value & M64, ref & M64)


def unwrap32(ref: int, value: int) -> int:
    """The unwrapped offset whose low 32 bits are value, nearest to ref (a non-negative int)."""
    d = (value - ref) & M32
    return ref + (d - (1 << 32) if d >= (1 << 31) else d)


def expand_dsn(ref: int, raw: int, is_64: bool) -> int:
    """A DSN or DATA_ACK from the wire (64 or 32 bits, RFC 8684 3.3) as the unwrapped value nearest ref."""
    return unwrap64(ref, raw) if is_64 else ref + _seq.diff32(raw, ref & M32)


def u32(x: int) -> int:
    return x & M32


def after32(a: int, b: int) -> bool:
    return _seq.after32(a, b)
