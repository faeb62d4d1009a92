"""A transfer a person can watch: `mptun up` on an emulated two-path network, a plain app downloads.

Part 1: mptun turns a plain TCP download into an MPTCP connection that the
server's Linux kernel accepts, with a subflow on each path (MP_JOIN). Part 2, for reference: the kernel's own MPTCP on both ends of
the same network, using both paths and surviving one of them going down.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

from mptun.lab import Lab, LabError, PathSpec
from mptun.lab.netns import ns_argv, run
from mptun.lab.peer import connect_in_netns, pattern_sha256, start_peer

PORT = 5000
BAR = 30


def _bar(mbit: float, scale: float) -> str:
    n = min(BAR, int(round(BAR * mbit / scale))) if scale else 0
    return "#" * n + "." * (BAR - n)


def _mptun(lab, run_dir: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real `mptun` command, run inside the lab's client namespace."""
    argv = ns_argv(lab.client, [sys.executable, "-m", "mptun", *args, "--run-dir", run_dir])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise LabError(f"mptun {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _watch(lab, peer, nbytes: int, *, mptcp_socket: bool, fail_path: int, fail_at: float) -> tuple[bool, dict]:
    """Download nbytes from the peer, printing per-path rates twice a second; returns (intact, server record)."""
    n = len(lab.paths)
    tty = sys.stdout.isatty()
    scale = max((s.down.rate_mbit or 1000) for s in lab.paths)
    sock = connect_in_netns(lab.client, lab.server_addr, peer.port, mptcp=mptcp_socket, timeout=30)
    digest, got = hashlib.sha256(), 0
    start = last = time.monotonic()
    before = [lab.path_counters(i)["down_bytes"] for i in range(n)]
    failed = False
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with sock:
        while True:
            k = sock.recv_into(buf)
            if not k:
                break
            digest.update(view[:k])
            got += k
            if not failed and fail_path >= 0 and got >= nbytes * fail_at:
                # Like WiFi going away: the path's link loses carrier.
                run(lab.links[fail_path], ["ip", "link", "set", "toc", "down"])
                failed = True
                print(f"\n  >>> path {fail_path} goes down at {got / 1e6:.0f} MB <<<")
            now = time.monotonic()
            if now - last >= 0.5:
                counters = [lab.path_counters(i)["down_bytes"] for i in range(n)]
                rates = [(c - b) * 8 / (now - last) / 1e6 for c, b in zip(counters, before)]
                before, last = counters, now
                cols = "  ".join(f"path{i} {_bar(r, scale)} {r:6.1f}" for i, r in enumerate(rates))
                line = f"  {now - start:5.1f}s {got / 1e6:6.1f} MB  {cols}  Mbit/s"
                print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
    elapsed = time.monotonic() - start
    print(f"\n\n  received {got / 1e6:.1f} MB in {elapsed:.1f} s ({got * 8 / elapsed / 1e6:.1f} Mbit/s average)")
    record = peer.wait_connections(1, timeout=30)[-1]
    intact = got == nbytes and digest.hexdigest() == pattern_sha256(nbytes)
    print(f"  sha256 {'matches what the server sent' if intact else 'DOES NOT MATCH'}")
    print(f"  the server's kernel saw: {'MPTCP' if record.get('mptcp') else 'plain TCP (fallback)'}, "
          f"{record.get('subflow_count')} subflow(s) over the connection's life")
    for sf in record.get("subflows", []):
        print(f"    subflow from {sf['remote'][0]}:{sf['remote'][1]}")
    return intact, record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mptun-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--path", action="append", metavar="SPEC",
                    help="a path, as for `mptun lab up` (default: rate=80mbit,delay=10ms and rate=40mbit,delay=30ms)")
    ap.add_argument("--megabytes", type=int, default=60, help="size of each download (default 60)")
    ap.add_argument("--fail-path", type=int, default=0,
                    help="path that goes down midway in part 2 (-1: none)")
    ap.add_argument("--fail-at", type=float, default=0.4, help="fraction of the download when it fails")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("mptun demo: needs root (network namespaces)", file=sys.stderr)
        return 1
    specs = [PathSpec.parse(p) for p in (args.path or ["rate=80mbit,delay=10ms", "rate=40mbit,delay=30ms"])]
    if len(specs) < 2:
        print("mptun demo: needs at least two paths", file=sys.stderr)
        return 2
    if not -1 <= args.fail_path < len(specs):
        print(f"mptun demo: --fail-path must be -1..{len(specs) - 1}", file=sys.stderr)
        return 2
    nbytes = args.megabytes * 1_000_000
    ok = True
    with Lab(specs, source_routing=True) as lab, tempfile.TemporaryDirectory(prefix="mptun-demo-") as run_dir:
        print(lab.describe(), "\n")
        ifaces = [lab.client_iface(i) for i in range(len(specs))]
        print(f"== part 1: `mptun up {' '.join(ifaces)}` in the client; a plain TCP app downloads "
              f"{args.megabytes} MB\n")
        _mptun(lab, run_dir, "up", *ifaces)
        try:
            with start_peer(lab.server, "source", PORT, nbytes=nbytes) as peer:
                intact, _ = _watch(lab, peer, nbytes, mptcp_socket=False, fail_path=-1, fail_at=1.0)
                ok &= intact
            status = json.loads(_mptun(lab, run_dir, "status", "--json").stdout)
            counters = {k: v for k, v in status.get("counters", {}).items() if v}
            print(f"  mptun status: counters {counters}")
            print("  (a subflow on every path; failover when an interface goes away: tests/netns/test_multipath.py)\n")
        finally:
            _mptun(lab, run_dir, "down", check=False)

        print(f"== part 2, for reference: the kernel's own MPTCP on both ends of the same network; "
              f"path {args.fail_path} fails midway\n" if args.fail_path >= 0 else
              "== part 2, for reference: the kernel's own MPTCP on both ends of the same network\n")
        lab.enable_kernel_mptcp()
        with start_peer(lab.server, "source", PORT + 1, nbytes=nbytes) as peer:
            intact, _ = _watch(lab, peer, nbytes, mptcp_socket=True, fail_path=args.fail_path,
                               fail_at=args.fail_at)
            ok &= intact
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (LabError, OSError) as e:
        print(f"mptun demo: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
