"""Small helpers to run commands and set sysctls inside a named network namespace.

Everything here is a thin, checked wrapper over `ip netns exec`; failures raise
LabError with the command and its stderr, so a broken lab never half-works.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

NETNS_DIR = "/run/netns"


class LabError(RuntimeError):
    """A lab operation failed; the message says which command and why."""


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """argv prefixed so that it runs inside namespace `ns` (or the current one for None)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run(ns: str | None, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run argv in namespace ns and return the completed process (text mode)."""
    full = ns_argv(ns, argv)
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise LabError(f"{full[0]}: command not found (scripts/setup.sh installs it)") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(full)}") from e
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(full)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Write one sysctl inside ns via /proc, which needs no sysctl binary."""
    sysctls(ns, {key: value})


def sysctls(ns: str, values: dict[str, str | int]) -> None:
    """Write several sysctls inside ns with one process; stops at the first failure."""
    script = " && ".join(
        f"echo '{v}' > /proc/sys/{k.replace('.', '/')}" for k, v in values.items())
    run(ns, ["sh", "-c", script])


def exists(ns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, ns))


def list_namespaces(prefix: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def pids_in(ns: str) -> list[int]:
    """Pids of processes whose network namespace is ns (`ip netns pids`)."""
    proc = run(None, ["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def wait_listening(ns: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on TCP `port` in ns (for servers that print no 'ready')."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(ns, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise LabError(f"nothing listens on port {port} in {ns} after {timeout}s")
