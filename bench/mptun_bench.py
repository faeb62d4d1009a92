"""Single-path throughput through mptun vs the kernel's own MPTCP vs plain TCP, on one lab path.

One lab (client == 1 path == router -- server); iperf3 in the server namespace listens with MPTCP
(mptcpize), so it takes all three clients: plain TCP (mptun down), the kernel's MPTCP (mptcpize run
iperf3), and plain iperf3 through `mptun up eth0` (which makes it MPTCP). Each direction, each case
--repeat times, cubic per socket (iperf3 -C). Prints Mbit/s (median), the ratios, mptun's CPU
seconds per GB, and the command line. A benchmark, not a test: it asserts nothing. Needs root.

    sudo .venv/bin/python bench/mptun_bench.py [--path SPEC] [--seconds 10] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from mptun.lab import Lab, PathSpec  # noqa: E402
from mptun.lab.kstats import mptcp_counters  # noqa: E402

SERVER = "198.18.100.2"
PORT = 5201
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ns_run(ns, argv, timeout=120, check=True):
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
                          check=check)


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, e.get("PYTHONPATH")) if p)
    return e


def mptun(ns, run_dir, *args, timeout=90):
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "mptun", *args, "--run-dir", run_dir]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env())
    if proc.returncode != 0:
        raise SystemExit(f"mptun {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def iperf(ns, seconds, reverse, mptcp) -> float:
    argv = ["iperf3", "-c", SERVER, "-p", str(PORT), "-t", str(seconds), "-C", "cubic", "-J"]
    if reverse:
        argv.append("-R")
    if mptcp:
        argv = ["mptcpize", "run", *argv]
    proc = ns_run(ns, argv, timeout=seconds + 60, check=False)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"iperf3 failed: {proc.stderr.strip() or proc.stdout[-500:]}") from None
    if "error" in result:
        raise SystemExit(f"iperf3: {result['error']}")
    return result["end"]["sum_received"]["bits_per_second"] / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default="", help="lab path spec (default: unshaped veth)")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("mptun_bench needs root (network namespaces)")
    command = "sudo .venv/bin/python bench/" + os.path.basename(__file__) + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")

    results: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, float] = {}
    spec = PathSpec.parse(args.path)
    run_dir = tempfile.mkdtemp(prefix="mptun-bench-")
    with Lab([spec], name=f"mptb{os.getpid() % 100000}") as lab:
        server = subprocess.Popen(["ip", "netns", "exec", lab.server, "mptcpize", "run", "iperf3", "-s", "-p",
                                   str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            for direction, reverse in (("up", False), ("down", True)):
                for case in ("tcp", "kernel-mptcp"):
                    results.setdefault(case, {})[direction] = [
                        iperf(lab.client, args.seconds, reverse, case == "kernel-mptcp") for _ in range(args.repeat)]
            time.sleep(2.0)   # the last kernel-MPTCP connections finish closing before the baseline
            mib_before = mptcp_counters(lab.server)
            mptun(lab.client, run_dir, "up", "eth0")
            try:
                with open(os.path.join(run_dir, "mptun0.pid")) as f:
                    pid = int(f.read())
                for direction, reverse in (("up", False), ("down", True)):
                    runs = []
                    cpu0 = cpu_seconds(pid)
                    for _ in range(args.repeat):
                        runs.append(iperf(lab.client, args.seconds, reverse, False))
                    gbytes = sum(runs) * args.seconds / 8
                    cpu[direction] = (cpu_seconds(pid) - cpu0) / gbytes if gbytes else 0.0
                    results.setdefault("mptun", {})[direction] = runs
                status = json.loads(mptun(lab.client, run_dir, "status", "--json").stdout)
            finally:
                mptun(lab.client, run_dir, "down")
            mib = {k: v - mib_before.get(k, 0) for k, v in mptcp_counters(lab.server).items()
                   if v != mib_before.get(k, 0)}
        finally:
            server.terminate()
            server.wait(10)

    med = {case: {d: statistics.median(v) for d, v in dirs.items()} for case, dirs in results.items()}
    print(f"mptun single-path throughput, lab path: {spec.describe()}, iperf3 -C cubic, {args.seconds} s x "
          f"{args.repeat}, median Mbit/s")
    print(f"{'':22}{'up':>10}{'down':>10}")
    for case in ("tcp", "kernel-mptcp", "mptun"):
        print(f"{case:22}{med[case]['up'] * 1000:>10.0f}{med[case]['down'] * 1000:>10.0f}")
    for base in ("kernel-mptcp", "tcp"):
        print(f"{'mptun / ' + base:22}" + "".join(f"{med['mptun'][d] / med[base][d]:>10.2f}" for d in ("up", "down")))
    print(f"mptun daemon CPU s/GB      up {cpu['up']:.2f}   down {cpu['down']:.2f}")
    print(f"mptun connections: {status['counters'].get('mptcp_connections', 0)} MPTCP, "
          f"{status['counters'].get('fallback_no_mp_capable', 0)} fallback; server MIB changes: {mib}")
    print(f"command: {command}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"path": args.path, "seconds": args.seconds, "repeat": args.repeat, "runs": results,
                       "median_gbit": med, "mptun_cpu_s_per_gb": cpu, "server_mib_delta": mib,
                       "command": command}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
