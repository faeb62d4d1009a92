"""DsnAssembler against a trivial model (a dict of DSN offset -> byte), both twins in lockstep.

Random inserts (honest, corrupted where already held, below the start, past the window)
and reads. Each step: the compiled and pure twins agree on everything they expose; with
an unlimited range table they also agree byte for byte and counter for counter with the
model; with a tiny range table they keep their invariants; and what was read is always
exactly the original stream.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mptun import impl

M64 = 1 << 64
STREAM_LEN = 400

FastAssembler = impl.load("assembler", "fast").DsnAssembler
PureAssembler = impl.load("assembler", "pure").DsnAssembler


def state_of(a) -> tuple:
    return (a.read_dsn, a.next_dsn, a.readable(), a.window(), a.ranges(), a.duplicate_bytes,
            a.overlap_bytes, a.beyond_window_bytes, a.evicted_bytes, a.range_limit_bytes)


class AssemblerModel(RuleBasedStateMachine):
    @initialize(
        start=st.sampled_from([0, 1000, M64 - 1, M64 - 3, M64 - 20, M64 - 37, (1 << 32) - 5, 1 << 63]),
        capacity=st.integers(1, 40),
        max_ranges=st.sampled_from([0, 1, 2, 3, None]),
        stream=st.binary(min_size=STREAM_LEN, max_size=STREAM_LEN),
    )
    def setup(self, start, capacity, max_ranges, stream):
        # None: a table big enough never to fill (at most capacity / 2 ranges fit), so the
        # assembler must then behave exactly like the model.
        self.exact = max_ranges is None
        max_ranges = capacity if max_ranges is None else max_ranges
        self.start, self.capacity, self.stream = start, capacity, stream
        self.fast = FastAssembler(start, capacity, max_ranges)
        self.pure = PureAssembler(start, capacity, max_ranges)
        self.max_ranges = max_ranges
        self.read_off = 0   # stream offset of read_dsn
        self.next_off = 0   # model's in-order end
        self.held = {}      # stream offset -> byte, for offsets >= read_off
        self.delivered = bytearray()
        self.counts = dict(duplicate=0, overlap=0, beyond=0)

    def dsn(self, offset: int) -> int:
        return (self.start + offset) % M64

    def insert_both(self, offset: int, data: bytes) -> None:
        before = state_of(self.fast)
        got_fast = self.fast.insert(self.dsn(offset), data)
        got_pure = self.pure.insert(self.dsn(offset), data)
        assert got_fast == got_pure
        after = state_of(self.fast)
        # Every byte is either stored or counted under exactly one discard reason.
        dup, ovl, beyond, _evicted, limit = (a - b for a, b in zip(after[5:], before[5:]))
        assert got_fast + dup + ovl + beyond + limit == len(data)
        if self.exact:
            assert got_fast == self.model_insert(offset, data)
        else:
            # With a tiny range table the model cannot predict evictions; it follows
            # next_dsn so that reads stay checkable against the stream.
            self.next_off = self.read_off + self.fast.readable()

    def model_insert(self, offset: int, data: bytes) -> int:
        accepted = 0
        for i, byte in enumerate(data):
            pos = offset + i
            if pos < self.next_off:
                self.counts["duplicate"] += 1
            elif pos >= self.read_off + self.capacity:
                self.counts["beyond"] += 1
            elif pos in self.held:
                self.counts["overlap"] += 1
            else:
                self.held[pos] = byte
                accepted += 1
        while self.next_off in self.held:
            self.next_off += 1
        return accepted

    def segment(self, data, lo_slack: int, hi_slack: int):
        lo = max(0, self.read_off - lo_slack)
        hi = min(STREAM_LEN - 1, self.read_off + self.capacity + hi_slack)
        offset = data.draw(st.integers(lo, hi))
        length = data.draw(st.integers(0, min(self.capacity + 4, STREAM_LEN - offset)))
        return offset, length

    @rule(data=st.data())
    def insert_honest(self, data):
        offset, length = self.segment(data, 8, 8)
        self.insert_both(offset, self.stream[offset:offset + length])

    @rule(data=st.data())
    def insert_corrupted_where_already_received(self, data):
        # A retransmission or a zero-window probe whose bytes disagree with what is held:
        # the flipped bytes, all at offsets already received, must never reach the reader.
        offset, length = self.segment(data, 8, 2)
        held_ranges = [((s - self.start) % M64, (e - self.start) % M64)
                       for s, e in self.fast.ranges()]
        chunk = bytearray(self.stream[offset:offset + length])
        for i in range(length):
            pos = offset + i
            if pos < self.next_off or any(s <= pos < e for s, e in held_ranges):
                chunk[i] ^= 0xFF
        self.insert_both(offset, bytes(chunk))

    @rule(back=st.integers(1, 2 * 40), junk=st.binary(min_size=1, max_size=8))
    def insert_below_start(self, back, junk):
        # Bytes entirely before the first DSN (offset < 0): always duplicates.
        length = min(len(junk), back)
        self.insert_both(-back, junk[:length])

    @rule(far=st.sampled_from([1 << 20, 1 << 40, (1 << 63) - 1]))
    def insert_far_ahead(self, far):
        self.insert_both(self.read_off + far, b"\x00\x01")

    @rule(max_len=st.integers(0, 48))
    def read(self, max_len):
        got = self.fast.read(max_len)
        assert self.pure.read(max_len) == got
        self.model_read(got, max_len)

    @rule(size=st.integers(0, 48))
    def read_into(self, size):
        buf_fast, buf_pure = bytearray(size), bytearray(size)
        n = self.fast.read_into(buf_fast)
        assert self.pure.read_into(buf_pure) == n
        assert buf_fast == buf_pure
        self.model_read(bytes(buf_fast[:n]), size)

    def model_read(self, got: bytes, max_len: int) -> None:
        expect_len = min(max_len, self.next_off - self.read_off)
        assert len(got) == expect_len
        if self.exact:
            assert got == bytes(self.held.pop(self.read_off + i) for i in range(expect_len))
        assert got == self.stream[self.read_off:self.read_off + expect_len]
        self.read_off += expect_len
        self.delivered += got
        self.held = {k: v for k, v in self.held.items() if k >= self.read_off}

    @precondition(lambda self: hasattr(self, "fast"))
    @invariant()
    def twins_agree(self):
        assert state_of(self.fast) == state_of(self.pure)

    @precondition(lambda self: hasattr(self, "fast"))
    @invariant()
    def delivered_is_the_stream(self):
        assert bytes(self.delivered) == self.stream[:len(self.delivered)]
        assert self.fast.read_dsn == self.dsn(self.read_off)
        assert self.fast.next_dsn == self.dsn(self.next_off)

    @precondition(lambda self: hasattr(self, "fast"))
    @invariant()
    def ranges_are_well_formed(self):
        ranges = self.fast.ranges()
        assert len(ranges) <= self.max_ranges
        prev_end = self.next_off
        for start, end in ranges:
            s, e = (start - self.start) % M64, (end - self.start) % M64
            assert prev_end < s < e <= self.read_off + self.capacity
            prev_end = e
        assert self.fast.window() == self.capacity - (self.next_off - self.read_off)

    @precondition(lambda self: hasattr(self, "fast") and self.exact)
    @invariant()
    def matches_the_model_exactly(self):
        a = self.fast
        assert a.duplicate_bytes == self.counts["duplicate"]
        assert a.overlap_bytes == self.counts["overlap"]
        assert a.beyond_window_bytes == self.counts["beyond"]
        assert a.evicted_bytes == 0 and a.range_limit_bytes == 0
        held_above = sorted(k for k in self.held if k >= self.next_off)
        model_ranges = []
        for k in held_above:
            if model_ranges and model_ranges[-1][1] == k:
                model_ranges[-1][1] = k + 1
            else:
                model_ranges.append([k, k + 1])
        assert a.ranges() == [(self.dsn(s), self.dsn(e)) for s, e in model_ranges]


AssemblerModel.TestCase.settings = settings(max_examples=300, stateful_step_count=60,
                                            deadline=None)
TestAssemblerModel = AssemblerModel.TestCase
