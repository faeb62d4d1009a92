"""`up` performs a plan, journaling each undo before the step; `down` undoes a journal.

`up` either completes and returns the open TUN (an Applied), or undoes what it did
and raises NetcfgError: no half states. `down` runs the journal backwards, removes
exactly what `up` created (objects already gone are fine: the TUN and its routes
vanish with the daemon), and deletes the journal when nothing is left.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from mptun.netcfg import capture, netns, routing
from mptun.netcfg.config import Layout, NetConfig
from mptun.netcfg.errors import NetcfgError
from mptun.netcfg.interfaces import (RESERVED_PORTS, Interface, _discover, get_gro, read_sysctl, set_gro,
                                     write_sysctl)
from mptun.netcfg.journal import Journal, journal_path
from mptun.netcfg.plan import (AddAddress, AddCaptureFilter, AddIngressQdisc, AddRoute, AddRule, CreateTun, Op,
                               Plan, SetDeviceSysctl, SetGro, SetLink, SetSysctl, build_plan, op_from_json,
                               parse_ports, unreserve_ports)
from mptun.netcfg.tun import TunDevice, open_tun

# Undo tolerates these: the object is gone already (with its device, or removed by hand).
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.ENXIO, errno.EADDRNOTAVAIL}


@dataclass
class Applied:
    """mptun's network configuration, in place. Holding `tun` open keeps it alive."""

    cfg: NetConfig
    plan: Plan
    tun: TunDevice
    journal_path: str
    netns: str | None

    @property
    def interfaces(self) -> tuple[Interface, ...]:
        return self.plan.host.interfaces

    @property
    def layout(self) -> Layout:
        return self.cfg.layout

    def close(self) -> None:
        """Close the TUN fd: the device, its addresses and routes vanish; the rest stays until down()."""
        self.tun.close()

    def down(self) -> list[str]:
        self.close()
        return down(self.cfg.tun_name, journal_dir=os.path.dirname(self.journal_path), netns_name=self.netns)


def _why(e: BaseException) -> str:
    if isinstance(e, NetlinkError):
        return os.strerror(e.code)
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _gone(e: BaseException) -> bool:
    code = e.code if isinstance(e, NetlinkError) else getattr(e, "errno", None)
    return code in _GONE


# ---------------------------------------------------------------- performing

