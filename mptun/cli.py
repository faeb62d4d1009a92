"""The `mptun` command line. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys

from mptun import __version__

EXIT_USAGE = 2
EXIT_FAIL = 1


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status EXIT_FAIL."""


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CliError(f"{what} needs root (CAP_NET_ADMIN): run it with sudo")


# ---------------------------------------------------------------- lab

def cmd_lab_up(args) -> int:
    from mptun.lab import Lab, PathSpec

    _need_root("mptun lab up")
    specs = [PathSpec.parse(p) for p in (args.path or ["rate=100mbit,delay=10ms", "rate=50mbit,delay=25ms"])]
    lab = Lab(specs, name=args.name, source_routing=args.kernel_mptcp)
    lab.up()
    if args.kernel_mptcp:
        lab.enable_kernel_mptcp()
    print(lab.describe())
    print(f"enter the client:   ip netns exec {lab.client} bash")
    print(f"enter the server:   ip netns exec {lab.server} bash")
    print(f"remove it:          mptun lab down {lab.name}")
    return 0


def cmd_lab_down(args) -> int:
    from mptun.lab import list_labs, teardown

    _need_root("mptun lab down")
    names = list_labs() if args.all else [args.name]
    if not args.all and args.name not in list_labs():
        raise CliError(f"no lab named {args.name!r} (mptun lab list shows them)")
    for name in names:
        removed = teardown(name)
        print(f"lab {name}: removed {len(removed)} namespaces and links")
    return 0


def cmd_lab_list(args) -> int:
    from mptun.lab import list_labs

    for name in list_labs():
        print(name)
    return 0


# ---------------------------------------------------------------- up / down / status

def _run_dir(args) -> str:
    from mptun.netcfg import JOURNAL_DIR

    return args.run_dir or JOURNAL_DIR


def _daemon_pid(run_dir: str, tun: str) -> int | None:
    """The pid of the running daemon for tun, or None (no pid file, dead, or someone else's pid)."""
    from mptun.daemon import run_paths

    try:
        with open(run_paths(run_dir, tun)["pid"]) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_daemon(pid) else None


