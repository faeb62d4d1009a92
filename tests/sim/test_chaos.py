"""Transfers through a network that loses, reorders and duplicates segments, on seeded schedules:
whatever the schedule, the bytes arrive intact and in order, retransmissions carry the mapping of
the first transmission, and the DATA_ACK never claims a byte the host does not have."""

import random

import pytest

from mptun.wire import crypto
from mptun.wire import mptcp as w

from tests.sim.harness import M32, OUR_KEY, PEER_IDSN, Segment, Sim

OUR_IDSN = crypto.key_idsn(OUR_KEY)
SEEDS = range(20)
ROUNDS_MAX = 2000


class Network:
    """One direction: a queue the schedule drops from, duplicates in and shuffles."""

    def __init__(self, rng: random.Random, loss=0.1, dup=0.05, reorder=0.2):
        self.rng, self.loss, self.dup, self.reorder = rng, loss, dup, reorder
        self.queue: list[Segment] = []

    def send(self, seg: Segment | None) -> None:
        if seg is None or self.rng.random() < self.loss:
            return
        self.queue.append(seg)
        if self.rng.random() < self.dup:
            self.queue.append(seg)
        if len(self.queue) > 1 and self.rng.random() < self.reorder:
            i = self.rng.randrange(len(self.queue))
            self.queue[i], self.queue[-1] = self.queue[-1], self.queue[i]

    def take_all(self) -> list[Segment]:
        out, self.queue = self.queue, []
        return out


def data_ack_of(seg: Segment) -> int | None:
    o = seg.opts
    if o["suboptions"] & (1 << w.Subtype.DSS) and o["dss_flags"] & w.DSS_DATA_ACK:
        return o["data_ack"]
    return None


@pytest.mark.parametrize("seed", SEEDS)
def test_download_through_loss_reordering_and_duplicates(seed):
    rng = random.Random(seed)
    sim = Sim()
    sim.handshake()
    data = rng.randbytes(rng.randrange(50_000, 300_000))
    # The peer maps its data as Linux does: several segments share one mapping of up to 64 KB.
    segs = []
    pos = 0
    while pos < len(data):
        n = min(rng.randrange(1, 65000), len(data) - pos)
        dsn, ssn = PEER_IDSN + 1 + pos, 1 + pos
        for i in range(pos, pos + n, 1400):
            piece = data[i:min(i + 1400, pos + n)]
            segs.append(sim.peer.data(piece, data_ack=OUR_IDSN + 1, map_dsn=dsn, map_ssn=ssn, map_len=n))
        pos += n
    net = Network(rng)
    got = bytearray()
    highest_ack = PEER_IDSN + 1
    for _ in range(ROUNDS_MAX):
        # The peer (re)sends what our kernel has not acknowledged, from the first hole on.
        acked = (sim.kernel.rcv_nxt - sim.peer.isn - 1) & M32
        pending = [s for s in segs if ((s.seq - sim.peer.isn - 1) & M32) + len(s.payload) > acked]
        if not pending and len(got) == len(data):
            break
        for s in pending[:rng.randrange(1, 40)]:
            net.send(s)
        for s in net.take_all():
            ack = sim.deliver(s)
            if ack is not None and (da := data_ack_of(ack)) is not None:
                have = (sim.kernel.rcv_nxt - sim.peer.isn - 1) & M32
                assert da >= highest_ack, "the DATA_ACK went backwards"
                assert da <= PEER_IDSN + 1 + have, "DATA_ACK beyond what the host has (RFC 8684 3.3.2)"
                highest_ack = da
        if rng.random() < 0.7:
            got += sim.app_reads()
    else:
        pytest.fail(f"seed {seed}: not done after {ROUNDS_MAX} rounds")
    assert bytes(got) == data
    assert sim.conn.counters["dss_conflicts"] == 0 and sim.conn.error is None


@pytest.mark.parametrize("seed", SEEDS)
def test_upload_through_loss_reordering_and_duplicates(seed):
    rng = random.Random(1000 + seed)
    sim = Sim(checksums=seed % 2 == 1)
    sim.handshake()
    sim.deliver(sim.peer.ack(data_ack=OUR_IDSN + 1))
    data = rng.randbytes(rng.randrange(50_000, 400_000))
    app_pos = 0
    up, down = Network(rng), Network(rng, loss=0.2)
    first_mapping: dict[int, tuple] = {}
    sent: list[Segment] = []
    for _ in range(ROUNDS_MAX):
        if app_pos < len(data):
            n = min(sim.conn.app_room(), rng.randrange(1, 100_000), len(data) - app_pos)
            sim.conn.app_data(data[app_pos:app_pos + n])
            app_pos += n
        sim.kernel.write_from_core(limit=rng.choice([None, 3000, 70_000]))
        sent += sim.kernel.segments()
        # Our kernel (re)sends everything the peer's TCP has not acknowledged (go-back-N).
        unacked = [s for s in sent if 0 < ((s.seq + len(s.payload) - sim.peer.rcv_nxt) & M32) < (1 << 31)]
        sent = unacked
        for s in unacked[:rng.randrange(1, 60)]:
            seg = sim.kernel.retransmit(s) if s.seq in first_mapping else s
            if seg is None:
                continue        # core dropped a retransmission of bytes the peer just acknowledged
            o = seg.opts
            mapping = (o["dsn"], o["subflow_seq"], o["data_len"]) if o["dss_flags"] & w.DSS_MAPPING else \
                ("mpc", o["mpc_data_len"])
            assert first_mapping.setdefault(seg.seq, mapping) == mapping, "a retransmission changed its mapping"
            up.send(seg)
        for s in up.take_all():
            if s.seq == sim.peer.rcv_nxt:
                sim.peer.take(s)
        if sim.peer.stream(OUR_IDSN + 1) == data and app_pos == len(data) and not unacked:
            break
        # The peer acknowledges what it has, at both levels, over a lossy, reordering return path.
        have = len(sim.peer.stream(OUR_IDSN + 1))
        down.send(sim.peer.ack(data_ack=OUR_IDSN + 1 + have, window=2000))
        for s in down.take_all():
            sim.deliver(s)
    else:
        pytest.fail(f"seed {seed}: not done after {ROUNDS_MAX} rounds")
    assert sim.peer.stream(OUR_IDSN + 1) == data
    assert sim.conn.error is None
