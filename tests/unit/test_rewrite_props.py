"""Properties of the packet rewriter over random packets and actions: a rewritten packet has the fields
asked for and valid checksums (full recomputation); one that is not ok is unchanged; garbage never
crashes; the compiled module and its pure twin produce the same bytes, statuses and counters."""

import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from mptun import impl

from .test_rewrite import (
    ACK, DATA_VALID, FIN, MACS, NOP, PSH, SACK_PERM, SYN, TS, WS7, Dissected, build, dss_ack_only,
    dss_full, pad4, sack, verify,
)

twins = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

plain_options = st.one_of(
    st.just(NOP),
    st.just(TS),
    st.builds(lambda v: b"\x02\x04" + struct.pack("!H", v), u16),
    st.just(WS7),
    st.just(SACK_PERM),
    st.lists(st.tuples(u32, u32), min_size=1, max_size=4).map(lambda b: sack(*b)),
    st.binary(min_size=0, max_size=6).map(lambda b: bytes([254, 2 + len(b)]) + b),  # unknown kind
)
mptcp_options = st.one_of(
    st.just(dss_ack_only()),
    st.just(dss_full()),
    st.just(dss_full(csum=0x1234)),
    st.binary(min_size=1, max_size=10).map(lambda b: bytes([30, 2 + len(b)]) + b),
)


@st.composite
def option_areas(draw):
    opts = b""
    for o in draw(st.lists(st.one_of(plain_options, mptcp_options), max_size=8)):
        if len(pad4(opts + o)) <= 40:
            opts += o
    if draw(st.booleans()) and len(pad4(opts + b"\0")) <= 40:
        opts += b"\0"  # EOL; the builder pads with NOPs, which are then padding after it
    return opts


@st.composite
def packets(draw):
    """(packet bytes, vnet_len, version) for a valid IPv4/IPv6 TCP packet."""
    version = draw(st.sampled_from([4, 6]))
    vnet_len = draw(st.sampled_from([0, 10, 12]))
    csum = draw(st.sampled_from(["full", "partial"])) if vnet_len else "full"
    payload = draw(st.binary(max_size=300))
    gso = vnet_len and csum == "partial" and payload and draw(st.booleans())
    width = 4 if version == 4 else 16
    pkt = build(
        version,
        src=draw(st.binary(min_size=width, max_size=width)),
        dst=draw(st.binary(min_size=width, max_size=width)),
        sport=draw(u16), dport=draw(u16), seq=draw(u32), ack=draw(u32),
        flags=draw(st.sampled_from([ACK, SYN, SYN | ACK, ACK | PSH, FIN | ACK])),
        window=draw(u16), options=draw(option_areas()), payload=payload,
        ip_options=draw(st.sampled_from([b"", b"\x01" * 4, b"\x94\x04\x00\x00"])) if version == 4 else b"",
        hop_by_hop=version == 6 and draw(st.booleans()),
        csum=csum, vnet_len=vnet_len,
        gso_size=draw(st.integers(1, max(1, len(payload)))) if gso else 0,
        vnet_flags=draw(st.sampled_from([0, DATA_VALID])) if vnet_len and csum == "full" else None,
        padding=b"\0" * draw(st.integers(0, 6)),
    )
    return pkt, vnet_len, version


@st.composite
def actions(draw, version):
    width = 4 if version == 4 else 16
    a = {}
    if draw(st.booleans()):
        a["strip_mptcp"] = True
    if draw(st.booleans()):
        a["options"] = draw(st.one_of(mptcp_options, st.just(bytes([30, 3, 0x50])), st.just(b"")))
    if draw(st.booleans()):
        a["clamp_mss"] = draw(st.integers(500, 1500))
    for key in ("src", "dst"):
        if draw(st.booleans()):
            a[key] = draw(st.binary(min_size=width, max_size=width))
    for key in ("sport", "dport"):
        if draw(st.booleans()):
            a[key] = draw(u16)
    if draw(st.booleans()):
        a["eth"] = MACS
    return a


def run_one(rw, pkt, vnet_len, action, headroom):
    batch = rw.PacketBatch(1, max_packet=max(20, len(pkt) - vnet_len), headroom=headroom, vnet_hdr_len=vnet_len)
    batch.append(pkt)
    batch.set_action(0, **action)
    batch.run()
    return batch.status(0), batch.packet(0), batch.start(0), batch.counters()


def _unpadded(pkt, vnet_len):
    """The packet without link-layer padding past its IP length."""
    ip = pkt[vnet_len:]
    total = struct.unpack("!H", ip[2:4])[0] if ip[0] >> 4 == 4 else 40 + struct.unpack("!H", ip[4:6])[0]
    return pkt[:vnet_len + total]


def split_options(options: bytes):
    """[(kind, bytes)] without NOPs, up to EOL."""
    out, i = [], 0
    while i < len(options) and options[i] != 0:
        if options[i] == 1:
            i += 1
            continue
        out.append((options[i], options[i:i + options[i + 1]]))
        i += options[i + 1]
    return out


