"""The MPTCP layer of one app connection, sans I/O: keys, subflows, DSN send buffer, reassembly, DATA_FIN.

A Connection is driven by the datapath (one call per subflow packet each way: `outgoing` returns
the MPTCP options to add, `incoming` records what the peer said) and by the daemon (app bytes in,
subflow bytes in, chunks out, `timers(now)`). It never touches sockets or clocks: `now` is given.
DSNs are kept unwrapped (Python ints that never wrap); only what goes on the wire is taken mod 2^64.
"""

from __future__ import annotations

from mptun import impl
from mptun.core.counters import Counters
from mptun.core.mapping import INFINITE, MappingTable
from mptun.wire import crypto
from mptun.wire import mptcp as w

_opt = impl.load("mptcpopt")
_seq = impl.load("seq")
_asm = impl.load("assembler")
_ck = impl.load("checksum")

M32 = (1 << 32) - 1
M64 = (1 << 64) - 1

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# Chunks: one mapping each, written with MSG_EOR. The data-level length is 16 bits
# (RFC 8684 3.3), so a chunk stays below 64 KB; large chunks make large segments.
CHUNK_MAX = 65000
# Bytes read from the app and kept until DATA_ACKed (reinjection needs them).
SEND_BUFFER = 8 << 20
# The reassembly ring: what was read from subflows and not yet written to the app.
RECV_BUFFER = 1 << 20
# A bare DATA_FIN is retransmitted until DATA_ACKed (RFC 8684 3.3.3), with backoff.
FIN_RTO_INITIAL = 0.2
FIN_RTO_MAX = 3.0
FIN_MAX_TRIES = 12
# The peer's mappings held per subflow (announced, not yet read): more is refused and counted.
PEER_MAPPINGS_MAX = 8192
# The persist timer: while the peer's data-level window is closed, data waits and everything
# sent is acknowledged, the kernel has nothing queued and never probes; if the peer's one window
# update is lost, only a probe of ours makes it say its window again.
PERSIST_INITIAL = 0.2
PERSIST_MAX = 10.0

# Connection states
CONNECTING = "connecting"      # app SYN held, subflow 0 handshaking
ESTABLISHED = "established"
CLOSING = "closing"            # a DATA_FIN (or FIN in fallback) sent or received
CLOSED = "closed"              # both directions done; NAT entries linger for the last ACKs
ABORTED = "aborted"

MPTCP = "mptcp"
FALLBACK = "fallback"

# Aborts the peer started: it needs no MP_FASTCLOSE from us. Every other abort sends one.
PEER_ABORTS = frozenset({"fastclose_from_peer", "resets_from_peer"})


def unwrap64(ref: int, value: int) -> int:
    """The unwrapped DSN whose low 64 bits are value, nearest to the unwrapped ref."""
    return ref + _seq.diff64(value & M64, ref & M64)


def unwrap32(ref: int, value: int) -> int:
    """The unwrapped offset whose low 32 bits are value, nearest to ref (a non-negative int)."""
    d = (value - ref) & M32
    return ref + (d - (1 << 32) if d >= (1 << 31) else d)


def _u32(x: int) -> int:
    return x & M32


class Subflow:
    """One kernel TCP socket carrying part of a connection: its sequence spaces and mappings.

    Offsets ("ssn") are relative subflow sequence numbers: byte k of the stream written to
    (or read from) the kernel socket has ssn k + 1 (RFC 8684 3.3.1)."""

    def __init__(self, conn: Connection, path: int, local_port: int, address_id: int = 0):
        self.conn = conn
        self.path = path
        self.local_port = local_port
        self.address_id = address_id
        self.established = False       # the kernel socket's connect completed
        self.closed = False            # the kernel socket is closed (its packets may still pass)
        self.eof = False               # the kernel socket returned EOF (the peer's FIN)
        self.our_isn: int | None = None
        self.peer_isn: int | None = None
        self.peer_wscale = 0
        self.our_wscale = 0            # from our SYN: scales the windows our kernel advertises
        self.rcv_wnd_edge: int | None = None   # right edge of our kernel's advertised window (ssn)
        self.our_maps = MappingTable()   # what the scheduler wrote: ssn -> dsn
        self.peer_maps = MappingTable()  # what the peer announced: ssn -> dsn
        self.our_csums: dict[int, int] = {}
        self.write_ssn = 1             # next ssn written into the kernel socket
        self.read_ssn = 1              # next ssn read out of the kernel socket
        self.kernel_ack_ssn = 1        # our kernel has received everything below this
        self.peer_ack_ssn = 1          # the peer's TCP ACK: it has everything below this
        self.first_chunk_len = 0       # the chunk an MP_CAPABLE with data describes
        self.chunk: list | None = None  # [dsn, bytes, sent] being written
        self.mpc_ack_sent = False
        # The latest outgoing segment: a crafted ACK copies its numbers.
        self.snd_nxt: int | None = None
        self.last_ack: int | None = None
        self.last_window = 0
        self.last_options = b""
        # Running DSS checksum of the peer mapping being read: (mapping start, sum, bytes)
        self.rx_csum: tuple[int, int, int] | None = None

    def describe(self) -> dict:
        return {"path": self.path, "port": self.local_port, "established": self.established,
                "closed": self.closed, "bytes_out": self.write_ssn - 1, "bytes_in": self.read_ssn - 1}