def _is_daemon(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"mptun.daemon" in argv and state not in ("Z", "X")


class _Lock:
    """`up` and `down` of one TUN, one at a time: an flock on the TUN's log file.

    `up` holds it from its first check until the daemon is ready (or has failed), so a `down`
    that comes meanwhile waits, then finds the daemon's pid and stops it. The lock is taken on an
    open file of its own: the daemon's inherited log descriptor never holds it.
    """

    def __init__(self, run_dir: str, tun: str, timeout: float = 90.0):
        from mptun.daemon import run_paths

        self.path = run_paths(run_dir, tun)["log"]
        self.timeout = timeout
        self.fd = -1

    def __enter__(self):
        import fcntl
        import time

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise CliError("another mptun up or down is still running on this TUN") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        os.close(self.fd)   # releases the lock
        return False


def cmd_up(args) -> int:
    _need_root("mptun up")
    from mptun.netcfg import NetConfig

    names, backup = parse_interfaces(args.interfaces)
    from mptun.core import scheduler

    if args.scheduler not in scheduler.SCHEDULERS:
        raise CliError(f"unknown scheduler {args.scheduler!r} (known: {', '.join(sorted(scheduler.SCHEDULERS))})")
    args.backup = backup
    fields = {"interfaces": names, "tun_name": args.tun}
    if args.dest:
        fields["dest"] = list(args.dest)
    if args.exclude:
        fields["exclude"] = list(args.exclude)
    NetConfig(**fields)   # a NetcfgError here is the user's mistake, said in one line
    run_dir = _run_dir(args)
    with _Lock(run_dir, args.tun):
        return _up_locked(args, fields, run_dir)


def _up_locked(args, fields: dict, run_dir: str) -> int:
    import json
    import subprocess

    from mptun.daemon import run_paths
    from mptun.netcfg import is_up

    if _daemon_pid(run_dir, args.tun) is not None or is_up(args.tun, journal_dir=run_dir):
        raise CliError(f"mptun is already up on {args.tun}; mptun down first")
    os.makedirs(run_dir, exist_ok=True)
    files = run_paths(run_dir, args.tun)
    argv = [sys.executable, "-m", "mptun.daemon", "--config", json.dumps(fields), "--run-dir", run_dir]
    if args.checksums:
        argv.append("--checksums")
    argv += ["--scheduler", args.scheduler]
    for name in args.backup:
        argv += ["--backup", name]
    r, w = os.pipe()
    try:
        with open(files["log"], "ab") as logf:
            proc = subprocess.Popen(argv + ["--ready-fd", str(w)], pass_fds=(w,), stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=logf, start_new_session=True, env=_daemon_env(),
                                    cwd="/")
    finally:
        os.close(w)
    try:
        # The pid is known from now on (the daemon writes it too, before it configures
        # anything): a `down` that comes while it is starting signals it.
        _write_pid(files["pid"], proc.pid)
        line = _read_line(r, timeout=60.0)
    finally:
        os.close(r)
    if line == "ready":
        print(f"mptun up on {', '.join(args.interfaces)} (tun {args.tun}, scheduler {args.scheduler}, "
              f"pid {proc.pid}, log {files['log']})")
        return 0
    if line.startswith("error: "):
        try:
            proc.wait(10)
        finally:
            _remove_pid(files["pid"], proc.pid)
        raise CliError(line[len("error: "):])
    proc.kill()
    proc.wait(10)
    _remove_pid(files["pid"], proc.pid)
    raise CliError(f"the daemon did not start (see {files['log']})")


ROLES = ("regular", "backup")


def parse_interfaces(specs: list[str]) -> tuple[list[str], list[str]]:
    """`eth0 wlan0:backup` -> (["eth0", "wlan0"], ["wlan0"]); a bad role or a repeated name is a
    one-line error."""
    names, backup = [], []
    for spec in specs:
        name, _, role = spec.partition(":")
        role = role or "regular"
        if not name or role not in ROLES:
            raise CliError(f"{spec!r}: write IFACE or IFACE:backup (roles: {', '.join(ROLES)})")
        if name in names:
            raise CliError(f"{name} is named twice")
        names.append(name)
        if role == "backup":
            backup.append(name)
    return names, backup


def cmd_set(args) -> int:
    _need_root("mptun set")
    st = _query(_run_dir(args), args.tun, f"set {args.interface} {args.role}")
    if "error" in st:
        raise CliError(st["error"])
    print(f"{args.interface} is {args.role} now ({st['connections']} connection(s) told with MP_PRIO)")
    return 0


def _write_pid(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def _remove_pid(path: str, pid: int) -> None:
    """Remove the pid file if it still names pid."""
    try:
        with open(path) as f:
            if f.read().strip() != str(pid):
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass


def _daemon_env() -> dict:
    # This tree's package, whether or not it is installed.
    import mptun

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(mptun.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _read_line(fd: int, timeout: float) -> str:
    import select
    import time

    deadline = time.monotonic() + timeout
    got = b""
    while b"\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        got += chunk
    return got.decode(errors="replace").split("\n")[0].strip()


def cmd_down(args) -> int:
    _need_root("mptun down")
    run_dir = _run_dir(args)
    if not os.path.isdir(run_dir):
        raise CliError(f"mptun is not up on {args.tun}")
    with _Lock(run_dir, args.tun):
        return _down_locked(args, run_dir)


def _down_locked(args, run_dir: str) -> int:
    import signal
    import time

    from mptun.daemon import run_paths
    from mptun.netcfg import down, is_up

    pid = _daemon_pid(run_dir, args.tun)
    if pid is None and not is_up(args.tun, journal_dir=run_dir):
        raise CliError(f"mptun is not up on {args.tun}")
    if pid is not None:
        # The daemon undoes its own configuration on SIGTERM; wait for it, bounded.
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while _is_daemon(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _is_daemon(pid):
                break
    notes = []
    if is_up(args.tun, journal_dir=run_dir):
        # The daemon was killed (or died): its journal says what is left to remove.
        notes = down(args.tun, journal_dir=run_dir)
    for k in ("pid", "sock"):
        try:
            os.unlink(run_paths(run_dir, args.tun)[k])
        except FileNotFoundError:
            pass
    for n in notes:
        print(f"note: {n}")
    print(f"mptun down on {args.tun}")
    return 0


def _query(run_dir: str, tun: str, request: str) -> dict:
    import json
    import socket

    from mptun.daemon import run_paths
    from mptun.netcfg import is_up

    path = run_paths(run_dir, tun)["sock"]
    if _daemon_pid(run_dir, tun) is None:
        if is_up(tun, journal_dir=run_dir):
            raise CliError(f"the mptun daemon for {tun} is not running (it died?): mptun down cleans up")
        raise CliError(f"mptun is not up on {tun}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10.0)
        try:
            s.connect(path)
            s.sendall(request.encode() + b"\n")
            data = b""
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise CliError(f"cannot talk to the mptun daemon ({path}): {e.strerror or e}") from None
    return json.loads(data)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_status(args) -> int:
    _need_root("mptun status")
    import json

    st = _query(_run_dir(args), args.tun, "status")
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"mptun up (tun {st['tun']}, scheduler {st.get('scheduler', '?')}, pid {st['pid']}, "
          f"up {st['uptime']:.0f} s)")
    for p in st["paths"]:
        state = f"usable, {p['addr']}" if p.get("usable", True) else "unusable (down or no address)"
        print(f"  {p['name']:<10} {p.get('role', 'regular'):<8} {state}")
    conns = st["connections"]
    modes = {}
    for c in conns:
        modes[c["mode"]] = modes.get(c["mode"], 0) + 1
    print(f"connections: {len(conns)}" + (" (" + ", ".join(f"{v} {k}" for k, v in sorted(modes.items())) + ")"
                                          if conns else ""))
    for c in conns:
        sfs = " ".join(f"{st['paths'][s['path']]['name']}:{s['port']}"
                       f"{'' if s['established'] else '(' + s['state'] + ')'}"
                       f"{'[backup]' if s.get('backup') else ''}{'[stalled]' if s.get('stale') else ''}"
                       for s in c["subflows"] if not s["closed"])
        err = f"  ({c['error']})" if c["error"] else ""
        print(f"  #{c['id']:<5} {c['dst']:<22} {c['mode']:<9} {c['state']:<12} up {_size(c['bytes_from_app'])}, "
              f"down {_size(c['bytes_to_app'])}  subflows {sfs}{err}")
    counters = st["counters"]
    if counters:
        print("counters:")
        width = max(len(k) for k in counters)
        for k, v in counters.items():
            why = st["reasons"].get(k, "")
            print(f"  {k:<{width}} {v:>8}  {why}")
    return 0


# ---------------------------------------------------------------- misc

def cmd_version(args) -> int:
    from mptun import impl

    kind = impl.default_kind()
    build = impl.load("buildinfo", "fast")
    print(f"mptun {__version__} (datapath: {kind}, compiled={build.COMPILED})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mptun", description="Multipath TCP for every application on this host.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(q):
        q.add_argument("--tun", default="mptun0", help="the TUN device's name (default: mptun0)")
        q.add_argument("--run-dir", default=None, help="where the journal, pid, socket and log live "
                                                       "(default: /run/mptun)")

    up = sub.add_parser("up", help="give every TCP connection MPTCP over these interfaces",
                        description="Intercept the host's TCP connections and carry each as an MPTCP "
                                    "connection with a subflow on every interface named. IFACE:backup makes "
                                    "an interface a backup: it carries data only while no regular one works.",
                        epilog="example: mptun up eth0 wlan0:backup --scheduler blest")
    up.add_argument("interfaces", nargs="+", metavar="IFACE[:backup]")
    up.add_argument("--scheduler", default="lowrtt", metavar="NAME",
                    help="which subflow gets each chunk: lowrtt (default: the lowest RTT with window room), "
                         "roundrobin, redundant (every chunk on every path), blest (paths with very "
                         "different RTTs)")
    up.add_argument("--dest", action="append", metavar="PREFIX",
                    help="intercept TCP only to this IPv4 prefix (repeatable; default: all)")
    up.add_argument("--exclude", action="append", metavar="PREFIX",
                    help="never intercept TCP to this IPv4 prefix (repeatable)")
    up.add_argument("--checksums", action="store_true", help="ask the peer for DSS checksums (RFC 8684 3.3.1)")
    common(up)
    up.set_defaults(func=cmd_up)
    setp = sub.add_parser("set", help="change an interface's role while mptun is up",
                          epilog="example: mptun set wlan0 backup")
    setp.add_argument("interface", metavar="IFACE")
    setp.add_argument("role", choices=ROLES)
    common(setp)
    setp.set_defaults(func=cmd_set)
    down = sub.add_parser("down", help="stop mptun and remove everything `up` configured")
    common(down)
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="connections (MPTCP or fallback) and counters")
    status.add_argument("--json", action="store_true", help="everything the daemon knows, as JSON")
    common(status)
    status.set_defaults(func=cmd_status)

    v = sub.add_parser("version", help="print the version and which datapath loads")
    v.set_defaults(func=cmd_version)

    lab = sub.add_parser("lab", help="an emulated multi-path network in namespaces, to try mptun on")
    labsub = lab.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")
    up = labsub.add_parser("up", help="build a lab: client ==N paths== router -- server (a Linux MPTCP peer)")
    up.add_argument("--name", default="mptlab", help="lab name, prefix of its namespaces (default: mptlab)")
    up.add_argument("--path", action="append", metavar="SPEC",
                    help="one path per option: rate=100mbit,delay=10ms,loss=1%%,queue=200kb "
                         "(prefix a key with up- or down- for one direction). "
                         "Default: two paths, 100mbit/10ms and 50mbit/25ms")
    up.add_argument("--kernel-mptcp", action="store_true",
                    help="also set up the client kernel's own MPTCP (endpoints, source routing)")
    up.set_defaults(func=cmd_lab_up)
    down = labsub.add_parser("down", help="remove a lab and everything it started")
    down.add_argument("name", nargs="?", default="mptlab")
    down.add_argument("--all", action="store_true", help="remove every lab")
    down.set_defaults(func=cmd_lab_down)
    ls = labsub.add_parser("list", help="list the labs that exist")
    ls.set_defaults(func=cmd_lab_list)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"mptun: {e}", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as e:
        print(f"mptun: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mptun: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a LabError, NetcfgError or an OS error: one line, not a traceback
        # By name: importing their modules needs pyroute2, which may be what is missing.
        if isinstance(e, OSError) or type(e).__name__ in ("LabError", "NetcfgError"):
            print(f"mptun: {e}", file=sys.stderr)
            return EXIT_FAIL
        raise


if __name__ == "__main__":
    sys.exit(main())
