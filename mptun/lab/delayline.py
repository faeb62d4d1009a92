"""The lab's delay line: a layer-2 wire between two interfaces that holds each frame for a fixed time per direction.

`python -m mptun.lab.delayline --a IF --b IF --delay-ms X` forwards until SIGTERM/SIGINT, prints "ready" once
both directions are bound and writes its statistics as JSON on exit; start_delayline() runs it inside a netns.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# SIGUSR1 rewrites the stats file without stopping (a snapshot for a running test)
_SNAPSHOT_SIGNAL = signal.SIGUSR1

EXIT_OK = 0
EXIT_ERROR = 1          # missing privilege, or another error of the system
EXIT_NO_INTERFACE = 2
EXIT_NOT_BUILT = 3
EXIT_USAGE = 4


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m mptun.lab.delayline",
        description="Forward frames between two interfaces, delayed (a userspace netem-style delay).",
    )
    p.add_argument("--a", required=True, metavar="IFACE", help="first interface")
    p.add_argument("--b", required=True, metavar="IFACE", help="second interface")
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay a -> b (0: a plain wire)")
    p.add_argument("--delay-ms-back", type=float, default=None, help="one-way delay b -> a (default: --delay-ms)")
    p.add_argument("--ring-mb", type=float, default=64.0,
                   help="bytes held per direction before tail drop (default 64 MB; size it >= rate x delay)")
    p.add_argument("--stats-file", default=None, help="write statistics as JSON here on exit (and on SIGUSR1)")
    return p.parse_args(argv)


def _write_stats(path, line, args, started):
    stats = {
        "a": args.a,
        "b": args.b,
        "delay_ms": line.delay_ms,
        "delay_ms_back": line.delay_back_ms,
        "ring_bytes": line.ring_bytes,
        "uptime_s": round(time.monotonic() - started, 3),
        **line.stats(),
    }
    if path:
        # rename so that a reader never sees half a file
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(tmp, path)
    return stats


def _fail(code, msg):
    print(f"delayline: {msg}", file=sys.stderr, flush=True)
    return code


def main(argv=None) -> int:
    args = _parse_args(argv)
    # Blocked before any thread exists, so the forwarding threads inherit the
    # mask and a signal that arrives during setup waits for sigwait().
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS | {_SNAPSHOT_SIGNAL})
    if args.delay_ms < 0 or (args.delay_ms_back is not None and args.delay_ms_back < 0):
        return _fail(EXIT_USAGE, "delays must be >= 0")
    try:
        from mptun._fast.delayline import DelayLine
    except ImportError as e:
        return _fail(EXIT_NOT_BUILT, f"compiled module mptun._fast.delayline is not built ({e}); "
                                     "build: MPTUN_BUILD_ONLY=delayline python setup.py build_ext --inplace")
    try:
        line = DelayLine(args.a, args.b, args.delay_ms, args.delay_ms_back,
                         ring_bytes=int(args.ring_mb * (1 << 20)))
    except LookupError as e:
        return _fail(EXIT_NO_INTERFACE, str(e))
    except PermissionError:
        return _fail(EXIT_ERROR, "packet sockets need CAP_NET_RAW and CAP_NET_ADMIN (run as root)")
    except ValueError as e:
        return _fail(EXIT_USAGE, str(e))
    except (OSError, MemoryError) as e:
        return _fail(EXIT_ERROR, str(e))
    started = time.monotonic()
    line.start()
    print("ready", flush=True)
    try:
        while True:
            sig = signal.sigwait(_STOP_SIGNALS | {_SNAPSHOT_SIGNAL})
            if sig == _SNAPSHOT_SIGNAL:
                _write_stats(args.stats_file, line, args, started)
                continue
            break
        line.stop()
        _write_stats(args.stats_file, line, args, started)
    except OSError as e:
        return _fail(EXIT_ERROR, f"cannot write statistics: {e}")
    finally:
        line.close()
    return EXIT_OK


class DelayLineProcess:
    """A running delay line process: `.pid`, `.stop() -> stats dict`; also a context manager (stops on exit)."""

    def __init__(self, proc: subprocess.Popen, stats_file: str, own_stats_file: bool, stderr_file):
        self.proc = proc
        self.stats_file = stats_file
        self._own_stats_file = own_stats_file
        self._stderr_file = stderr_file
        self._stats: dict | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace").strip()

    def snapshot(self, timeout: float = 5.0) -> dict:
        """Statistics of the running process (it rewrites the stats file on SIGUSR1)."""
        before = os.stat(self.stats_file).st_mtime_ns if os.path.exists(self.stats_file) else None
        self.proc.send_signal(_SNAPSHOT_SIGNAL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.stats_file) and os.stat(self.stats_file).st_mtime_ns != before:
                with open(self.stats_file) as f:
                    return json.load(f)
            time.sleep(0.02)
        raise TimeoutError("delay line did not write a statistics snapshot")

    def stats(self) -> dict:
        """The final statistics once stopped, else a snapshot of the running process."""
        if self._stats is not None:
            return self._stats
        return self.snapshot()

    def stop(self, timeout: float = 10.0) -> dict:
        """SIGTERM, wait for a clean exit, return the final statistics (idempotent)."""
        if self._stats is not None:
            return self._stats
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise RuntimeError(f"delay line pid {self.pid} ignored SIGTERM; killed")
        if self.proc.returncode != 0:
            raise RuntimeError(f"delay line exited {self.proc.returncode}: {self.stderr_text()}")
        with open(self.stats_file) as f:
            self._stats = json.load(f)
        if self._own_stats_file:
            os.unlink(self.stats_file)
        self._stderr_file.close()
        return self._stats

    def kill(self) -> None:
        """For cleanup after a failure: ends the process without collecting statistics."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self._own_stats_file and os.path.exists(self.stats_file):
            os.unlink(self.stats_file)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.stop()
        else:
            self.kill()


def start_delayline(netns: str | None, a: str, b: str, delay_ms: float, delay_back_ms: float | None = None, *,
                    ring_mb: float | None = None, stats_file: str | None = None,
                    ready_timeout: float = 10.0) -> DelayLineProcess:
    """Starts the delay line between a and b inside netns (None: this namespace) and waits for "ready"."""
    cmd = [sys.executable, "-m", "mptun.lab.delayline", "--a", a, "--b", b, "--delay-ms", repr(float(delay_ms))]
    if delay_back_ms is not None:
        cmd += ["--delay-ms-back", repr(float(delay_back_ms))]
    if ring_mb is not None:
        cmd += ["--ring-mb", repr(float(ring_mb))]
    own = stats_file is None
    if own:
        fd, stats_file = tempfile.mkstemp(prefix="mpt-delayline-", suffix=".json")
        os.close(fd)
        os.unlink(stats_file)
    cmd += ["--stats-file", stats_file]
    if netns is not None:
        # `ip netns exec` execs the command, so the pid is the delay line's own
        cmd = ["ip", "netns", "exec", netns] + cmd
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    stderr_file = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr_file, stdin=subprocess.DEVNULL, env=env)
    handle = DelayLineProcess(proc, stats_file, own, stderr_file)
    deadline = time.monotonic() + ready_timeout
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            break
    if line.strip() == b"ready":
        return handle
    if not line:
        # EOF on stdout: it is exiting; wait for its status (and its error on stderr)
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        handle.kill()
        raise TimeoutError(f"delay line between {a} and {b} not ready after {ready_timeout} s")
    handle.kill()
    raise RuntimeError(f"delay line between {a} and {b} failed (exit {proc.returncode}): {handle.stderr_text()}")


if __name__ == "__main__":
    sys.exit(main())