class ControlSegment:
    """A pure ACK mptun sends itself on a subflow (bare DATA_FIN, DATA_ACK of the peer's DATA_FIN)."""

    __slots__ = ("subflow", "seq", "ack", "window", "options")

    def __init__(self, subflow: Subflow, seq: int, ack: int, window: int, options: bytes):
        self.subflow, self.seq, self.ack, self.window, self.options = subflow, seq, ack, window, options


class Connection:
    """One app connection as an MPTCP connection: the data-level state shared by its subflows."""

    def __init__(self, conn_id: int, key: int, now: float, counters: Counters, *,
                 checksums: bool = False, send_buffer: int = SEND_BUFFER, recv_buffer: int = RECV_BUFFER):
        self.id = conn_id
        self.key = key
        self.token = crypto.key_token(key)
        self.idsn = crypto.key_idsn(key)
        self.counters = counters
        self.created = now
        self.state = CONNECTING
        self.mode: str | None = None
        self.want_checksums = checksums
        self.checksums = False
        self.peer_key: int | None = None
        self.subflows: list[Subflow] = []
        self.error: str | None = None
        self.peer_dss_seen = False

        # Send side: bytes from the app by DSN. send_buf holds [snd_una, snd_end).
        self.send_limit = send_buffer
        self.send_buf = bytearray()
        self.snd_una = self.idsn + 1
        self.snd_nxt = self.idsn + 1       # next DSN to put into a chunk
        self.peer_wnd_end: int | None = None
        self.app_eof = False               # the app sent FIN: DATA_FIN after the last byte
        self.fin_sent_at: float | None = None
        self.fin_rto = FIN_RTO_INITIAL
        self.fin_tries = 0
        self.fin_acked = False
        self.all_acked_at: float | None = None
        self.persist_at: float | None = None
        self.persist_rto = PERSIST_INITIAL

        # Receive side.
        self.recv_limit = recv_buffer
        self.assembler = None
        self.rcv_ref = 0                   # unwrapped DSN near the reassembly point
        self.plain_rx = bytearray()        # fallback: bytes in order, no DSN
        self.peer_fin_dsn: int | None = None
        self.peer_fin_ack_pending = False
        self.data_ack_sent = 0
        self.app_shut = False              # FIN passed on to the app
        self.bytes_from_app = 0
        self.bytes_to_app = 0
        self._dack_key = None
        self._dack = 0
        self._rx_checks: dict = {}         # (subflow id, mapping start) -> (DSS checksum, announced length)

    # ------------------------------------------------------------ properties

    @property
    def snd_end(self) -> int:
        return self.snd_una + len(self.send_buf)

    @property
    def fin_dsn(self) -> int | None:
        return self.snd_end if self.app_eof else None

    @property
    def is_mptcp(self) -> bool:
        return self.mode == MPTCP

    def new_subflow(self, path: int, local_port: int) -> Subflow:
        sf = Subflow(self, path, local_port, address_id=len(self.subflows))
        self.subflows.append(sf)
        return sf

    def live_subflows(self) -> list[Subflow]:
        return [s for s in self.subflows if s.established and not s.closed]

    # ------------------------------------------------------------ handshake

    def _set_fallback(self, reason: str) -> None:
        self.mode = FALLBACK
        self.counters[reason] += 1

    def _start_receiving(self) -> None:
        assert self.peer_key is not None
        start = crypto.key_idsn(self.peer_key) + 1
        self.rcv_ref = start
        self.data_ack_sent = start
        self.assembler = _asm.DsnAssembler(start & M64, self.recv_limit)

    # ------------------------------------------------------------ outgoing subflow packets

    def outgoing(self, sf: Subflow, seq: int, ack: int, flags: int, payload_len: int, window: int,
                 options: bytes) -> bytes | None:
        """The MPTCP options to add to this segment of sf going to the peer (None: add nothing).

        Raises LookupError if the segment cannot be sent as it is (it is dropped; TCP retransmits)."""
        if flags & TCP_SYN:
            sf.our_isn = seq
            sf.snd_nxt = _u32(seq + 1)
            sf.our_wscale = _wscale_of(options)
            sf.rcv_wnd_edge = 1 + window     # a SYN's window is never scaled (RFC 7323 2.2)
            if self.mode == FALLBACK:
                return None
            # RFC 8684 3.1: MP_CAPABLE in the SYN, version 1, H (HMAC-SHA256); A if we want checksums.
            return _opt.emit_mp_capable_syn(self._mpc_flags())
        if sf.our_isn is None:
            raise LookupError("segments_unmapped")
        end = _u32(seq + payload_len + (1 if flags & TCP_FIN else 0))
        if sf.snd_nxt is None or _seq.after32(end, sf.snd_nxt):
            sf.snd_nxt = end
        if flags & TCP_ACK:
            sf.last_ack = ack
            sf.last_window = window
            sf.last_options = options
        if self.mode != MPTCP:
            return None
        if flags & TCP_RST:
            if self.state == ABORTED and self.error not in PEER_ABORTS and self.peer_key is not None:
                # RFC 8684 3.5: MP_FASTCLOSE with the peer's key on a RST closes the whole connection.
                return _opt.emit_mp_fastclose(self.peer_key & M64)
            return None
        if flags & TCP_ACK:
            self._note_kernel_ack(sf, ack)

        rel = unwrap32(sf.write_ssn, _u32(seq - sf.our_isn)) if payload_len else 0
        if not self.peer_dss_seen:
            # RFC 8684 3.1: until the peer's first DSS, the third ACK's MP_CAPABLE is repeated,
            # and the first data carries both keys and the data-level length (in case the third
            # ACK was lost: the passive opener creates its socket from whichever arrives).
            if payload_len == 0:
                sf.mpc_ack_sent = True
                return _opt.emit_mp_capable_ack(self._mpc_flags(), self.key, self.peer_key & M64)
            if sf.first_chunk_len and rel + payload_len <= 1 + sf.first_chunk_len and sf is self.subflows[0]:
                csum = sf.our_csums.get(1, 0)
                return _opt.emit_mp_capable_ack_data(self._mpc_flags(), self.key, self.peer_key & M64,
                                                     sf.first_chunk_len, self.checksums, csum)
        data_ack = self._data_ack()
        if payload_len == 0:
            return _opt.emit_dss(True, data_ack & M64, True)
        m = sf.our_maps.lookup(rel)
        if m is None:
            if rel + payload_len <= sf.peer_ack_ssn:
                # The peer acknowledged these bytes while the kernel retransmitted them (its
                # ACK was still on the way in): harmless to drop.
                raise LookupError("retransmits_of_acked_data")
            raise LookupError("segments_unmapped")
        start, dsn, length = m
        if rel + payload_len > start + length:
            raise LookupError("segments_across_mappings")
        return _opt.emit_dss(True, data_ack & M64, True, True, dsn & M64, True, _u32(start), length, False,
                             self.checksums, sf.our_csums.get(start, 0))

    def _mpc_flags(self) -> int:
        return w.MPC_HMAC_SHA256 | (w.MPC_CHECKSUM_REQUIRED if (self.want_checksums or self.checksums) else 0)

    def _note_kernel_ack(self, sf: Subflow, ack: int) -> None:
        if sf.peer_isn is None:
            return
        rel = unwrap32(sf.kernel_ack_ssn, _u32(ack - sf.peer_isn))
        if rel > sf.kernel_ack_ssn:
            sf.kernel_ack_ssn = rel
        edge = rel + (sf.last_window << sf.our_wscale)
        if sf.rcv_wnd_edge is None or edge > sf.rcv_wnd_edge:
            sf.rcv_wnd_edge = edge   # TCP does not shrink its window: the highest edge stands

    def _data_ack(self) -> int:
        """RFC 8684 3.3.2: the DATA_ACK is the contiguous DSN prefix the host has received: what
        is reassembled plus what the kernel sockets acknowledged (mapped, not yet read)."""
        asm = self.assembler
        base = unwrap64(self.rcv_ref, asm.next_dsn)
        key = (base, tuple((s.read_ssn, s.kernel_ack_ssn, s.peer_maps.version) for s in self.subflows),
               self.peer_fin_dsn)
        if key == self._dack_key:
            return self._dack
        runs = []
        for s in self.subflows:
            runs.extend(s.peer_maps.runs(s.read_ssn, s.kernel_ack_ssn))
        runs.extend((unwrap64(base, a), unwrap64(base, b)) for a, b in asm.ranges())
        runs.sort()
        ack = base
        for a, b in runs:
            if a > ack:
                break
            if b > ack:
                ack = b
        if self.peer_fin_dsn is not None and ack == self.peer_fin_dsn:
            ack += 1   # RFC 8684 3.3.3: the DATA_FIN takes one octet of data sequence space
        if ack < self.data_ack_sent:
            ack = self.data_ack_sent
        self.data_ack_sent = ack
        if self.peer_fin_ack_pending and ack > self.peer_fin_dsn:
            self.peer_fin_ack_pending = False
        self._dack_key, self._dack = key, ack
        return ack

    # ------------------------------------------------------------ incoming subflow packets

    def incoming(self, sf: Subflow, seq: int, ack: int, flags: int, payload_len: int, window: int,
                 o: dict) -> bool:
        """Record what the peer's segment says; False: drop it (the reason is counted)."""
        if flags & TCP_SYN:
            return self._synack(sf, seq, flags, window, o)
        if self.mode != MPTCP:
            return True
        if o["error"] and o["present"] & _HAS_MPTCP:
            # Malformed MPTCP options from the network: dropped and counted, never trusted.
            self.counters["malformed_options"] += 1
            return False
        if flags & TCP_ACK and sf.our_isn is not None:
            rel = unwrap32(sf.peer_ack_ssn, _u32(ack - sf.our_isn))
            if rel > sf.write_ssn + 1:
                # RFC 9293 3.10.7.4 / RFC 5961 5: an ACK of bytes never sent (+1: our FIN) is
                # dropped by our kernel; nothing in the segment is acted on.
                self.counters["acks_of_unsent_data"] += 1
                return False
            if rel > sf.peer_ack_ssn:
                sf.peer_ack_ssn = rel
                sf.our_maps.prune_below(rel)
                for s in [k for k in sf.our_csums if k < rel - CHUNK_MAX]:
                    del sf.our_csums[s]
        subs = o["suboptions"]
        if subs & _SUBOPT_DSS:
            self._dss(sf, seq, payload_len, window, o)
        if subs & _SUBOPT_MP_FASTCLOSE and o["fastclose_receiver_key"] == self.key:
            # RFC 8684 3.5: the peer abandons the connection; the app gets a reset.
            self.abort("fastclose_from_peer")
        if subs & _SUBOPT_MP_FAIL:
            self.counters["mp_fail_from_peer"] += 1
        return True

    def _synack(self, sf: Subflow, seq: int, flags: int, window: int, o: dict) -> bool:
        if sf.peer_isn is not None:
            return True   # a retransmitted SYN/ACK: decided already
        sf.peer_isn = seq
        sf.peer_wscale = o["wscale"] if o["present"] & _HAS_WSCALE else 0
        if self.mode is not None:
            return True
        form = o["mpc_form"] if o["suboptions"] & _SUBOPT_MP_CAPABLE else 0
        if form != _MPC_FORM_SYNACK:
            bad = o["error"] in (_REASON_BAD_VERSION, _REASON_UNSUPPORTED_MPC_FLAGS)
            # RFC 8684 3.1: no (usable) MP_CAPABLE in the SYN/ACK: the connection is plain TCP.
            self._set_fallback("fallback_peer_version" if bad else "fallback_no_mp_capable")
            return True
        self.mode = MPTCP
        self.counters["mptcp_connections"] += 1
        self.peer_key = o["mpc_sender_key"]
        # RFC 8684 3.1: checksums are used if either host asks for them.
        self.checksums = bool(self.want_checksums or o["mpc_flags"] & w.MPC_CHECKSUM_REQUIRED)
        self._start_receiving()
        # The window of a SYN/ACK is never scaled (RFC 7323 2.2).
        self.peer_wnd_end = self.snd_una + window
        return True

    def _in_window(self, sf: Subflow, seq: int, payload_len: int) -> bool:
        """The segment lies within what our kernel accepts: [its ACK point, + advertised window]."""
        if sf.peer_isn is None or sf.rcv_wnd_edge is None:
            return True
        rel = unwrap32(sf.kernel_ack_ssn, _u32(seq - sf.peer_isn))
        return rel + payload_len >= sf.kernel_ack_ssn and rel <= sf.rcv_wnd_edge

    def _dss(self, sf: Subflow, seq: int, payload_len: int, window: int, o: dict) -> None:
        self.peer_dss_seen = True
        dflags = o["dss_flags"]
        if dflags & (w.DSS_MAPPING | w.DSS_DATA_FIN) and not self._in_window(sf, seq, payload_len):
            # Our kernel drops a segment outside its window: its mapping or DATA_FIN is not
            # recorded (a spoofed or stale one would truncate or misplace the stream).
            self.counters["dss_outside_window"] += 1
            dflags &= ~(w.DSS_MAPPING | w.DSS_DATA_FIN)
        if dflags & w.DSS_DATA_ACK:
            raw = o["data_ack"]
            da = unwrap64(self.snd_una, raw) if dflags & w.DSS_DATA_ACK_64 else \
                self.snd_una + _seq.diff32(raw, self.snd_una & M32)
            limit = self.snd_nxt + (1 if self.fin_sent_at is not None else 0)
            if da > limit:
                self.counters["data_ack_invalid"] += 1
            else:
                if da > self.snd_una:
                    acked = min(da, self.snd_end) - self.snd_una
                    if acked > 0:
                        del self.send_buf[:acked]
                        self.snd_una += acked
                if self.app_eof and da == self.snd_end + 1 and self.fin_sent_at is not None:
                    self.fin_acked = True
                # The peer's receive window is shared by all subflows and counts from the DATA_ACK.
                end = da + (window << sf.peer_wscale)
                if self.peer_wnd_end is None or end > self.peer_wnd_end:
                    self.peer_wnd_end = end
        if dflags & w.DSS_MAPPING:
            raw = o["dsn"]
            dsn = unwrap64(self.rcv_ref, raw) if dflags & w.DSS_DSN_64 else \
                self.rcv_ref + _seq.diff32(raw, self.rcv_ref & M32)
            length = announced = o["data_len"]
            if dflags & w.DSS_DATA_FIN and (payload_len or o["subflow_seq"] == 0):
                # RFC 8684 3.3.3: the DATA_FIN is the last octet of the mapping.
                fin = dsn + length - 1 if length else dsn
                if self.peer_fin_dsn is None:
                    self.peer_fin_dsn = fin
                self.peer_fin_ack_pending = True
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
                rel = unwrap32(sf.read_ssn, _u32(seq - sf.peer_isn))
                if start >= rel + payload_len or start + length <= rel:
                    self.counters["dss_mapping_off_payload"] += 1
                    return
            if len(sf.peer_maps) >= PEER_MAPPINGS_MAX and sf.peer_maps.lookup(start) is None:
                self.counters["peer_mappings_overflow"] += 1
                return
            if sf.peer_maps.add(start, dsn, length):
                if self.checksums and o["dss_has_checksum"]:
                    # Linux (subflow.c validate_data_csum) and RFC 8684 3.3.1: the pseudo-header
                    # carries the announced data-level length, the DATA_FIN's octet included.
                    self._rx_checks[(id(sf), start)] = (o["dss_checksum"], announced)
            elif sf.peer_maps.conflicts:
                self.counters["dss_conflicts"] += sf.peer_maps.conflicts
                sf.peer_maps.conflicts = 0

    # ------------------------------------------------------------ data from and to the app

    def app_room(self) -> int:
        """How many more app bytes the send buffer takes."""
        return max(0, self.send_limit - len(self.send_buf))

    def app_data(self, data) -> None:
        assert not self.app_eof, "app data after the app's FIN"
        self.send_buf += data
        self.bytes_from_app += len(data)

    def on_app_eof(self) -> None:
        self.app_eof = True
        if self.state == ESTABLISHED:
            self.state = CLOSING

    def next_chunk(self, sf: Subflow) -> memoryview | None:
        """The bytes to write to sf's socket now (with MSG_EOR), or None. Call chunk_written after."""
        if sf.chunk is not None:
            return memoryview(sf.chunk[1])[sf.chunk[2]:]
        if not sf.established or sf.closed or self.state == ABORTED:
            return None
        if self.mode == FALLBACK:
            if not self.send_buf:
                return None
            # Plain TCP: the kernel socket is the only copy that matters; no mapping.
            data = bytes(self.send_buf[:256 * 1024])
            sf.chunk = [self.snd_nxt, data, 0]
            return memoryview(data)
        if self.mode != MPTCP:
            return None
        start = self.snd_nxt
        n = min(CHUNK_MAX, self.snd_end - start)
        if self.peer_wnd_end is not None:
            n = min(n, self.peer_wnd_end - start)
        if n <= 0:
            return None
        data = bytes(self.send_buf[start - self.snd_una:start - self.snd_una + n])
        ssn = sf.write_ssn
        added = sf.our_maps.add(ssn, start, n)
        assert added, "our mappings never overlap"
        if self.checksums:
            sf.our_csums[ssn] = _ck.dss_checksum(start & M64, _u32(ssn), n, data)
        if ssn == 1 and not self.peer_dss_seen:
            sf.first_chunk_len = n
        sf.chunk = [start, data, 0]
        self.snd_nxt = start + n
        return memoryview(data)

    def chunk_written(self, sf: Subflow, n: int) -> None:
        assert sf.chunk is not None and 0 <= n <= len(sf.chunk[1]) - sf.chunk[2]
        sf.chunk[2] += n
        sf.write_ssn += n
        if sf.chunk[2] == len(sf.chunk[1]):
            if self.mode == FALLBACK:
                del self.send_buf[:len(sf.chunk[1])]
                self.snd_una += len(sf.chunk[1])
                self.snd_nxt = self.snd_una
            sf.chunk = None

    def all_written(self) -> bool:
        """Every app byte is in a kernel socket (and so the FIN/DATA_FIN may follow)."""
        if any(s.chunk is not None for s in self.subflows):
            return False
        return not self.send_buf if self.mode == FALLBACK else self.snd_nxt == self.snd_end

    def subflow_room(self) -> int:
        """How many bytes may be read from subflow sockets now (reassembly space)."""
        if self.mode == FALLBACK:
            return max(0, self.recv_limit - len(self.plain_rx))
        if self.assembler is None:
            return 0
        return self.assembler.window()

    def subflow_data(self, sf: Subflow, data) -> None:
        """Bytes read from sf's socket: placed by the peer's mappings into the reassembly."""
        n = len(data)
        if self.mode == FALLBACK:
            self.plain_rx += data
            sf.read_ssn += n
            return
        view = memoryview(data)
        pos = 0
        asm = self.assembler
        while pos < n:
            off = sf.read_ssn
            m = sf.peer_maps.lookup(off)
            if m is None:
                # RFC 8684 3.3.1: data without a mapping cannot be placed in the data stream.
                self.abort("unmapped_data")
                return
            start, dsn, length = m
            take = min(n - pos, start + length - off)
            piece = view[pos:pos + take]
            if self.checksums and length != INFINITE:
                if not self._check_piece(sf, start, dsn, length, off, piece):
                    self.abort("dss_checksum_failures")
                    return
            # Bytes mapped below what is held are duplicates (Linux's zero-window probes):
            # the assembler keeps the first copy and never overwrites it.
            asm.insert((dsn + (off - start)) & M64, piece)
            sf.read_ssn += take
            pos += take
        sf.peer_maps.prune_below(sf.read_ssn)
        self._advance_rcv_ref()

    def _check_piece(self, sf, start, dsn, length, off, piece) -> bool:
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
        return _ck.dss_checksum_from_sum(dsn & M64, _u32(start), announced, acc) == want

    def _advance_rcv_ref(self) -> None:
        self.rcv_ref = unwrap64(self.rcv_ref, self.assembler.read_dsn)

    def app_pending(self) -> int:
        """In-order bytes waiting for the app."""
        if self.mode == FALLBACK:
            return len(self.plain_rx)
        return self.assembler.readable() if self.assembler is not None else 0

    def take_for_app(self, max_len: int) -> bytes:
        if self.mode == FALLBACK:
            out = bytes(self.plain_rx[:max_len])
            del self.plain_rx[:len(out)]
        else:
            out = self.assembler.read(max_len)
            self._advance_rcv_ref()
        self.bytes_to_app += len(out)
        return out

    def app_should_get_fin(self) -> bool:
        """Everything before the peer's DATA_FIN (or, in fallback, the subflow FIN) is delivered."""
        if self.app_shut:
            return False
        if self.mode == FALLBACK:
            return bool(self.subflows) and self.subflows[0].eof and not self.plain_rx
        if self.peer_fin_dsn is None or self.assembler is None:
            return False
        return unwrap64(self.rcv_ref, self.assembler.read_dsn) >= self.peer_fin_dsn

    def on_subflow_eof(self, sf: Subflow) -> None:
        sf.eof = True
        if self.mode == MPTCP and self.peer_fin_dsn is None and not any(
                not s.eof and not s.closed for s in self.subflows):
            # The last subflow ended without a DATA_FIN: nothing more can arrive.
            self.counters["subflow_eof_without_data_fin"] += 1
            self.peer_fin_dsn = unwrap64(self.rcv_ref, self.assembler.next_dsn)

    # ------------------------------------------------------------ DATA_FIN, timers

    def control_segments(self, now: float) -> list[ControlSegment]:
        """Pure ACKs mptun must send itself now: our bare DATA_FIN (and its retransmissions), the
        DATA_ACK of a DATA_FIN the peer sent on a pure ACK (the kernel socket never acks those)."""
        if self.mode != MPTCP or self.state == ABORTED:
            return []
        out = []
        sf = self._control_subflow()
        if sf is None:
            return []
        if self.app_eof and not self.fin_acked and self.all_written():
            # Retransmit only once everything before the DATA_FIN is DATA_ACKed: before that the
            # peer cannot acknowledge it, and each crafted ACK is a duplicate ACK to its TCP.
            if self.snd_una == self.snd_end and self.all_acked_at is None:
                self.all_acked_at = now
            due = self.fin_sent_at is None or (
                self.all_acked_at is not None and now >= max(self.fin_sent_at, self.all_acked_at) + self.fin_rto)
            # A server waiting for a request never sends a DSS: once our third ACK (MP_CAPABLE
            # with both keys) is out, the peer has the connection and takes a DATA_FIN, as
            # Linux sends it (with no data: DSN IDSN+1, subflow sequence 0, length 1).
            if due and (self.peer_dss_seen or sf.mpc_ack_sent):
                if self.fin_sent_at is not None:
                    self.fin_rto = min(self.fin_rto * 2, FIN_RTO_MAX)
                self.fin_tries += 1
                if self.fin_tries > FIN_MAX_TRIES:
                    self.abort("data_fin_timeouts")
                    return []
                self.fin_sent_at = now
                # RFC 8684 3.3.3: a DATA_FIN without data: subflow sequence 0, data-level length 1.
                opts = _opt.emit_dss(True, self._data_ack() & M64, True, True, self.snd_end & M64, True, 0, 1,
                                     True, self.checksums, _dss_fin_checksum(self.snd_end) if self.checksums else 0)
                out.append(self._segment(sf, opts))
                self.counters["data_fin_sent"] += 1
        if self._window_closed_and_idle():
            if self.persist_at is None:
                self.persist_at = now + self.persist_rto
            elif now >= self.persist_at:
                # A keepalive-style pure ACK one below the subflow's next sequence: old to the
                # peer's TCP, which answers with a duplicate ACK carrying its current DATA_ACK
                # and window (RFC 9293 3.10.7.4; RFC 8684 3.3.7 for the shared window).
                seg = self._segment(sf, _opt.emit_dss(True, self._data_ack() & M64, True))
                seg.seq = _u32(sf.snd_nxt - 1)
                out.append(seg)
                self.counters["window_probes_sent"] += 1
                self.persist_rto = min(self.persist_rto * 2, PERSIST_MAX)
                self.persist_at = now + self.persist_rto
        elif self.persist_at is not None:
            self.persist_at = None
            self.persist_rto = PERSIST_INITIAL
        if self.peer_fin_ack_pending:
            ack = self._data_ack()
            if self.peer_fin_dsn is not None and ack > self.peer_fin_dsn:
                self.peer_fin_ack_pending = False
                out.append(self._segment(sf, _opt.emit_dss(True, ack & M64, True)))
                self.counters["data_fin_acks_sent"] += 1
        return out

    def _control_subflow(self) -> Subflow | None:
        for s in self.subflows:
            if s.established and s.snd_nxt is not None and s.last_ack is not None:
                return s
        return None

    def _segment(self, sf: Subflow, mptcp_options: bytes) -> ControlSegment:
        return ControlSegment(sf, sf.snd_nxt, sf.last_ack, sf.last_window,
                              _timestamps_of(sf.last_options) + mptcp_options)

    def _window_closed_and_idle(self) -> bool:
        """The peer's data-level window is closed, app bytes wait for it and all sent is DATA_ACKed."""
        return (self.peer_wnd_end is not None and self.peer_wnd_end <= self.snd_nxt < self.snd_end
                and self.snd_una == self.snd_nxt and all(s.chunk is None for s in self.subflows))

    def next_timer(self) -> float | None:
        if self.mode != MPTCP or self.state == ABORTED:
            return None
        times = []
        if self.persist_at is not None:
            times.append(self.persist_at)
        if self.app_eof and not self.fin_acked and self.fin_sent_at is not None and self.snd_una >= self.snd_end:
            times.append(max(self.fin_sent_at, self.all_acked_at or 0.0) + self.fin_rto)
        return min(times) if times else None

    def done(self) -> bool:
        """Both directions closed at the data level and everything handed over."""
        if self.state == ABORTED:
            return True
        if not (self.app_eof and self.app_shut):
            return False
        if self.mode == FALLBACK:
            return self.all_written()
        return self.fin_acked

    def abort(self, reason: str) -> None:
        if self.state in (ABORTED, CLOSED):
            return
        self.state = ABORTED
        self.error = reason
        self.counters[reason] += 1

    def describe(self) -> dict:
        return {"id": self.id, "state": self.state, "mode": self.mode or "handshake",
                "token": f"{self.token:08x}", "bytes_from_app": self.bytes_from_app,
                "bytes_to_app": self.bytes_to_app, "error": self.error,
                "subflows": [s.describe() for s in self.subflows]}


