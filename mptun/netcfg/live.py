"""Per-path configuration while mptun is up: installed when an interface becomes usable,
removed when it stops being usable, journaled like everything `up` does.

What a path needs (plan.path_ops: its subflow route, its own table, the capture filters
for its address, the rule from its address) depends on its address, gateway and MTU.
`refresh(i)` reads interface i again and makes what is installed equal to what it needs
now: nothing while it is unusable (down, no carrier, no address, no default route), the
ops for its current address while it is usable. A changed address, gateway or MTU, or a
flap the caller saw (the kernel flushed the routes meanwhile), is a removal and a new
install. mptun/io/pathmon.py says when to look.

The journal always lists what is in place: an install journals each op before doing it
(as `up` does); a removal undoes the ops, tolerating objects the kernel removed already
(its routes through a device that went down, everything of a device that was deleted),
then drops their entries in one write. A process killed in between leaves entries of
objects that are gone, which `down` treats as done. Blocking netlink requests, a few
milliseconds each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyroute2 import IPRoute

from mptun.netcfg import netns
from mptun.netcfg.apply import Applied, _Executor, _gone, _why
from mptun.netcfg.interfaces import Interface, ask_gateway, gateway_neighbour, read_interface
from mptun.netcfg.journal import Journal
from mptun.netcfg.plan import Op, device_ops, path_ops, path_problem


@dataclass
class Refresh:
    """What refresh(i) did."""

    removed: bool = False     # path i's configuration was removed
    installed: bool = False   # path i's configuration (for its current address) was installed
    notes: list[str] = field(default_factory=list)   # objects undo could not remove (down retries them)


def needs_reinstall(installed: tuple[Op, ...], wanted: tuple[Op, ...], flapped: bool) -> bool:
    """Whether what is installed must go: it is there and the interface needs something else
    now (wanted is () while it is unusable), or a flap may have taken parts of it."""
    return bool(installed) and (flapped or installed != wanted)


class LivePaths:
    """The path part of an Applied configuration, kept in line with the interfaces."""

    def __init__(self, applied: Applied):
        self.cfg = applied.cfg
        self.netns = applied.netns
        self.interfaces: list[Interface] = list(applied.interfaces)
        self.installed: list[tuple[Op, ...]] = list(applied.plan.paths)
        # Why each path is not configured now (None: it is).
        self.why: list[str | None] = [None if ops else iface.why for ops, iface in
                                      zip(self.installed, self.interfaces)]
        # The device each path's device_ops (GRO, ingress qdisc) went to.
        self._devices = [iface.index for iface in self.interfaces]
        with netns.entered(self.netns):
            self.ipr = IPRoute()
        self.journal = Journal.load(applied.journal_path)
        self._ex = _Executor(self.ipr, self.journal)

    def close(self) -> None:
        self.ipr.close()

    def refresh(self, i: int, flapped: bool = False) -> Refresh:
        """Read interface i and bring its configuration in line. `flapped`: it went down
        (or lost its address) since the last look, even if it is back now."""
        out = Refresh()
        with netns.entered(self.netns):
            iface = read_interface(self.ipr, self.cfg.interfaces[i])
            wanted = path_ops(self.cfg, i, iface) if iface.usable else ()
            if needs_reinstall(self.installed[i], wanted, flapped):
                out.notes += self._remove(i)
                out.removed = True
                if iface.usable:
                    # Read again: its tc priorities are free now (the check below looks).
                    iface = read_interface(self.ipr, iface.name)
            self.interfaces[i] = iface
            if not self.installed[i]:
                why = path_problem(self.cfg, iface, self._taken(i))
                if why is None:
                    why = self._install(i, iface)
                    out.installed = why is None
                self.why[i] = why
        return out

    def gateway(self, i: int) -> tuple[int, str | None]:
        """(NUD state, MAC if usable) of path i's gateway in the neighbour table."""
        with netns.entered(self.netns):
            return gateway_neighbour(self.ipr, self.interfaces[i])

    def ask_gateway(self, i: int) -> None:
        with netns.entered(self.netns):
            ask_gateway(self.ipr, self.interfaces[i])

    def _taken(self, i: int) -> dict:
        return {self.interfaces[j].addr.ip: self.interfaces[j].name
                for j in range(len(self.installed)) if j != i and self.installed[j]}

    def _install(self, i: int, iface: Interface) -> str | None:
        """Perform path i's ops for iface (and the device's own, if this is a new device);
        on failure undo them and say why."""
        done: list[Op] = []
        op = None
        try:
            if iface.index != self._devices[i]:
                self._forget_device(iface.name)
                self._devices[i] = iface.index
                for op in device_ops(self.cfg, iface):
                    self._ex.do(op)
            for op in path_ops(self.cfg, i, iface):
                self._ex.do(op)
                done.append(op)
        except Exception as e:
            self.installed[i] = tuple(done)
            self._remove(i)
            return f"could not {op.describe() if op else 'write the journal'}: {_why(e)}"
        self.installed[i] = tuple(done)
        return None

    def _remove(self, i: int) -> list[str]:
        """Undo path i's ops, last first; an entry stays journaled only if its undo failed."""
        failures = []
        undone = []
        for op in reversed(self.installed[i]):
            entry = self.journal.find(op.to_json())
            try:
                self._ex.undo(op, entry["extra"] if entry else {})
            except Exception as e:
                if not _gone(e):
                    failures.append(f"{op.describe()}: {_why(e)}")
                    continue
            undone.append(op.to_json())
        self.journal.discard(undone)
        self.installed[i] = ()
        return failures

    def _forget_device(self, name: str) -> None:
        """The device called `name` is another one now: what the old one got (device_ops; the
        path's own ops are removed already) went with it, so its entries go (their undo would
        only note a stranger, or act on the new device)."""
        self.journal.set_entries([e for e in self.journal.entries if e["op"].get("dev") != name])
