"""A forging MP_JOIN peer: it answers the client's MP_JOIN SYNs on one lab path with a SYN/ACK whose
truncated HMAC is wrong, in the server's place, and logs what the client does next.

The kernel's MPTCP never forges, so this is how a test sees that a client checks the peer's HMAC
(RFC 8684 3.2: a wrong one must reset the subflow with MP_TCPRST, never join). It runs in the lab's
router namespace (`python -m tests.netns.forger --iface p1 ...`), reads frames on that path's router
interface with an AF_PACKET socket and answers through it; scapy builds and parses the packets, so the
forger shares no codec with mptun. `start_forger` also installs the nftables rule that keeps all TCP
from that path's client address to the server's port away from the server, so the forger alone answers
there; `Forger.stop` removes it.

Log lines (JSON, one per event, flushed at once): "syn" (a SYN from the client; its MP_JOIN fields),
"synack" (what was forged), "segment" (anything else the client sent to the port: flags, payload
length, the MPTCP subtypes it carried, the MP_TCPRST reason, whether it was the join's third ACK).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

MPTCP_KIND = 30
MP_JOIN, MP_TCPRST = 1, 8
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MAX_SECONDS = 600        # the forger ends itself after this, whatever happens to its parent
NFT_TABLE = "mptun_forger"
READY_TIMEOUT = 20.0


def mptcp_options(tcp) -> list[bytes]:
    """The bodies (after kind and length) of the MPTCP options of a scapy TCP layer."""
    return [v for k, v in tcp.options if k == MPTCP_KIND and isinstance(v, bytes) and v]


def describe_join_syn(body: bytes) -> dict | None:
    """The fields of an MP_JOIN SYN option (length 12), or None if body is something else."""
    if body[0] >> 4 != MP_JOIN or len(body) != 10:
        return None
    return {"backup": bool(body[0] & 1), "address_id": body[1],
            "token": body[2:6].hex(), "nonce": body[6:10].hex()}


def forged_synack(frame, join: dict, isn: int, hmac: bytes, nonce: bytes):
    """The SYN/ACK a Linux server would send for this MP_JOIN SYN, but with `hmac` as its truncated
    HMAC: Linux's option order (MSS, SACK permitted, timestamps, window scale, MP_JOIN)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    ip, tcp = frame[IP], frame[TCP]
    ts = dict((k, v) for k, v in tcp.options if k == "Timestamp").get("Timestamp")
    options = [("MSS", 1460), ("SAckOK", b"")]
    if ts is not None:
        options.append(("Timestamp", (random.getrandbits(32), ts[0])))
    options += [("NOP", None), ("WScale", 7),
                (MPTCP_KIND, bytes([MP_JOIN << 4 | int(join["backup"]), 0]) + hmac + nonce)]
    return (Ether(src=frame[Ether].dst, dst=frame[Ether].src)
            / IP(src=ip.dst, dst=ip.src, ttl=64, id=0, flags="DF")
            / TCP(sport=tcp.dport, dport=tcp.sport, seq=isn, ack=tcp.seq + 1, flags="SA",
                  window=64240, options=options))


def describe_segment(tcp, payload_len: int) -> dict:
    bodies = mptcp_options(tcp)
    rst_reason = next((b[1] if len(b) > 1 else None for b in bodies if b[0] >> 4 == MP_TCPRST), None)
    return {"flags": str(tcp.flags), "payload": payload_len,
            "mptcp_subtypes": [b[0] >> 4 for b in bodies],
            "mp_tcprst": any(b[0] >> 4 == MP_TCPRST for b in bodies), "mp_tcprst_reason": rst_reason,
            # The third ACK of a join carries MP_JOIN with the full 20-byte HMAC (option length 24).
            "join_third_ack": any(b[0] >> 4 == MP_JOIN and len(b) == 22 for b in bodies)}


