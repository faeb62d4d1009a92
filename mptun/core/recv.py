"""ReceivePath: the peer's data stream: its mappings to the DsnAssembler, DSS checksums, DATA_ACK, DATA_FIN.

The peer's mappings are recorded per subflow (subflow offset -> DSN) before the packet reaches the
kernel socket; bytes read from a subflow socket are placed by DSN into one bounded DsnAssembler and
read out in order for the app. The DATA_ACK is what the host has received: the reassembled prefix
plus what the kernel sockets acknowledged and the mappings place (RFC 8684 3.3.2). After fallback
the stream is plain TCP: bytes in order, no DSN.
"""

from __future__ import annotations

from collections.abc import Sequence

from mptun import impl
from mptun.core.mapping import INFINITE
from mptun.core.mib import Counters
from mptun.core.seqspace import M64, expand_dsn, u32, unwrap32, unwrap64
from mptun.core.subflow import Subflow
from mptun.wire import mptcp as w

_asm = impl.load("assembler")
_ck = impl.load("checksum")

# The peer's mappings held per subflow (announced, not yet read): more is refused and counted.
PEER_MAPPINGS_MAX = 8192


class ReceivePath:
    def __init__(self, limit: int, counters: Counters):
        self.limit = limit
        self.counters = counters
        self.assembler = None
        self.plain: bytearray | None = None  # fallback: bytes in order, no DSN
        self.checksums = False
        self.rcv_ref = 0                   # unwrapped DSN near the reassembly point
        self.fin_dsn: int | None = None    # the peer's DATA_FIN
        self.fin_ack_pending = False       # its DATA_ACK must go out on a crafted ACK
        self.fin_delivered = False         # the app has every byte before it, and its FIN
        self.data_ack_sent = 0
        self.frozen = False                # the app can read no more: DATA_ACK stays where it is
        self._dack_key = None
        self._dack = 0
        self._rx_checks: dict = {}         # (subflow id, mapping start) -> (DSS checksum, announced length)

    def start(self, start_dsn: int, checksums: bool) -> None:
        """MPTCP: the peer's stream starts at start_dsn (its IDSN + 1)."""
        self.rcv_ref = start_dsn
        self.data_ack_sent = start_dsn
        self.checksums = checksums
        self.assembler = _asm.DsnAssembler(start_dsn & M64, self.limit)

    def start_plain(self) -> None:
        """Fallback: the subflow's bytes are the stream."""
        self.plain = bytearray()

    # ------------------------------------------------------------ the peer's DSS

    def record_mapping(self, sf: Subflow, seq: int, payload_len: int, o: dict, data_fin: bool) -> None:
        """A DSS mapping (and maybe a DATA_FIN) on the peer's segment at seq."""
        dsn = expand_dsn(self.rcv_ref, o["dsn"], bool(o["dss_flags"] & w.DSS_DSN_64))
        length = announced = o["data_len"]
        if data_fin and (payload_len or o["subflow_seq"] == 0):
            # RFC 8684 3.3.3: the DATA_FIN is the last octet of the mapping.
            fin = dsn + length - 1 if length else dsn
            if self.fin_dsn is None:
                self.fin_dsn = fin
            self.fin_ack_pending = True
            self._dack_key = None
            length = max(0, length - 1)
            if o["subflow_seq"] == 0 or length == 0:
                return
        if length == 0:
            # RFC 8684 3.3.1: data-level length 0 is an infinite mapping (fallback).
            self.counters["fallback_infinite_mapping"] += 1
            length = INFINITE
        if payload_len == 0 and length != INFINITE:
            return      # a mapping describes the payload it rides on (a bare DATA_FIN aside)
        start = unwrap32(sf.read_ssn, o["subflow_seq"])
        if length != INFINITE:
            rel = sf.in_offset(seq)
            if start >= rel + payload_len or start + length <= rel:
                self.counters["dss_mapping_off_payload"] += 1
                return
        maps = sf.peer_maps
        if len(maps) >= PEER_MAPPINGS_MAX and maps.lookup(start) is None:
            self.counters["peer_mappings_overflow"] += 1
            return
        if maps.add(start, dsn, length):
            if self.checksums and o["dss_has_checksum"]:
                # Linux (subflow.c validate_data_csum) and RFC 8684 3.3.1: the pseudo-header
                # carries the announced data-level length, the DATA_FIN's octet included.
                self._rx_checks[(id(sf), start)] = (o["dss_checksum"], announced)
        elif maps.conflicts:
            self.counters["dss_conflicts"] += maps.conflicts
            maps.conflicts = 0

    # ------------------------------------------------------------ bytes from subflow sockets

    def room(self) -> int:
        """How many bytes may be read from subflow sockets now (reassembly space)."""
        if self.plain is not None:
            return max(0, self.limit - len(self.plain))
        return self.assembler.window() if self.assembler is not None else 0

    def room_for(self, sf: Subflow) -> int:
        """How many bytes may be read from sf's socket now: only what lands inside the reassembly
        ring. Bytes mapped further ahead (a fast subflow running ahead of a slow one's hole) stay in
        the kernel socket, whose window then closes: never read and refused, as our kernel
        acknowledged them already and the peer would not send them again."""
        room = self.room()
        if self.plain is not None or room <= 0:
            return room
        m = sf.peer_maps.lookup(sf.read_ssn)
        if m is None:
            return room
        start, dsn, length = m
        asm = self.assembler
        ahead = dsn + sf.read_ssn - start - unwrap64(self.rcv_ref, asm.read_dsn)
        if length == INFINITE:
            return max(0, min(room, asm.capacity - ahead))
        return max(0, min(asm.capacity - ahead, start + length - sf.read_ssn))

    def place(self, sf: Subflow, data) -> str | None:
        """Bytes read from sf's socket, placed by the peer's mappings; a reason if the connection must reset."""
        n = len(data)
        if self.plain is not None:
            self.plain += data
            sf.read_ssn += n
            return None
        view = memoryview(data)
        pos = 0
        asm = self.assembler
        while pos < n:
            off = sf.read_ssn
            m = sf.peer_maps.lookup(off)
            if m is None:
                # RFC 8684 3.3.1: data without a mapping cannot be placed in the data stream.
                return "unmapped_data"
            start, dsn, length = m
            take = min(n - pos, start + length - off)
            piece = view[pos:pos + take]
            if self.checksums and length != INFINITE and not self._check_piece(sf, start, dsn, length, piece):
                return "dss_checksum_failures"
            # Bytes mapped below what is held are duplicates (Linux's zero-window probes):
            # the assembler keeps the first copy and never overwrites it.
            stored = asm.insert((dsn + (off - start)) & M64, piece)
            if stored < take:
                # Already held: a reinjected or redundant copy, or a zero-window probe's byte.
                self.counters["duplicate_data"] += take - stored
            sf.read_ssn += take
            pos += take
        sf.peer_maps.prune_below(sf.read_ssn)
        self._advance_ref()
        return None

    def _check_piece(self, sf: Subflow, start: int, dsn: int, length: int, piece) -> bool:
        key = (id(sf), start)
        if key not in self._rx_checks:
            return True
        if sf.rx_csum is None or sf.rx_csum[0] != start:
            sf.rx_csum = (start, 0, 0)
        _, acc, got = sf.rx_csum
        acc = _ck.ones_sum(piece, acc, got)
        got += len(piece)
        if got < length:
            sf.rx_csum = (start, acc, got)
            return True
        sf.rx_csum = None
        want, announced = self._rx_checks.pop(key)
        return _ck.dss_checksum_from_sum(dsn & M64, u32(start), announced, acc) == want

    def _advance_ref(self) -> None:
        self.rcv_ref = unwrap64(self.rcv_ref, self.assembler.read_dsn)

    def last_subflow_ended(self) -> None:
        """No subflow can bring more: the stream ends where it is, as if with a DATA_FIN."""
        if self.fin_dsn is None and self.assembler is not None:
            self.counters["subflow_eof_without_data_fin"] += 1
            self.fin_dsn = unwrap64(self.rcv_ref, self.assembler.next_dsn)

    # ------------------------------------------------------------ bytes for the app

    def readable(self) -> int:
        """In-order bytes waiting for the app."""
        if self.plain is not None:
            return len(self.plain)
        return self.assembler.readable() if self.assembler is not None else 0

    def read(self, max_len: int) -> bytes:
        if self.plain is not None:
            out = bytes(self.plain[:max_len])
            del self.plain[:len(out)]
            return out
        if self.assembler is None:
            return b""
        out = self.assembler.read(max_len)
        self._advance_ref()
        return out

    def fin_reached(self) -> bool:
        """Every byte before the peer's DATA_FIN has been read out."""
        if self.fin_dsn is None or self.assembler is None:
            return False
        return unwrap64(self.rcv_ref, self.assembler.read_dsn) >= self.fin_dsn

    # ------------------------------------------------------------ DATA_ACK

    def deliver_fin(self) -> None:
        """The app has read everything before the DATA_FIN and got its FIN: only now is the DATA_FIN
        acknowledged. Until then the peer's connection stays open at the data level, so that an app
        that exits with data unread can still abandon it with MP_FASTCLOSE (RFC 8684 3.5) rather
        than leave the peer believing everything was delivered."""
        self.fin_delivered = True
        self._dack_key = None

    def freeze(self) -> None:
        """The app is gone: acknowledge nothing more at the data level."""
        self.frozen = True

    def data_ack(self, subflows: Sequence[Subflow]) -> int:
        """RFC 8684 3.3.2: the contiguous DSN prefix the host has received: what is reassembled
        plus what the kernel sockets acknowledged (mapped, not yet read). Never goes backwards."""
        if self.frozen:
            return self.data_ack_sent
        asm = self.assembler
        base = unwrap64(self.rcv_ref, asm.next_dsn)
        # A closed subflow's socket is gone: only what was read from it counts.
        key = (base, tuple((s.read_ssn, s.kernel_ack_ssn, s.peer_maps.version, s.closed) for s in subflows),
               self.fin_dsn)
        if key == self._dack_key:
            return self._dack
        runs = []
        for s in subflows:
            if not s.closed:
                runs.extend(s.peer_maps.runs(s.read_ssn, s.kernel_ack_ssn))
        runs.extend((unwrap64(base, a), unwrap64(base, b)) for a, b in asm.ranges())
        runs.sort()
        ack = base
        for a, b in runs:
            if a > ack:
                break
            if b > ack:
                ack = b
        if self.fin_dsn is not None and ack == self.fin_dsn and self.fin_delivered:
            ack += 1   # RFC 8684 3.3.3: the DATA_FIN takes one octet of data sequence space
        if ack < self.data_ack_sent:
            ack = self.data_ack_sent
        self.data_ack_sent = ack
        if self.fin_ack_pending and ack > self.fin_dsn:
            self.fin_ack_pending = False
        self._dack_key, self._dack = key, ack
        return ack