@given(st.data())
@twins
def test_rewritten_packets_have_what_was_asked_and_valid_checksums(impl_kind, data):
    rw = impl.load("rewrite", impl_kind)
    pkt, vnet_len, version = data.draw(packets())
    action = data.draw(actions(version))
    headroom = data.draw(st.integers(0, 80))
    status, out, start, counters = run_one(rw, pkt, vnet_len, action, headroom)
    before = Dissected(_unpadded(pkt, vnet_len), vnet_len)
    insert = action.get("options", b"")
    old = split_options(before.options)
    # What may never go: everything but SACK (and MPTCP when stripping).
    keep = [(k, b) for k, b in old if k != 5 and not (k == 30 and action.get("strip_mptcp"))]
    minimum = sum(len(b) for _, b in keep) + len(insert)
    changes_options = insert or (action.get("strip_mptcp") and any(k == 30 for k, _ in old))
    if status != rw.OK:
        assert out == pkt and start == headroom
        assert counters[rw.status_name(status)] == 1
        if status == rw.NO_ROOM:
            assert changes_options and (minimum + 3) & ~3 > 40
        else:
            assert status == rw.NO_HEADROOM and headroom < 40 + 14
        return
    assert not (changes_options and (minimum + 3) & ~3 > 40), "fits only by dropping a protected option"
    l2 = 14 if "eth" in action else 0
    d = verify(out, vnet_len, l2)
    assert d.src == action.get("src", before.src) and d.dst == action.get("dst", before.dst)
    assert d.sport == action.get("sport", before.sport) and d.dport == action.get("dport", before.dport)
    assert (d.seq, d.ack, d.flags, d.payload) == (before.seq, before.ack, before.flags, before.payload)
    new = split_options(d.options)
    if changes_options:
        expect_tail = split_options(pad4(insert)) if insert else []
        assert new[len(new) - len(expect_tail):] == expect_tail
        kept = new[:len(new) - len(expect_tail)]
        # Never-dropped options survive in order (an MSS may have been clamped after).
        assert [k for k, _ in kept if k != 5] == [k for k, _ in keep]
        for (k, b), (k0, b0) in zip([x for x in kept if x[0] not in (5, 2)], [x for x in keep if x[0] != 2]):
            assert b == b0
        sacks = [b for k, b in kept if k == 5]
        old_sacks = [b for k, b in old if k == 5]
        assert len(sacks) in (0, len(old_sacks))
        for s, s0 in zip(sacks, old_sacks):
            assert s == s0 or (len(s) == 10 and s == bytes([5, 10]) + s0[2:10])
    else:
        assert [k for k, _ in new] == [k for k, _ in old]
    if "clamp_mss" in action and before.flags & SYN:
        for k, b in new:
            if k == 2 and len(b) == 4:
                assert struct.unpack("!H", b[2:])[0] <= action["clamp_mss"]
                break
    assert start == headroom - (len(out) - len(_unpadded(pkt, vnet_len)))


@given(st.data())
@twins
def test_strict_prefixes_are_malformed_and_untouched(impl_kind, data):
    rw = impl.load("rewrite", impl_kind)
    pkt, vnet_len, version = data.draw(packets())
    pkt = _unpadded(pkt, vnet_len)
    cut = data.draw(st.integers(0, len(pkt) - 1))
    status, out, _, _ = run_one(rw, pkt[:cut], vnet_len, data.draw(actions(version)), 64)
    assert rw.status_name(status).startswith("malformed:") and out == pkt[:cut]


@given(st.binary(max_size=120), st.sampled_from([0, 10, 12]), st.data())
@twins
def test_garbage_never_crashes(impl_kind, junk, vnet_len, data):
    rw = impl.load("rewrite", impl_kind)
    status, out, _, counters = run_one(rw, junk, vnet_len, data.draw(actions(data.draw(st.sampled_from([4, 6])))), 64)
    assert 0 <= status < len(rw.STATUS_NAMES)
    assert counters["packets"] == 1
    if status != rw.OK:
        assert out == junk


@given(st.data())
@twins
def test_random_mutations_never_crash(impl_kind, data):
    rw = impl.load("rewrite", impl_kind)
    pkt, vnet_len, version = data.draw(packets())
    buf = bytearray(pkt)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    status, out, _, _ = run_one(rw, bytes(buf), vnet_len, data.draw(actions(version)), 64)
    assert 0 <= status < len(rw.STATUS_NAMES)
    if status != rw.OK:
        assert out == bytes(buf)


@given(st.data())
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fast_and_pure_agree(data):
    fast, pure = impl.load("rewrite", "fast"), impl.load("rewrite", "pure")
    pkt, vnet_len, version = data.draw(packets())
    if data.draw(st.booleans()):
        buf = bytearray(pkt)
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        pkt = bytes(buf)
    action = data.draw(actions(version))
    headroom = data.draw(st.integers(0, 80))
    assert run_one(fast, pkt, vnet_len, action, headroom) == run_one(pure, pkt, vnet_len, action, headroom)
    assert fast.parse(pkt, vnet_len) == pure.parse(pkt, vnet_len)
