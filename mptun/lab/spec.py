"""What a lab path is: rate, delay, loss and queue per direction, and the text form
`mptun lab up --path` and the tests write them in ('rate=100mbit,delay=10ms,loss=1%').

Pure values, checked when made; mptun.lab.topology builds the network they describe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MIN_QUEUE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Direction:
    """Shaping of one direction of a path. None / 0 means 'not shaped'."""

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    queue_bytes: int | None = None   # tbf limit; default: 50 ms at the rate, at least 64 KB

    def __post_init__(self):
        if self.rate_mbit is not None and not self.rate_mbit > 0:
            raise ValueError(f"rate must be positive, not {self.rate_mbit}")
        if not 0 <= self.delay_ms <= 10_000:
            raise ValueError(f"delay must be within 0..10000 ms, not {self.delay_ms}")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError(f"loss must be within 0..100 %, not {self.loss_pct}")
        if self.queue_bytes is not None and self.queue_bytes < 1500:
            raise ValueError(f"queue must hold at least one packet (1500 bytes), not {self.queue_bytes}")

    @property
    def tbf_limit(self) -> int:
        if self.queue_bytes is not None:
            return self.queue_bytes
        assert self.rate_mbit is not None
        return max(MIN_QUEUE_BYTES, int(self.rate_mbit * 1e6 / 8 * 0.050))

    @property
    def tbf_burst(self) -> int:
        # Small enough that a transfer never runs measurably above the rate,
        # large enough for the timer granularity (4 ms worth) and one GSO-less frame.
        assert self.rate_mbit is not None
        return max(16 * 1024, int(self.rate_mbit * 1e6 / 8 * 0.004))


@dataclass(frozen=True)
class PathSpec:
    """One path between client and router: `up` is client->server, `down` server->client."""

    up: Direction = field(default_factory=Direction)
    down: Direction = field(default_factory=Direction)

    @classmethod
    def symmetric(cls, rate_mbit=None, delay_ms=0.0, loss_pct=0.0, queue_bytes=None) -> PathSpec:
        d = Direction(rate_mbit, delay_ms, loss_pct, queue_bytes)
        return cls(up=d, down=d)

    @classmethod
    def parse(cls, text: str) -> PathSpec:
        """Parse 'rate=100mbit,delay=10ms,loss=1%,queue=200kb'; prefix a key with
        up- or down- to set one direction only (e.g. 'rate=50,up-rate=10')."""
        both: dict = {}
        per = {"up": {}, "down": {}}
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"path option {item!r}: expected key=value")
            target = both
            for d in ("up", "down"):
                if key.startswith(d + "-"):
                    target, key = per[d], key[len(d) + 1:]
            if key not in _PARSERS:
                raise ValueError(f"path option {key!r}: expected one of {', '.join(_PARSERS)}")
            name, conv = _PARSERS[key]
            target[name] = conv(value)
        return cls(up=Direction(**{**both, **per["up"]}), down=Direction(**{**both, **per["down"]}))

    def describe(self) -> str:
        def one(d: Direction) -> str:
            parts = [f"{d.rate_mbit:g} Mbit/s" if d.rate_mbit else "unlimited"]
            if d.delay_ms:
                parts.append(f"{d.delay_ms:g} ms")
            if d.loss_pct:
                parts.append(f"{d.loss_pct:g}% loss")
            return " ".join(parts)
        u, d = one(self.up), one(self.down)
        return u if u == d else f"up {u}, down {d}"


def _number(value: str, units: dict[str, float]) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z%/]*)\s*", value)
    if not m:
        raise ValueError(f"not a number: {value!r}")
    unit = m.group(2).lower()
    if unit not in units:
        raise ValueError(f"unknown unit {m.group(2)!r} in {value!r} (use {', '.join(u for u in units if u)})")
    return float(m.group(1)) * units[unit]


_PARSERS = {
    "rate": ("rate_mbit", lambda v: _number(v, {"": 1, "mbit": 1, "mbps": 1, "gbit": 1000, "kbit": 0.001})),
    "delay": ("delay_ms", lambda v: _number(v, {"": 1, "ms": 1, "s": 1000, "us": 0.001})),
    "loss": ("loss_pct", lambda v: _number(v, {"": 1, "%": 1})),
    "queue": ("queue_bytes", lambda v: int(_number(v, {"": 1, "b": 1, "kb": 1000, "k": 1000,
                                                      "mb": 1e6, "m": 1e6, "pkt": 1500, "pkts": 1500}))),
}
