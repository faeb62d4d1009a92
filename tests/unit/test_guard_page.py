"""The compiled parsers never read past the end of their input, checked against a guard page.

Each input is placed so that its last byte is the last byte of a readable page and the
next page is PROT_NONE: one byte of over-read is a SIGSEGV. The loop runs in a child
process so that a crash fails this test with its input, instead of killing the run.
"""

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(r'''
    import ctypes, mmap, random, sys
    from mptun import impl

    packet, mptcpopt, rewrite = (impl.load(n, "fast") for n in ("packet", "mptcpopt", "rewrite"))
    PAGE = mmap.PAGESIZE
    region = mmap.mmap(-1, 2 * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(base + PAGE), PAGE, 0) == 0, ctypes.get_errno()
    view = memoryview(region)

    def at_edge(data):
        start = PAGE - len(data)
        view[start:PAGE] = data
        return view[start:PAGE]

    # Realistic starts (IPv4/IPv6 + TCP with options, MPTCP option areas), then mutated and cut.
    from ipaddress import ip_address
    from mptun.wire.mptcp import Dss
    from mptun.wire.tcpip import Mss, Sack, Timestamps, TcpHeader, build_options, build_packet
    dss = Dss(data_ack=1 << 40, data_ack_64=True, dsn=1 << 50, dsn_64=True, subflow_seq=1, data_len=1400).emit()
    opts = build_options(Timestamps(1, 2), Sack(((1, 2), (3, 4))))
    seeds = []
    for src, dst in (("198.18.0.1", "198.18.0.2"), ("2001:2::1", "2001:2::2")):
        for area in (opts, build_options(Mss(1460)), dss + b"\x01\x01"):
            tcp = TcpHeader(src_port=1, dst_port=2, seq=3, options=area)
            seeds.append(build_packet(ip_address(src), ip_address(dst), tcp, b"x" * 20))
        seeds.append(dss)
    rng = random.Random(8684)
    n = 0
    for round_ in range(int(sys.argv[1])):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.5:
            data = data[:rng.randrange(len(data) + 1)]
        if rng.random() < 0.1:
            data = bytearray(rng.randbytes(rng.randrange(80)))
        edge = at_edge(bytes(data))
        packet.parse_packet(edge)
        mptcpopt.parse_options(edge)
        for vnet in (0, 10, 12):
            rewrite.parse(edge, vnet)
        n += 1
    print("checked", n)
''')


def test_compiled_parsers_stay_inside_their_input():
    proc = subprocess.run([sys.executable, "-c", CHILD, "30000"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"child died (signal {-proc.returncode} if negative): {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "checked 30000"


def test_the_guard_page_really_traps():
    """Control: reading one byte past the edge does crash the child, so the test above can fail."""
    probe = CHILD.split("# Realistic starts")[0] + "bytes(view[PAGE - 4:PAGE + 1])\nprint('no trap')\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no trap" not in proc.stdout
