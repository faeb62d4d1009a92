#!/usr/bin/env python3
"""Micro-benchmark of the outbound per-packet work: ns/packet, compiled vs pure-Python (not a test).

Per packet: parse the IP/TCP headers (rewrite.pxd rw_parse over packet.pxd), parse the options
(mptcpopt.pxd parse_tcp_options), emit a DSS (64-bit DATA_ACK + mapping with a 64-bit DSN, 26
bytes, mptcpopt.pxd emit_dss), insert it (trimming SACK as needed), NAT the source address and
port, and update the checksums. The compiled side is a small Cython loop, built on first use into
build/wire_bench/, that calls those pxd functions the way the datapath will, without the GIL.
The pure side runs the pure twins over a 1/100 sample (--pure-fraction) and is extrapolated.

    .venv/bin/python bench/wire_bench.py [--packets 1000000] [--vnet] [--json]
"""

import argparse
import hashlib
import json
import os
import platform
import random
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mptun.pure import checksum as pck  # noqa: E402

MSS = 1448
CHUNK = 64000                # bytes per mapping: what the scheduler writes per MSG_EOR chunk
HEADROOM = 64
ISS, PEER_ISS = 0x10000000, 0x70000000
IDSN, PEER_IDSN = 0x0123456789ABCDEF, 0x0FEDCBA987654321
APP_SRC, PEER = bytes([198, 19, 0, 2]), bytes([198, 18, 2, 2])
WIRE_SRC, WIRE_PORT = bytes([198, 18, 1, 1]), 61001

KERNEL = r'''
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""wire_bench's compiled loop: the outbound per-packet work over an RwBatch, GIL released."""

from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from checksum cimport csum_update32
from mptcpopt cimport MPTCPOPT_DSS_MAX_LEN, TcpOptions, emit_dss, parse_tcp_options
from packet cimport load_be16, load_be32, store_be16, store_be32
from rewrite cimport (
    RW_COUNTER_COUNT, RW_OK, RwBatch, RwPacket, rw_batch_free, rw_batch_get, rw_batch_init, rw_batch_put,
    rw_batch_slot, rw_nat, rw_parse, rw_set_options,
)


cdef class Kernel:
    cdef RwBatch b

    def __cinit__(self, Py_ssize_t n, Py_ssize_t max_packet, Py_ssize_t headroom, Py_ssize_t vnet_len):
        if rw_batch_init(&self.b, n, max_packet, headroom, vnet_len) != 0:
            raise MemoryError()

    def __dealloc__(self):
        rw_batch_free(&self.b)

    @property
    def slot_size(self):
        return self.b.slot_size

    def fill(self, list templates, const unsigned char[::1] kinds, bint full_checksum):
        """Packet i = templates[kinds[i]], its seq advanced by i * 1448 and ack by i * 7."""
        cdef const unsigned char* t[8]
        cdef Py_ssize_t tl[8]
        cdef Py_ssize_t i, k, n = self.b.capacity, h = self.b.headroom, tcp_at = self.b.vnet_len + 20
        cdef unsigned char* p
        cdef uint32_t s0, s1, a0, a1
        cdef uint16_t c
        assert len(templates) <= 8 and kinds.shape[0] == n
        for k in range(len(templates)):
            t[k] = <const unsigned char*>(<bytes>templates[k])
            tl[k] = len(templates[k])
        memset(self.b.counters, 0, sizeof(self.b.counters))
        with nogil:
            for i in range(n):
                k = kinds[i]
                p = rw_batch_slot(&self.b, i) + h
                memcpy(p, t[k], tl[k])
                self.b.start[i] = h
                self.b.length[i] = tl[k]
                s0 = load_be32(p + tcp_at + 4)
                a0 = load_be32(p + tcp_at + 8)
                s1 = s0 + <uint32_t>(i * 1448)
                a1 = a0 + <uint32_t>(i * 7)
                store_be32(p + tcp_at + 4, s1)
                store_be32(p + tcp_at + 8, a1)
                if full_checksum:
                    c = csum_update32(load_be16(p + tcp_at + 16), s0, s1)
                    store_be16(p + tcp_at + 16, csum_update32(c, a0, a1))

    def run(self, const unsigned char[::1] wire_addr, uint16_t wire_port, uint32_t iss, uint32_t peer_iss,
            uint64_t idsn, uint64_t peer_idsn, uint32_t chunk, bint mapping_on_acks):
        """The outbound work on every slot; returns (ok, statuses by code, option-parse sink)."""
        cdef RwPacket pkt
        cdef TcpOptions to
        cdef unsigned char dss[MPTCPOPT_DSS_MAX_LEN]
        cdef Py_ssize_t i, dlen, ok = 0, n = self.b.capacity
        cdef int st
        cdef uint32_t rel, first
        cdef uint64_t data_ack, sink = 0
        cdef const unsigned char* wa = &wire_addr[0]
        with nogil:
            for i in range(n):
                rw_batch_get(&self.b, i, &pkt)
                st = rw_parse(&pkt)
                if st == RW_OK:
                    parse_tcp_options(pkt.data + pkt.vnet_len + pkt.view.options_offset,
                                      pkt.view.options_len, &to)
                    # (the datapath decides by these: keep them live)
                    sink += to.tsval + to.sack_count + to.error
                    # DATA_ACK: the kernel's ACK number mapped to the peer's data sequence space.
                    data_ack = peer_idsn + 1 + <uint32_t>(pkt.view.ack - peer_iss - 1)
                    # Mapping: the chunk holding this segment, found from its sequence number (the
                    # datapath looks it up in its mapping table; here chunks are CHUNK-aligned).
                    rel = pkt.view.seq - iss
                    first = rel - (rel - 1) % chunk
                    if pkt.view.payload_len or mapping_on_acks:
                        dlen = emit_dss(dss, True, data_ack, True, True, idsn + first, True, first,
                                        <uint16_t>chunk, False, False, 0)
                    else:
                        dlen = emit_dss(dss, True, data_ack, True, False, 0, False, 0, 0, False, False, 0)
                    st = rw_set_options(&pkt, False, dss, dlen, 0, self.b.counters)
                    if st == RW_OK:
                        st = rw_nat(&pkt, wa, NULL, wire_port, -1, self.b.counters)
                self.b.status[i] = <unsigned char>st
                self.b.counters[st] += 1
                rw_batch_put(&self.b, i, &pkt)
                if st == RW_OK:
                    ok += 1
        return ok, [self.b.counters[j] for j in range(RW_COUNTER_COUNT)], sink

    def packet(self, Py_ssize_t i):
        assert 0 <= i < self.b.capacity
        return bytes((<char*>rw_batch_slot(&self.b, i) + self.b.start[i])[:self.b.length[i]])
'''