def _dss_fin_checksum(dsn: int) -> int:
    # RFC 8684 3.3.1: the checksum of a DATA_FIN mapping with no data covers only the pseudo-header.
    return _ck.dss_checksum_from_sum(dsn & M64, 0, 1, 0)


def _wscale_of(options: bytes) -> int:
    """The window scale option of our SYN's options area (0 if absent)."""
    try:
        o = _opt.parse_options(bytes(options) + b"\x01" * (-len(options) % 4))
    except Exception:
        return 0
    return min(o["wscale"], 14) if o["present"] & _HAS_WSCALE else 0


def _timestamps_of(options: bytes) -> bytes:
    """The timestamps option of a segment's options area, NOP-aligned, or b"" (for crafted ACKs)."""
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n or options[i + 1] < 2:
            break
        length = options[i + 1]
        if kind == 8 and length == 10 and i + 10 <= n:
            return b"\x01\x01" + bytes(options[i:i + 10])
        i += length
    return b""


_HAS_MPTCP = 0x20
_HAS_WSCALE = 0x02
_SUBOPT_MP_CAPABLE = 1 << 0
_SUBOPT_DSS = 1 << 2
_SUBOPT_MP_FAIL = 1 << 6
_SUBOPT_MP_FASTCLOSE = 1 << 7
_MPC_FORM_SYNACK = 2
_REASON_BAD_VERSION = 6
_REASON_UNSUPPORTED_MPC_FLAGS = 8
