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
    except Exception as e:  # a LabError or an OS error: one line, not a traceback
        from mptun.lab import LabError

        if isinstance(e, (LabError, OSError)):
            print(f"mptun: {e}", file=sys.stderr)
            return EXIT_FAIL
        raise


if __name__ == "__main__":
    sys.exit(main())
