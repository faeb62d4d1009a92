"""A transfer a person can watch: two emulated paths, one MPTCP download, one path fails midway.

Today it runs the lab with the Linux kernel's MPTCP on both ends (mptun's own
datapath, `mptun up`, is the next milestone): it shows the network that mptun
is tested on, and what the server's kernel reports about the connection.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time

from mptun.lab import Lab, LabError, PathSpec
from mptun.lab.netns import run
from mptun.lab.peer import connect_in_netns, pattern_sha256, start_peer

PORT = 5000
BAR = 30


def _bar(mbit: float, scale: float) -> str:
    n = min(BAR, int(round(BAR * mbit / scale))) if scale else 0
    return "#" * n + "." * (BAR - n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mptun-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--path", action="append", metavar="SPEC",
                    help="a path, as for `mptun lab up` (default: rate=80mbit,delay=10ms and rate=40mbit,delay=30ms)")
    ap.add_argument("--megabytes", type=int, default=120, help="size of the download (default 120)")
    ap.add_argument("--fail-path", type=int, default=0, help="path that goes down midway (-1: none)")
    ap.add_argument("--fail-at", type=float, default=0.4, help="fraction of the download when it fails")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("mptun demo: needs root (network namespaces)", file=sys.stderr)
        return 1
    specs = [PathSpec.parse(p) for p in (args.path or ["rate=80mbit,delay=10ms", "rate=40mbit,delay=30ms"])]
    if not -1 <= args.fail_path < len(specs):
        print(f"mptun demo: --fail-path must be -1..{len(specs) - 1}", file=sys.stderr)
        return 2
    nbytes = args.megabytes * 1_000_000
    tty = sys.stdout.isatty()

    print("mptun demo: mptun's own datapath (`mptun up`) is not built yet; this runs the lab\n"
          "with the Linux kernel's MPTCP on client and server, the network mptun is tested on.\n")
    with Lab(specs, source_routing=True) as lab:
        lab.enable_kernel_mptcp()
        print(lab.describe(), "\n")
        scale = max((s.down.rate_mbit or 1000) for s in specs)
        with start_peer(lab.server, "source", PORT, nbytes=nbytes) as peer:
            sock = connect_in_netns(lab.client, lab.server_addr, PORT, mptcp=True, timeout=30)
            digest, got = hashlib.sha256(), 0
            start = last = time.monotonic()
            before = [lab.path_counters(i)["down_bytes"] for i in range(len(specs))]
            failed = False
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            with sock:
                while True:
                    n = sock.recv_into(buf)
                    if not n:
                        break
                    digest.update(view[:n])
                    got += n
                    if not failed and args.fail_path >= 0 and got >= nbytes * args.fail_at:
                        # Like WiFi going away: the path's link loses carrier.
                        run(lab.links[args.fail_path], ["ip", "link", "set", "toc", "down"])
                        failed = True
                        print(f"\n  >>> path {args.fail_path} goes down at {got / 1e6:.0f} MB <<<")
                    now = time.monotonic()
                    if now - last >= 0.5:
                        counters = [lab.path_counters(i)["down_bytes"] for i in range(len(specs))]
                        rates = [(c - b) * 8 / (now - last) / 1e6 for c, b in zip(counters, before)]
                        before, last = counters, now
                        cols = "  ".join(f"path{i} {_bar(r, scale)} {r:6.1f}" for i, r in enumerate(rates))
                        line = f"  {now - start:5.1f}s {got / 1e6:6.1f} MB  {cols}  Mbit/s"
                        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            elapsed = time.monotonic() - start
            print(f"\n\n  received {got / 1e6:.1f} MB in {elapsed:.1f} s "
                  f"({got * 8 / elapsed / 1e6:.1f} Mbit/s average)")
            record = peer.wait_connections(1, timeout=30)[0]
        intact = got == nbytes and digest.hexdigest() == pattern_sha256(nbytes)
        print(f"  sha256 {'matches what the server sent' if intact else 'DOES NOT MATCH'}")
        print(f"  the server's kernel saw: {'MPTCP' if record.get('mptcp') else 'plain TCP (fallback)'}, "
              f"{record.get('subflow_count')} subflows over the connection's life")
        for sf in record.get("subflows", []):
            print(f"    subflow {sf}")
    return 0 if intact else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (LabError, OSError) as e:
        print(f"mptun demo: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
