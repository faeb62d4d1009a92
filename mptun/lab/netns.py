"""Small helpers to run commands and set sysctls inside a named network namespace, and
`Namespaces`: a few namespaces joined by veth pairs, for the tests and benchmarks that
need no router (the multi-path `Lab` in topology.py is for the rest).

Everything here is a thin, checked wrapper over `ip netns exec`; failures raise
LabError with the command and its stderr, so a broken lab never half-works.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence

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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(ns, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise LabError(f"nothing listens on port {port} in {ns} after {timeout}s")


class Namespaces:
    """Namespaces named <prefix><random tag>-<role>, one per role (`ns.client` is the name of
    role "client"), joined by veth pairs with veth(). A context manager: down() ends every
    process still in them and deletes them, whatever up() got to."""

    def __init__(self, prefix: str, *roles: str):
        tag = secrets.token_hex(3)
        self.names = {role: f"{prefix}{tag}-{role}" for role in roles}
        self.created: list[str] = []

    def __getattr__(self, role: str) -> str:
        try:
            return self.__dict__["names"][role]
        except KeyError:
            raise AttributeError(role) from None

    def __enter__(self) -> Namespaces:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> Namespaces:
        for ns in self.names.values():
            run(None, ["ip", "netns", "add", ns])
            self.created.append(ns)
            run(ns, ["ip", "link", "set", "lo", "up"])
        return self

    def veth(self, role_a: str, dev_a: str, role_b: str, dev_b: str,
             addrs_a: Iterable[str] = (), addrs_b: Iterable[str] = ()) -> None:
        """A veth pair, dev_a in role_a's namespace and dev_b in role_b's, both up, with these
        addresses ("198.18.0.1/24"; IPv6 ones without duplicate address detection)."""
        a, b = self.names[role_a], self.names[role_b]
        run(None, ["ip", "link", "add", dev_a, "netns", a, "type", "veth", "peer", "name", dev_b, "netns", b])
        for ns, dev, addrs in ((a, dev_a, addrs_a), (b, dev_b, addrs_b)):
            for addr in addrs:
                run(ns, ["ip", "addr", "add", addr, "dev", dev] + (["nodad"] if ":" in addr else []))
            run(ns, ["ip", "link", "set", dev, "up"])

    def down(self) -> None:
        for ns in self.created:
            # A process left in a namespace keeps its devices alive: end what runs there first.
            for pid in pids_in(ns):
                if pid != os.getpid():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            run(None, ["ip", "netns", "del", ns], check=False)
        self.created.clear()


class WireNamespaces(Namespaces):
    """Namespaces a and b joined through a third, link, that holds only the veth ends la and lb:
    a0 -- la [link] lb -- b0, for a forwarder between them (the delay line, a tc redirect).
    The link namespace has no IPv6, so it sends no frames of its own; GRO is on at all four ends."""

    def __init__(self, prefix: str, a_addrs: Iterable[str] = (), b_addrs: Iterable[str] = ()):
        super().__init__(prefix, "a", "link", "b")
        self.a_addrs, self.b_addrs = list(a_addrs), list(b_addrs)

    def up(self) -> WireNamespaces:
        super().up()
        # Before the veths exist, so that la and lb never get an IPv6 address.
        sysctls(self.link, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
        self.veth("a", "a0", "link", "la", self.a_addrs)
        self.veth("b", "b0", "link", "lb", self.b_addrs)
        for ns, dev in ((self.a, "a0"), (self.b, "b0"), (self.link, "la"), (self.link, "lb")):
            run(ns, ["ethtool", "-K", dev, "gro", "on", "rx-gro-list", "off"])
        return self
