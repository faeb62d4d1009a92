"""Throughput of the lab's delay line (mptun.lab.delayline) against a kernel L2 wire, one TCP flow, cubic.

A (198.18.240.1) -- la [link ns] lb -- B (198.18.240.2); the link namespace forwards either with a tc
ingress mirred redirect (kernel baseline) or with the delay line at 0, 10 and 25 ms each way.
Prints Gbit/s, the forwarder's CPU and what the delay line saw (frame sizes, drops, lateness). Needs root and iperf3.

    sudo .venv/bin/python bench/delayline_bench.py [--seconds 10] [--repeat 3] [--json out.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mptun.lab.delayline import start_delayline  # noqa: E402
from mptun.lab.netns import WireNamespaces  # noqa: E402

A_IP, B_IP = "198.18.240.1", "198.18.240.2"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# enough for 20 Gbit/s x 50 ms RTT, so the window never limits a delayed run
TCP_BUF_MAX = 128 << 20


def sh(*cmd, check=True, timeout=60):
    return subprocess.run(cmd, check=check, timeout=timeout, capture_output=True, text=True)


def nsx(ns, *cmd, **kw):
    return sh("ip", "netns", "exec", ns, *cmd, **kw)


class Topology(WireNamespaces):
    def __init__(self):
        super().__init__("mpt-bd", [f"{A_IP}/24"], [f"{B_IP}/24"])
        self.cc_note = ""

    def up(self):
        super().up()
        for ns, dev in ((self.a, "a0"), (self.b, "b0"), (self.link, "la"), (self.link, "lb")):
            nsx(ns, "ethtool", "-K", dev, "tso", "on", "gso", "on")
        for ns in (self.a, self.b):
            nsx(ns, "sysctl", "-qw", f"net.ipv4.tcp_rmem=4096 131072 {TCP_BUF_MAX}",
                f"net.ipv4.tcp_wmem=4096 131072 {TCP_BUF_MAX}")
            # bbr paces; a namespace may not be allowed to make cubic its default, then iperf3 -C sets it per socket
            r = nsx(ns, "sysctl", "-qw", "net.ipv4.tcp_congestion_control=cubic", check=False)
            if r.returncode != 0:
                self.cc_note = "cubic set per socket (iperf3 -C): the namespace may not default to it"
        return self

    def shape(self, rate_mbit):
        """tbf on both egress devices of the link namespace, sized as the lab sizes it (burst 4 ms, queue 50 ms)."""
        for dev in ("la", "lb"):
            if rate_mbit:
                rate = rate_mbit * 1e6 / 8
                nsx(self.link, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{int(rate_mbit * 1e6)}bit",
                    "burst", str(max(16384, int(rate * 0.004))), "limit", str(max(65536 * 2, int(rate * 0.050))))
            else:
                nsx(self.link, "tc", "qdisc", "del", "dev", dev, "root", check=False)

    def kernel_wire(self, on):
        if on:
            for src, dst in (("la", "lb"), ("lb", "la")):
                nsx(self.link, "tc", "qdisc", "add", "dev", src, "ingress")
                # u32 matching everything (this kernel has no matchall classifier)
                nsx(self.link, "tc", "filter", "add", "dev", src, "parent", "ffff:", "protocol", "all", "prio", "1",
                    "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", dst)
        else:
            for dev in ("la", "lb"):
                nsx(self.link, "tc", "qdisc", "del", "dev", dev, "ingress", check=False)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime, all threads


def iperf(topo, seconds, reverse, omit):
    srv = subprocess.Popen(["ip", "netns", "exec", topo.b, "iperf3", "-s", "-1", "-B", B_IP],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if f"{B_IP}:5201" in nsx(topo.b, "ss", "-Htln").stdout:
                break
            time.sleep(0.05)
        cmd = ["iperf3", "-c", B_IP, "-C", "cubic", "-t", str(seconds), "-O", str(omit), "-J"]
        if reverse:
            cmd.append("-R")
        r = nsx(topo.a, *cmd, check=False, timeout=seconds + omit + 60)
        j = json.loads(r.stdout)
        if "error" in j:
            raise RuntimeError(j["error"])
        return j
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(10)


def run_case(topo, mode, delay_ms, reverse, seconds, omit):
    line = None
    if mode == "kernel":
        topo.kernel_wire(True)
    else:
        line = start_delayline(topo.link, "la", "lb", delay_ms)
    try:
        t0 = cpu_ticks(line.pid) if line else None
        w0 = time.monotonic()
        j = iperf(topo, seconds, reverse, omit)
        wall = time.monotonic() - w0
        t1 = cpu_ticks(line.pid) if line else None
    finally:
        if line:
            st = line.stop()
        else:
            topo.kernel_wire(False)
    end = j["end"]
    gbit = end["sum_received"]["bits_per_second"] / 1e9
    res = {
        "mode": mode, "delay_ms": delay_ms, "direction": "B->A" if reverse else "A->B",
        "gbit_s": round(gbit, 2),
        "retransmits": end["sum_sent"].get("retransmits"),
        "congestion": (end.get("sender_tcp_congestion"), end.get("receiver_tcp_congestion")),
        "iperf_cpu": {k: round(v, 1) for k, v in end["cpu_utilization_percent"].items()},
    }
    if line:
        data = st["b_to_a" if reverse else "a_to_b"]
        acks = st["a_to_b" if reverse else "b_to_a"]
        cpu_s = (t1 - t0) / CLK_TCK
        moved_gb = (data["bytes"] + acks["bytes"]) / 1e9
        res.update({
            # the whole iperf3 run (with its omitted seconds) against the whole process CPU
            "delayline_cpu_pct": round(100 * cpu_s / wall, 1),
            "delayline_cpu_s_per_gb": round(cpu_s / moved_gb, 3) if moved_gb else None,
            "avg_data_frame_bytes": data["bytes"] // max(1, data["frames"]),
            "gso_frame_pct": round(100 * data["gso_frames"] / max(1, data["rx_frames"]), 1),
            "max_frame_bytes": data["max_frame_bytes"],
            "max_queue_mb": round(data["max_queue_bytes"] / (1 << 20), 1),
            "drops": {k: v for k, v in data["drops"].items() if v},
            "ack_drops": {k: v for k, v in acks["drops"].items() if v},
            "late_us_avg": data["late_us_avg"], "late_us_max": data["late_us_max"],
        })
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--omit", type=int, default=3, help="iperf3 -O: seconds of slow start left out")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--delays", default="0,10,25", help="delay line cases, ms each way")
    p.add_argument("--no-kernel", action="store_true", help="skip the kernel baseline")
    p.add_argument("--no-reverse", action="store_true")
    p.add_argument("--rate-mbit", type=float, default=0,
                   help="shape both directions with tbf on the link's egress devices (as the lab does)")
    p.add_argument("--json", help="write all results here")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    cases = [] if args.no_kernel else [("kernel", 0.0)]
    cases += [("delayline", float(d)) for d in args.delays.split(",")]
    directions = [False] if args.no_reverse else [False, True]
    topo = Topology()
    results = []
    try:
        topo.up()
        if topo.cc_note:
            print(f"note: {topo.cc_note}")
        if args.rate_mbit:
            topo.shape(args.rate_mbit)
            print(f"shaped: tbf {args.rate_mbit:g} Mbit/s on both directions")
        print(f"{'forwarder':<22}{'dir':<6}{'Gbit/s':>8}{'retr':>7}{'fwd CPU%':>10}{'CPU s/GB':>10}"
              f"{'avg frame':>11}{'GSO%':>6}{'maxQ MB':>9}{'late us':>9}  drops")
        for rep in range(args.repeat):
            for mode, delay in cases:
                for rev in directions:
                    r = run_case(topo, mode, delay, rev, args.seconds, args.omit)
                    r["repeat"] = rep
                    results.append(r)
                    name = "kernel mirred" if mode == "kernel" else f"delayline {delay:g} ms"
                    if mode == "kernel":
                        extra = f"{'-':>10}{'-':>10}{'-':>11}{'-':>6}{'-':>9}{'-':>9}"
                    else:
                        extra = (f"{r['delayline_cpu_pct']:>10}{r['delayline_cpu_s_per_gb']:>10}"
                                 f"{r['avg_data_frame_bytes']:>11}{r['gso_frame_pct']:>6}{r['max_queue_mb']:>9}"
                                 f"{r['late_us_avg']:>9}  {r['drops'] or ''}")
                    print(f"{name:<22}{r['direction']:<6}{r['gbit_s']:>8}{r['retransmits']:>7}{extra}", flush=True)
        if args.repeat > 1:
            print("\nmedian Gbit/s over", args.repeat, "runs:")
            for mode, delay in cases:
                for rev in directions:
                    vals = [r["gbit_s"] for r in results
                            if r["mode"] == mode and r["delay_ms"] == delay and (r["direction"] == "B->A") == rev]
                    name = "kernel mirred" if mode == "kernel" else f"delayline {delay:g} ms"
                    print(f"  {name:<22}{'B->A' if rev else 'A->B':<6}{statistics.median(vals):>8.2f}"
                          f"   (min {min(vals):.2f}, max {max(vals):.2f})")
        with open("/proc/loadavg") as f:
            print("load average after the runs:", f.read().split()[:3], "(the machine is shared: numbers vary)")
    finally:
        topo.down()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cc_note": topo.cc_note, "rate_mbit": args.rate_mbit, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
