"""ControlServer: the daemon's Unix socket (`mptun status`, `mptun set`): one request line in (a name and
its arguments, separated by spaces), one JSON reply out.

Only root can reach it (mode 0600 in the run directory). accept() failing at the fd limit pauses
the socket briefly instead of spinning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable

from mptun.io.loop import READ, EventLoop

log = logging.getLogger("mptun")

ACCEPT_PAUSE = 0.1
ACCEPT_WARN_EVERY = 10.0


class AcceptGuard:
    """Counts accept() failures, warns at most once per period, and pauses the listening socket."""

    def __init__(self, loop: EventLoop, name: str):
        self.loop = loop
        self.name = name
        self._last_warning: float | None = None

    def failed(self, s: socket.socket, e: OSError, handler: Callable[[int], None], now: float) -> None:
        self.loop.counters["accept_errors"] += 1
        if self._last_warning is None or now - self._last_warning >= ACCEPT_WARN_EVERY:
            self._last_warning = now
            log.warning("accept on the %s: %s (pausing it for %.0f ms)", self.name, e.strerror or e,
                        ACCEPT_PAUSE * 1000)
        # The connection stays queued in the kernel, so the socket stays readable: stop watching it.
        self.loop.pause(s.fileno(), ACCEPT_PAUSE, handler)


class ControlServer:
    def __init__(self, loop: EventLoop, path: str, handlers: dict[str, Callable[..., dict]]):
        self.loop = loop
        self.path = path
        self.handlers = handlers
        self.guard = AcceptGuard(loop, "control socket")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
            os.chmod(path, 0o600)
            self.sock.listen(16)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        loop.watch(self.sock.fileno(), READ, self._on_ready)

    def _on_ready(self, ev: int) -> None:
        try:
            s, _ = self.sock.accept()
        except BlockingIOError:
            return
        except OSError as e:
            self.guard.failed(self.sock, e, self._on_ready, time.monotonic())
            return
        with s:
            s.settimeout(1.0)
            try:
                req = s.recv(4096).decode(errors="replace").strip()
                name, *args = req.split() or [""]
                handler = self.handlers.get(name)
                if handler is None:
                    reply = {"error": f"unknown request {req!r}"}
                else:
                    try:
                        reply = handler(*args)
                    except (TypeError, ValueError) as e:
                        reply = {"error": str(e)}
                s.sendall(json.dumps(reply).encode() + b"\n")
            except OSError as e:
                log.warning("control: %s", e)

    def close(self) -> None:
        self.loop.forget(self.sock.fileno())
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