class _Executor:
    """Performs operations in one namespace (the caller has entered it)."""

    def __init__(self, ipr: IPRoute, journal: Journal):
        self.ipr = ipr
        self.journal = journal
        self.tun: TunDevice | None = None

    def index_of(self, name: str) -> int:
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise NetlinkError(errno.ENODEV, f"no device {name}")
        return found[0]

    def do(self, op: Op) -> None:
        if op.journaled:
            # The undo is on disk before the object can exist.
            self.journal.append(op.to_json())
        try:
            extra = getattr(self, "_do_" + op.kind)(op)
        except BaseException:
            if op.journaled:
                # It was not created: its undo must not run (it could remove
                # an object that is not ours).
                self.journal.drop_last()
            raise
        if extra:
            # Details for a more careful undo; without them undo still works.
            self.journal.update_last(**extra)

    def _do_sysctl(self, op: SetSysctl) -> dict:
        current = read_sysctl(op.key)
        if current != op.old:
            raise NetcfgError(f"{op.key} changed while mptun was starting (now {current!r})")
        write_sysctl(op.key, op.new)
        return {"written": read_sysctl(op.key)}

    def _do_tun(self, op: CreateTun) -> dict:
        self.tun = open_tun(op.name, op.flags, op.vnet_hdr_size, op.offload)
        return {"ifindex": self.tun.ifindex}

    def _do_device_sysctl(self, op: SetDeviceSysctl) -> None:
        try:
            write_sysctl(op.key, op.value)
        except FileNotFoundError:
            pass  # IPv6 is disabled on this host: nothing to turn off

    def _do_link(self, op: SetLink) -> None:
        kw = {}
        if op.mtu:
            kw["mtu"] = op.mtu
        if op.txqueuelen:
            kw["txqlen"] = op.txqueuelen
        if op.up:
            kw["state"] = "up"
        self.ipr.link("set", index=self.index_of(op.name), **kw)

    def _do_addr(self, op: AddAddress) -> None:
        addr, _, plen = op.address.partition("/")
        self.ipr.addr("add", index=self.index_of(op.dev), address=addr, prefixlen=int(plen))

    def _do_route(self, op: AddRoute) -> None:
        routing.add_route(self.ipr, op, self.index_of)

    def _do_rule(self, op: AddRule) -> None:
        routing.add_rule(self.ipr, op)

    def _do_gro(self, op: SetGro) -> dict:
        set_gro(op.dev, op.new)
        # What the device reports now (None: it cannot say); undo acts only on this record.
        return {"gro": get_gro(op.dev)}

    def _do_qdisc(self, op: AddIngressQdisc) -> dict:
        index = self.index_of(op.dev)
        capture.add_qdisc(self.ipr, index)
        return {"ifindex": index}

    def _do_filter(self, op: AddCaptureFilter) -> dict:
        handle = capture.add_filter(self.ipr, self.index_of(op.dev), op.parent, op.prio, op.keys,
                                    self.index_of(op.target))
        return {"handle": handle}

    # ICMP capture filters (AddIcmpCaptureFilter) differ from the TCP ones only in their keys.
    _do_icmp_filter = _do_filter

    # -- undo: each returns a note for the caller, or None
    #
    # A step's `extra` is recorded after the step: without it (killed in between) the step may
    # or may not have happened. Undo changes only what the record and the current state show
    # to be mptun's, and says so when it leaves something that may be.

    def undo(self, op: Op, extra: dict) -> str | None:
        return getattr(self, "_undo_" + op.kind)(op, extra)

    def _undo_sysctl(self, op: SetSysctl, extra: dict) -> str | None:
        current = read_sysctl(op.key)
        if op.key == RESERVED_PORTS:
            return self._undo_reserved_ports(op, extra, current)
        # Without the record, the value is mptun's only if it is exactly what was being written.
        written = extra.get("written", op.new)
        if current == written:
            write_sysctl(op.key, op.old)
            return None
        if current == op.old:
            return None
        return f"{op.key} was changed by someone else (now {current!r}); left as it is"

    def _undo_reserved_ports(self, op: SetSysctl, extra: dict, current: str) -> str | None:
        if parse_ports(current) == parse_ports(op.old):
            return None   # never written, or put back already
        written = extra.get("written")
        if written is None:
            # Killed between writing and recording: ours only if exactly what was being written.
            if parse_ports(current) != parse_ports(op.new):
                return f"{op.key} was changed by someone else (now {current!r}); left as it is"
            written = current
        value = unreserve_ports(current, op.old, written)
        if value is None:
            return (f"{op.key} was rewritten by someone else (now {current!r}), without all the ports "
                    f"mptun reserved; left as it is")
        write_sysctl(op.key, value)
        return None

    def _undo_tun(self, op: CreateTun, extra: dict) -> str | None:
        if self.tun is not None:
            self.tun.close()
        found = self.ipr.link_lookup(ifname=op.name)
        if not found:
            return None
        if extra.get("ifindex") not in (None, found[0]):
            return f"{op.name} is not the device mptun created (index {found[0]}); left as it is"
        self.ipr.link("del", index=found[0])
        return None

    def _undo_route(self, op: AddRoute, extra: dict) -> None:
        routing.del_route(self.ipr, op, self.index_of)

    def _undo_rule(self, op: AddRule, extra: dict) -> None:
        routing.del_rule(self.ipr, op)

    def _undo_gro(self, op: SetGro, extra: dict) -> str | None:
        if not self.ipr.link_lookup(ifname=op.dev):
            return None   # the device is gone, and its setting with it
        current = get_gro(op.dev)
        if current == op.old:
            return None   # never set, or set back since
        state = {True: "on", False: "off", None: "unreadable"}[current]
        if "gro" not in extra:
            return (f"GRO on {op.dev} is {state}: mptun died while setting it, so that may be someone "
                    f"else's doing; left as it is")
        if extra["gro"] != op.new:
            return None   # the device did not take the setting: mptun changed nothing
        if current != op.new:
            return f"GRO on {op.dev} is {state}, not what mptun set; left as it is"
        set_gro(op.dev, op.old)
        return None

    def _undo_qdisc(self, op: AddIngressQdisc, extra: dict) -> str | None:
        found = self.ipr.link_lookup(ifname=op.dev)
        if not found:
            return None   # gone with its device
        index = found[0]
        if "ifindex" not in extra:
            # Killed between journaling and recording: an ingress qdisc there now may be mptun's
            # or one someone else added meanwhile; removing someone else's is the worse mistake.
            if not any(q.get_attr("TCA_KIND") == "ingress" for q in self.ipr.get_qdiscs(index=index)):
                return None
            return (f"the ingress qdisc on {op.dev} may be the one mptun was adding when it died, or "
                    f"someone else's; left as it is (tc qdisc del dev {op.dev} ingress removes it)")
        if extra["ifindex"] != index:
            return f"{op.dev} is not the device mptun added an ingress qdisc to (index {index}); left as it is"
        if not capture.del_qdisc_if_unused(self.ipr, index):
            return f"the ingress qdisc on {op.dev} now holds filters of someone else; left as it is"
        return None

    def _undo_filter(self, op: AddCaptureFilter, extra: dict) -> None:
        capture.del_filter(self.ipr, self.index_of(op.dev), op.parent, op.prio, extra.get("handle"))

    _undo_icmp_filter = _undo_filter

    def undo_journal(self) -> tuple[list[str], list[str]]:
        """Undo every entry, last first. Returns (notes, failures); failed entries stay journaled."""
        notes: list[str] = []
        failures: list[str] = []
        entries = list(self.journal.entries)
        kept: list[dict] = []
        for i in range(len(entries) - 1, -1, -1):
            op = op_from_json(entries[i]["op"])
            try:
                note = self.undo(op, entries[i].get("extra", {}))
                if note:
                    notes.append(note)
            except Exception as e:
                if not _gone(e):
                    failures.append(f"{op.describe()}: {_why(e)}")
                    kept.insert(0, entries[i])
            # What is not undone yet stays on disk, should this process die now.
            self.journal.set_entries(entries[:i] + kept)
        return notes, failures