def build_kernel():
    """Compile KERNEL against the current src/fastpath pxds (once per source version) and import it."""
    from Cython import __version__ as cython_version
    fastpath = REPO / "src" / "fastpath"
    digest = hashlib.sha256(KERNEL.encode() + cython_version.encode())
    for name in ("rewrite", "mptcpopt", "checksum", "packet"):
        digest.update((fastpath / f"{name}.pxd").read_bytes())
    modname = "_wire_bench_kernel_" + digest.hexdigest()[:12]
    outdir = REPO / "build" / "wire_bench"
    outdir.mkdir(parents=True, exist_ok=True)
    if not list(outdir.glob(modname + ".*.so")):
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
        for stale in outdir.glob("_wire_bench_kernel_*"):
            if stale.is_file():
                stale.unlink()
        pyx = outdir / f"{modname}.pyx"
        pyx.write_text(KERNEL)
        ext = Extension(modname, [str(pyx)], include_dirs=[str(fastpath)],
                        extra_compile_args=["-O3", "-fno-strict-aliasing"])
        dist = Distribution({"ext_modules": cythonize([ext], include_path=[str(fastpath)], quiet=True,
                                                      language_level=3)})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(outdir)
        cmd.build_temp = str(outdir / "tmp")
        print(f"wire_bench: compiling {modname} (once) ...", file=sys.stderr)
        dist.run_command("build_ext")
    sys.path.insert(0, str(outdir))
    return __import__(modname)


def _sack(blocks):
    return bytes([5, 2 + 8 * len(blocks)]) + b"".join(struct.pack("!II", a, b) for a, b in blocks)


def template(options: bytes, payload: bytes, flags: int, vnet: bool) -> bytes:
    """An IPv4 TCP packet from the app's socket as read from the TUN: full checksum, or with vnet a
    virtio_net_hdr + NEEDS_CSUM partial checksum."""
    assert len(options) % 4 == 0
    tcp = struct.pack("!HHIIBBHHH", 40001, 443, ISS + 1, PEER_ISS + 1, (5 + len(options) // 4) << 4,
                      flags, 502, 0, 0) + options + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, APP_SRC, PEER))
    ip[10:12] = struct.pack("!H", pck.ipv4_header_checksum(bytes(ip)))
    if vnet:
        c = pck.pseudo_partial_v4(APP_SRC, PEER, len(tcp))
        return struct.pack("<BBHHHH", 1, 0, 0, 0, 20, 16) + bytes(ip) + tcp[:16] + struct.pack("!H", c) + tcp[18:]
    c = pck.tcp_checksum_v4(APP_SRC, PEER, tcp)
    return bytes(ip) + tcp[:16] + struct.pack("!H", c) + tcp[18:]


