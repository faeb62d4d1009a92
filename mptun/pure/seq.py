"""Wrap-safe sequence arithmetic: 32-bit TCP subflow sequence numbers and 64-bit MPTCP DSNs.

Pure-Python twin of mptun._fast.seq (src/fastpath/seq.pyx); same functions, same results,
same OverflowError for integers outside the unsigned 32/64-bit range.
"""

SEQ32_MOD = 1 << 32
DSN_MOD = 1 << 64

_MASK32 = SEQ32_MOD - 1
_MASK64 = DSN_MOD - 1
_HALF32 = 1 << 31
_HALF64 = 1 << 63


def _u32(value: int) -> int:
    # Mirrors Cython's conversion to uint32_t, so both twins fail alike on a caller's bug.
    if not 0 <= value <= _MASK32:
        raise OverflowError(f"{value} is not an unsigned 32-bit sequence number")
    return value


def _u64(value: int) -> int:
    if not 0 <= value <= _MASK64:
        raise OverflowError(f"{value} is not an unsigned 64-bit sequence number")
    return value


def _signed32(value: int) -> int:
    value &= _MASK32
    return value - SEQ32_MOD if value >= _HALF32 else value


def _signed64(value: int) -> int:
    value &= _MASK64
    return value - DSN_MOD if value >= _HALF64 else value


def diff32(a: int, b: int) -> int:
    """Signed distance a - b in the 32-bit sequence space, in [-2^31, 2^31)."""
    return _signed32(_u32(a) - _u32(b))


def before32(a: int, b: int) -> bool:
    return _signed32(_u32(a) - _u32(b)) < 0


def after32(a: int, b: int) -> bool:
    return _signed32(_u32(b) - _u32(a)) < 0


def between32(seq: int, low: int, high: int) -> bool:
    """low <= seq <= high (both inclusive) in the 32-bit sequence space."""
    return ((_u32(high) - _u32(low)) & _MASK32) >= ((_u32(seq) - low) & _MASK32)


def diff64(a: int, b: int) -> int:
    """Signed distance a - b in the 64-bit DSN space, in [-2^63, 2^63)."""
    return _signed64(_u64(a) - _u64(b))


def before64(a: int, b: int) -> bool:
    return _signed64(_u64(a) - _u64(b)) < 0


def after64(a: int, b: int) -> bool:
    return _signed64(_u64(b) - _u64(a)) < 0


def between64(seq: int, low: int, high: int) -> bool:
    """low <= seq <= high (both inclusive) in the 64-bit DSN space."""
    return ((_u64(high) - _u64(low)) & _MASK64) >= ((_u64(seq) - low) & _MASK64)


def expand_dsn32(expected: int, low32: int) -> int:
    """The 64-bit DSN with these low 32 bits nearest to expected (RFC 8684 3.3.1 4-byte DSN).

    A distance of exactly 2^31 is taken as behind expected; the result wraps modulo 2^64.
    """
    return (_u64(expected) + _signed32(_u32(low32) - (expected & _MASK32))) & _MASK64