# ---------------------------------------------------------------- up / down

def up(cfg: NetConfig, *, netns_name: str | None = None, journal_dir: str | None = None) -> Applied:
    """Apply cfg in namespace netns_name (None: this one) and return the open TUN.

    Refused while a journal for cfg.tun_name exists. On any failure, everything
    done so far is undone before NetcfgError is raised. Blocking (pyroute2's
    synchronous API): from asyncio code, call it through run_in_executor."""
    path = journal_path(cfg.tun_name, journal_dir)
    _refuse_if_up(cfg.tun_name, path)
    with netns.entered(netns_name), IPRoute() as ipr:
        host = _discover(ipr, cfg)
        plan = build_plan(cfg, host)
        try:
            journal = Journal.create(path, {
                "tun": cfg.tun_name, "interfaces": list(cfg.interfaces), "netns": netns_name,
                "netns_inode": netns.current_inode(), "pid": os.getpid(), "started": time.time(),
                # Intercepted apps' sockets have this source address: down resets what a dead
                # daemon left of them.
                "app_addr": str(cfg.layout.tun_addr)})
        except FileExistsError:
            _refuse_if_up(cfg.tun_name, path)
            raise
        ex = _Executor(ipr, journal)
        step = None
        try:
            for step in plan.ops:
                ex.do(step)
        except BaseException as e:
            _, failures = ex.undo_journal()
            if ex.tun is not None:
                ex.tun.close()
            if failures:
                raise NetcfgError(f"could not {step.describe()}: {_why(e)}; undoing failed too "
                                  f"({failures[0]}): `mptun down` retries it") from e
            journal.remove()
            if isinstance(e, NetcfgError) or not isinstance(e, Exception):
                raise
            raise NetcfgError(f"could not {step.describe()}: {_why(e)}; nothing was changed") from e
        assert ex.tun is not None
        return Applied(cfg=cfg, plan=plan, tun=ex.tun, journal_path=path, netns=netns_name)


def _reset_orphaned_apps(app_addr: str | None) -> int:
    """Apps' sockets still bound to the TUN's address when the daemon is gone (killed): nobody
    will ever answer them (the TUN went with the daemon), so reset them now, as the daemon would
    have (SOCK_DESTROY: the app gets ECONNABORTED at once instead of hanging)."""
    if not app_addr:
        return 0
    from mptun.io import sockdiag

    try:
        left = sockdiag.sockets_from(ipaddress.IPv4Address(app_addr).packed)
        return sum(sockdiag.destroy(s) for s in left)
    except OSError:
        return 0        # no sock_diag destroy in this kernel: the apps time out as before


def _refuse_if_up(tun_name: str, path: str) -> None:
    if not os.path.exists(path):
        return
    try:
        ifaces = ", ".join(Journal.load(path).header.get("interfaces", [])) or "?"
    except (NetcfgError, FileNotFoundError):
        ifaces = "?"
    raise NetcfgError(f"mptun is already up on {tun_name} ({ifaces}; journal {path}); mptun down first")


def is_up(tun_name: str = "mptun0", *, journal_dir: str | None = None) -> bool:
    """True while a journal exists: mptun is up, or died and still needs `down`."""
    return os.path.exists(journal_path(tun_name, journal_dir))


def down(tun_name: str = "mptun0", *, journal_dir: str | None = None, netns_name: str | None = None) -> list[str]:
    """Undo what `up` recorded for tun_name, in the namespace it was applied in.

    Returns notes about things left alone on purpose (changed by someone else).
    Raises NetcfgError if there is no journal, or if some step failed (the
    journal then keeps what is left, and down can be run again)."""
    path = journal_path(tun_name, journal_dir)
    if not os.path.exists(path):
        raise NetcfgError(f"mptun is not up on {tun_name} (no journal at {path})")
    journal = Journal.load(path)
    ns = netns_name if netns_name is not None else journal.header.get("netns")
    if ns is not None and not netns.exists(ns):
        # Everything mptun created lived in that namespace and went with it.
        journal.remove()
        return [f"network namespace {ns} is gone, and with it all mptun had set up there"]
    if not journal.entries:
        # up died before its first step (maybe before the journal's header was written, so
        # the namespace is unknown): there is nothing to undo.
        journal.remove()
        return []
    with netns.entered(ns), IPRoute() as ipr:
        if netns.current_inode() != journal.header.get("netns_inode"):
            raise NetcfgError(f"the journal {path} was written in another network namespace; run mptun down "
                              f"there, or delete the journal if that namespace is gone")
        resets = _reset_orphaned_apps(journal.header.get("app_addr"))
        ex = _Executor(ipr, journal)
        notes, failures = ex.undo_journal()
    if resets:
        notes.insert(0, f"reset {resets} intercepted app connection(s) left without a daemon")
    if failures:
        raise NetcfgError(f"mptun down left {len(failures)} step(s) undone, first: {failures[0]}; "
                          f"the journal {path} keeps them")
    journal.remove()
    return notes