def templates(vnet: bool):
    ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 123456, 654321)
    acks = [template(ts + b"\x01\x01" + _sack([(PEER_ISS + 1000 * k, PEER_ISS + 1000 * k + 500) for k in range(n)]),
                     b"", 0x10, vnet) for n in (1, 2, 3)]
    data = template(ts, bytes(i % 251 for i in range(MSS)), 0x18, vnet)
    return acks + [data]


def verify_packet(pkt: bytes, vnet: bool) -> bool:
    """Full recomputation (pure checksum module) of an output packet; NEEDS_CSUM completed first."""
    off = 10 if vnet else 0
    ip = pkt[off:]
    ihl = (ip[0] & 15) * 4
    if pck.internet_checksum(ip[:ihl]) != 0 or struct.unpack("!H", ip[2:4])[0] != len(ip):
        return False
    seg = bytearray(ip[ihl:])
    if vnet:
        if struct.unpack("!H", seg[16:18])[0] != pck.pseudo_partial_v4(ip[12:16], ip[16:20], len(seg)):
            return False
        pck.complete_partial(seg, 0, 16)
    return pck.tcp_checksum_v4(ip[12:16], ip[16:20], bytes(seg)) == struct.unpack("!H", seg[16:18])[0]


def pure_run(packets, vnet: bool, mapping_on_acks: bool):
    """The same work with the pure twins, packet by packet (mirrors the compiled loop's calls)."""
    from mptun.pure import mptcpopt as pmo
    from mptun.pure import rewrite as prw
    from mptun.pure import rewrite_ops as ops
    vlen = 10 if vnet else 0
    batch = prw.PacketBatch(len(packets), max_packet=1500, headroom=HEADROOM, vnet_hdr_len=vlen)
    for p in packets:
        batch.append(p)
    buf, slot, counters = batch._buf, batch.slot_size, batch._counters
    t0 = time.perf_counter_ns()
    for i in range(len(packets)):
        base = i * slot
        # The twin's internal steps, so both sides do the same calls (the public run() would
        # apply a preset action and not parse the options).
        p = ops.RwPacket(buf, base + batch._start[i], batch._length[i], batch._start[i], vlen)
        st = ops.rw_parse(p)
        if st == prw.OK:
            at = p.ip + p.tcp_offset + 20
            pmo.parse_options(bytes(buf[at:at + p.options_len]))
            data_ack = PEER_IDSN + 1 + ((p.ack - PEER_ISS - 1) & 0xFFFFFFFF)
            rel = (p.seq - ISS) & 0xFFFFFFFF
            first = rel - (rel - 1) % CHUNK
            if p.payload_len or mapping_on_acks:
                dss = pmo.emit_dss(True, data_ack, True, True, IDSN + first, True, first, CHUNK)
            else:
                dss = pmo.emit_dss(True, data_ack, True)
            st = ops.rw_set_options(p, False, dss, 0, counters)
            if st == prw.OK:
                st = ops.rw_nat(p, WIRE_SRC, None, WIRE_PORT, None, counters)
        batch._start[i] = p.data - base
        batch._length[i] = p.length
    elapsed = time.perf_counter_ns() - t0
    return elapsed, [batch.packet(i) for i in range(len(packets))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--ack-ratio", type=float, default=0.5, help="share of pure ACKs (TS + SACK 1-3 blocks)")
    ap.add_argument("--pure-fraction", type=float, default=0.01, help="share run on the pure twins")
    ap.add_argument("--repeat", type=int, default=3, help="compiled runs (refilled between), best reported")
    ap.add_argument("--vnet", action="store_true", help="packets as read from an offload TUN: virtio_net_hdr "
                    "+ NEEDS_CSUM partial checksum (default: plain IPv4 with full checksums)")
    ap.add_argument("--ack-dss", choices=["full", "data-ack"], default="full",
                    help="pure ACKs get the full 26-byte DSS (default) or only a DATA_ACK (12 bytes)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    args = ap.parse_args(argv)

    kernel_mod = build_kernel()
    from mptun._fast import rewrite as frw
    tmpl = templates(args.vnet)
    rng = random.Random(args.seed)
    n = args.packets
    kinds = bytes(rng.choices([0, 1, 2, 3], weights=[args.ack_ratio / 3] * 3 + [1 - args.ack_ratio], k=n))
    vlen = 10 if args.vnet else 0
    kernel = kernel_mod.Kernel(n, 1500, HEADROOM, vlen)
    mapping_on_acks = args.ack_dss == "full"
    run_args = (WIRE_SRC, WIRE_PORT, ISS, PEER_ISS, IDSN, PEER_IDSN, CHUNK, mapping_on_acks)

    best = None
    for _ in range(max(1, args.repeat)):
        kernel.fill(tmpl, kinds, not args.vnet)
        t0 = time.perf_counter_ns()
        ok, counters, _sink = kernel.run(*run_args)
        elapsed = time.perf_counter_ns() - t0
        best = elapsed if best is None else min(best, elapsed)
    fast_ns = best / n
    counts = {name: c for name, c in zip(frw.COUNTER_NAMES, counters) if c}

    # Check the compiled output: a sample by full recomputation, and the pure twin's bytes.
    sample_n = max(1, int(n * args.pure_fraction))
    verified = sum(verify_packet(kernel.packet(i), args.vnet) for i in range(0, n, max(1, n // 2000)))
    checked = len(range(0, n, max(1, n // 2000)))
    fast_sample = [kernel.packet(i) for i in range(sample_n)]
    kernel.fill(tmpl, kinds, not args.vnet)
    pure_elapsed, pure_out = pure_run([kernel.packet(i) for i in range(sample_n)], args.vnet, mapping_on_acks)
    pure_ns = pure_elapsed / sample_n
    agree = pure_out == fast_sample

    result = {
        "packets": n,
        "ip": 4,
        "mix": {"pure_ack_ts_sack": (n - kinds.count(3)) / n,
                "data_1448_ts": kinds.count(3) / n},
        "input": "virtio_net_hdr + NEEDS_CSUM" if args.vnet else "plain IPv4, full checksums",
        "ack_dss": args.ack_dss,
        "fast_ns_per_packet": round(fast_ns, 1),
        "fast_best_of": args.repeat,
        "pure_ns_per_packet": round(pure_ns, 1),
        "pure_sample_packets": sample_n,
        "pure_extrapolated_s": round(pure_ns * n / 1e9, 2),
        "ratio_pure_over_fast": round(pure_ns / fast_ns, 1),
        "statuses_and_events": counts,
        "verified_by_recomputation": f"{verified}/{checked}",
        "fast_and_pure_outputs_identical": agree,
        "goal_ns_per_packet": 500,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wire_bench: {n:,} IPv4 packets ({result['input']}): "
              f"{result['mix']['pure_ack_ts_sack']:.0%} pure ACK + TS + SACK 1-3 blocks, "
              f"{result['mix']['data_1448_ts']:.0%} {MSS}-byte data + TS")
        print("  per packet: parse headers + options, emit DSS (64-bit DATA_ACK"
              + (" + 64-bit DSN mapping on every packet" if mapping_on_acks else "; + 64-bit DSN mapping on data")
              + "), insert, NAT src addr+port, checksums")
        print()
        print(f"  {'implementation':<50}{'packets':>10}{'ns/packet':>12}{'Mpps':>8}")
        print(f"  {'compiled (Cython loop, GIL released, best of ' + str(args.repeat) + ')':<50}"
              f"{n:>10,}{fast_ns:>12.1f}{1e3 / fast_ns:>8.2f}")
        print(f"  {'pure twins (1/' + str(round(1 / args.pure_fraction)) + ' sample, extrapolated)':<50}"
              f"{sample_n:>10,}{pure_ns:>12.1f}{1e3 / pure_ns:>8.3f}")
        print()
        print(f"  ratio pure/compiled: {pure_ns / fast_ns:.0f}x; goal < 500 ns/packet compiled: "
              f"{'met' if fast_ns < 500 else 'NOT met'}")
        print(f"  pure on all {n:,} packets would take ~{pure_ns * n / 1e9:.1f} s")
        print(f"  statuses/events: {counts}")
        print(f"  checksums verified by full recomputation: {verified}/{checked} sampled packets; "
              f"compiled and pure outputs identical on the {sample_n:,}-packet sample: {agree}")
        print(f"  {result['machine']}; single thread; the DSN mapping is arithmetic here, a table lookup "
              "in the datapath")
    return 0 if agree and verified == checked else 1


if __name__ == "__main__":
    sys.exit(main())
