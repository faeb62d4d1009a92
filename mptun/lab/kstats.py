"""What the kernel prints about MPTCP: `ss -Mtni` (sockets, subflows) and the MPTcpExt MIB counters.

The `parse_*` functions are pure (text in, dicts out); `ss_mptcp` and `mptcp_counters` run the
command or read /proc inside a namespace. The kernel's structs are read by mptun.lab.mptcpinfo.
"""

from __future__ import annotations

import subprocess

from mptun.lab.mptcpinfo import Endpoint
from mptun.lab.netns import ns_argv


# ---- ss -Mtni ----------------------------------------------------------------------------------

# ss prints these as "name value" (a space, not a colon).
_SS_SPACED_KEYS = frozenset({"send", "pacing_rate", "delivery_rate"})
# Sequence-like fields: iproute2 6.1 (installed here) prints them in hex; iproute2 from 2025 on
# prints them in decimal (commit cfa70237 for the mptcp line, then the subflow line): see seq_base.
_MPTCP_SEQ_KEYS = frozenset({"write_seq", "snd_una", "rcv_nxt"})
_SUBFLOW_SEQ_KEYS = frozenset({"seq", "sfseq", "ssnoff", "maplen"})


def parse_ss_endpoint(text: str) -> Endpoint:
    """'198.18.0.1:80', '[2001:2::1]:80', '0.0.0.0:*', 'addr%dev:port' -> (address, port); '*' -> 0."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]
    return host, 0 if port == "*" else int(port)


def _parse_subflow_fields(tokens: list[str], seq_base: int) -> dict:
    sub: dict = {}
    for tok in tokens:
        key, sep, value = tok.partition(":")
        if not sep:
            sub.setdefault("words", []).append(tok)
        elif key == "token":
            # "token:<remote>(id:<n>)/<local>(id:<n>)"; tokens are always hex
            remote, _, local = value.partition("/")
            for side, part in (("remote", remote), ("local", local)):
                tok_hex, _, rest = part.partition("(id:")
                sub[f"token_{side}"] = int(tok_hex, 16)
                sub[f"id_{side}"] = int(rest.rstrip(")")) if rest else None
        elif key in _SUBFLOW_SEQ_KEYS:
            sub[key] = int(value, seq_base)
        elif value.isdigit():
            sub[key] = int(value)
        else:
            sub[key] = value
    return sub


def _parse_info_line(netid: str, text: str, seq_base: int) -> dict:
    """Key:value fields of an ss -i line; for tcp, what follows 'tcp-ulp-mptcp' goes to entry['subflow']."""
    tokens = text.split()
    entry: dict = {"info": {}, "words": []}
    if "tcp-ulp-mptcp" in tokens:
        i = tokens.index("tcp-ulp-mptcp")
        entry["subflow"] = _parse_subflow_fields(tokens[i + 1 :], seq_base)
        tokens = tokens[:i]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _SS_SPACED_KEYS and i + 1 < len(tokens):
            entry["info"][tok] = tokens[i + 1]
            i += 2
            continue
        key, sep, value = tok.partition(":")
        if not sep:
            entry["words"].append(tok)
        elif netid == "mptcp" and key in _MPTCP_SEQ_KEYS:
            entry["info"][key] = int(value, seq_base)
        elif netid == "mptcp" and key == "token":
            entry["info"][key] = int(value, 16)
        elif value.isdigit():
            entry["info"][key] = int(value)
        else:
            entry["info"][key] = value
        i += 1
    return entry


def parse_ss(text: str, *, seq_base: int = 16, default_netid: str = "tcp") -> list[dict]:
    """Parse `ss -H -n -i` output (with -M and/or -t). One dict per socket:

    netid ('tcp' | 'mptcp'), state, local, peer, info (key -> int|str), words (bare flags such
    as 'fallback', 'remote_key'); tcp sockets get 'subflow': None, or for an MPTCP subflow the
    fields after 'tcp-ulp-mptcp' (flags, token_local, token_remote, id_local, id_remote, seq,
    sfseq, ssnoff, maplen). mptcp sockets get 'mptcp_fallback', 'remote_key', 'token' and
    'subflows' (ss prints the count of extra subflows only when non-zero). seq_base: 16 for
    iproute2 6.1, 10 for iproute2 that prints sequence numbers in decimal.
    """
    entries: list[dict] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            if entries:
                current = entries[-1]
                parsed = _parse_info_line(current["netid"], line, seq_base)
                current["info"].update(parsed["info"])
                current["words"].extend(parsed["words"])
                if "subflow" in parsed:
                    current["subflow"] = parsed["subflow"]
            continue
        cols = line.split()
        if cols[0] in ("Netid", "State"):
            continue  # a header line, if -H was not given
        if cols[0] in ("tcp", "mptcp"):
            netid, cols = cols[0], cols[1:]
        else:
            netid = default_netid
        if len(cols) < 5:
            continue
        entries.append({
            "netid": netid,
            "state": cols[0],
            "recv_q": int(cols[1]),
            "send_q": int(cols[2]),
            "local": parse_ss_endpoint(cols[3]),
            "peer": parse_ss_endpoint(cols[4]),
            "info": {},
            "words": [],
        })
    for entry in entries:
        if entry["netid"] == "mptcp":
            entry["mptcp_fallback"] = "fallback" in entry["words"]
            entry["remote_key"] = "remote_key" in entry["words"]
            entry["token"] = entry["info"].get("token")
            entry["subflows"] = entry["info"].get("subflows", 0)
        elif "subflow" not in entry:
            entry["subflow"] = None
    return entries


def group_ss_subflows(entries: list[dict]) -> list[dict]:
    """The mptcp entries, each with 'subflow_sockets': the tcp subflows whose local token is its token."""
    groups = []
    for entry in entries:
        if entry["netid"] != "mptcp":
            continue
        members = [e for e in entries
                   if e["netid"] == "tcp" and e.get("subflow")
                   and entry["token"] is not None
                   and e["subflow"].get("token_local") == entry["token"]]
        groups.append({**entry, "subflow_sockets": members})
    return groups


def ss_mptcp(netns: str | None = None, *, all_states: bool = False, seq_base: int = 16,
             timeout: float = 10) -> list[dict]:
    """`ss -HMtni` run inside netns (None: here), parsed: MPTCP sockets and TCP sockets (subflows or not)."""
    argv = ["ss", "-HMtni"] + (["-a"] if all_states else [])
    out = subprocess.run(ns_argv(netns, argv), capture_output=True, text=True, check=True,
                         timeout=timeout).stdout
    return parse_ss(out, seq_base=seq_base)


# ---- MIB counters ------------------------------------------------------------------------------


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/netstat (or /proc/net/snmp): pairs of 'Group: names' / 'Group: values' lines."""
    groups: dict[str, dict[str, int]] = {}
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for names_line, values_line in zip(lines[0::2], lines[1::2]):
        group, _, names = names_line.partition(":")
        group2, _, values = values_line.partition(":")
        if group != group2:
            raise ValueError(f"netstat lines out of step: {group!r} vs {group2!r}")
        groups[group] = dict(zip(names.split(), (int(v) for v in values.split())))
    return groups


def mptcp_counters(netns: str | None = None, *, timeout: float = 10) -> dict[str, int]:
    """The MPTcpExt MIB (MPCapableSYNRX, MPJoinAckRx, DSSNotMatching, ...) of netns (None: here)."""
    if netns is None:
        with open("/proc/net/netstat") as f:
            text = f.read()
    else:
        text = subprocess.run(ns_argv(netns, ["cat", "/proc/net/netstat"]), capture_output=True,
                              text=True, check=True, timeout=timeout).stdout
    return parse_netstat(text).get("MPTcpExt", {})


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that changed between two mptcp_counters() readings, by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