def serve(cfg) -> int:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((cfg.iface, 0))
    log = open(cfg.log, "a", buffering=1)
    isns: dict[int, int] = {}      # client port -> our ISN, so a retransmitted SYN gets the same answer
    print("ready", flush=True)
    deadline = time.monotonic() + MAX_SECONDS
    while not stop and time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        data, addr = sock.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING:
            continue
        frame = Ether(data)
        if TCP not in frame or frame[IP].src != cfg.client or frame[IP].dst != cfg.server:
            continue
        tcp = frame[TCP]
        if tcp.dport != cfg.port:
            continue
        t = time.time()
        if tcp.flags & 0x12 == 0x02:
            join = next(filter(None, map(describe_join_syn, mptcp_options(tcp))), None)
            log.write(json.dumps({"t": t, "event": "syn", "sport": tcp.sport, "seq": tcp.seq, "mp_join": join}) + "\n")
            if join is None:
                continue
            isn = isns.setdefault(tcp.sport, random.getrandbits(32))
            hmac, nonce = os.urandom(8), os.urandom(4)
            sock.send(bytes(forged_synack(frame, join, isn, hmac, nonce)))
            log.write(json.dumps({"t": t, "event": "synack", "sport": tcp.sport, "isn": isn,
                                  "hmac": hmac.hex(), "nonce": nonce.hex()}) + "\n")
        else:
            payload_len = frame[IP].len - frame[IP].ihl * 4 - tcp.dataofs * 4
            log.write(json.dumps({"t": t, "event": "segment", "sport": tcp.sport,
                                  **describe_segment(tcp, payload_len)}) + "\n")
    log.close()
    return 0


class Forger:
    """A running forger (started by start_forger) and its nftables rule."""

    def __init__(self, router_ns: str, proc: subprocess.Popen, log_path: str):
        self.router_ns = router_ns
        self.proc = proc
        self.log_path = log_path

        self._final: list[dict] | None = None

    def events(self, kind: str | None = None) -> list[dict]:
        """What the forger logged so far (all of it once stopped), of one kind or all."""
        if self._final is None:
            with open(self.log_path) as f:
                lines = [json.loads(line) for line in f if line.endswith("\n")]
        else:
            lines = self._final
        return [e for e in lines if kind is None or e["event"] == kind]

    def stop(self) -> None:
        """End the forger by its pid and remove its nftables table. Idempotent."""
        if self._final is not None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        subprocess.run(["ip", "netns", "exec", self.router_ns, "nft", "delete", "table", "inet", NFT_TABLE],
                       capture_output=True, timeout=10)
        self._final = self.events()
        os.unlink(self.log_path)

    def __enter__(self) -> Forger:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_forger(lab, path: int, port: int, env: dict) -> Forger:
    """Forge the server's answers to MP_JOINs on lab path `path` (client address to server:port)."""
    client, server, iface = lab.client_addr(path), lab.server_addr, f"p{path}"
    ruleset = (f"table inet {NFT_TABLE} {{\n chain forward {{\n"
               "  type filter hook forward priority -5; policy accept;\n"
               f'  iifname "{iface}" ip saddr {client} ip daddr {server} tcp dport {port} counter drop\n'
               " }\n}\n")
    subprocess.run(["ip", "netns", "exec", lab.router, "nft", "-f", "-"], input=ruleset, text=True,
                   check=True, capture_output=True, timeout=10)
    fd, log_path = tempfile.mkstemp(prefix="mptun-forger-", suffix=".jsonl")
    os.close(fd)
    argv = ["ip", "netns", "exec", lab.router, sys.executable, "-m", "tests.netns.forger", "--iface", iface,
            "--client", client, "--server", server, "--port", str(port), "--log", log_path]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env)
    forger = Forger(lab.router, proc, log_path)
    # scapy loads in about a second; the forger prints "ready" once its socket is bound.
    ready = proc.stdout.readline() if select.select([proc.stdout], [], [], READY_TIMEOUT)[0] else ""
    if ready.strip() != "ready":
        forger.stop()
        raise RuntimeError(f"forger did not start within {READY_TIMEOUT}s: {ready!r} {proc.stderr.read()[-2000:]}")
    return forger


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.netns.forger", description=__doc__.split("\n")[0])
    p.add_argument("--iface", required=True, help="the router's interface of the path")
    p.add_argument("--client", required=True, help="the client's address on that path")
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    return serve(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
