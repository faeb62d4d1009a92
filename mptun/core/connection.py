"""Connection: one app connection as an MPTCP connection: keys, states, fallback, the data level, DATA_FIN, FASTCLOSE.

Sans I/O, as aioquic drives its connection: inputs are calls with `now` (a subflow segment seen
going out or coming in, app bytes, subflow bytes, a socket connected or failed, a timer); outputs
are typed events (mptun.core.events) drained with `events()`, bytes pulled with `next_write()` and
`take_for_app()`, and the next deadline from `get_timer()`. Per-packet calls return codes, never
raise. DSNs are unwrapped Python ints; only what goes on the wire is taken mod 2^64.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from mptun import impl
from mptun.core import options as _options
from mptun.core import pm as _pm
from mptun.core import scheduler as _sched
from mptun.core import segopts as so
from mptun.core.events import (Closed, ControlSegment, Event, OpenSubflow, RefuseApp, ReleaseAppSyn,
                               ShutdownSubflow)
from mptun.core.mib import Counters
from mptun.core.multipath import Multipath
from mptun.core.recv import ReceivePath
from mptun.core.send import FinVerdict, SendPath
from mptun.core.seqspace import M64, u32
from mptun.core.states import ConnState, Mode
from mptun.core.subflow import Subflow, SubflowKind
from mptun.wire import crypto
from mptun.wire import mptcp as w

_opt = impl.load("mptcpopt")
_ck = impl.load("checksum")

# Bytes read from the app and kept until DATA_ACKed (reinjection needs them).
SEND_BUFFER = 8 << 20
# The reassembly ring: what was read from subflows and not yet written to the app. Bytes that
# would land beyond it stay in their kernel socket (ReceivePath.room_for); each subflow socket's
# window is clamped to SUBFLOW_WINDOW, so the peer can never send further than the ring reaches
# ahead of a hole that must be filled on that same subflow (data a dead subflow carried).
RECV_BUFFER = 4 << 20
SUBFLOW_WINDOW = RECV_BUFFER // 4
# The kernel gives up on a SYN after ~127 s (tcp_syn_retries 6): past this the connection is dead.
CONNECT_TIMEOUT = 140.0
# The app's handshake with the listener takes one local round trip once its SYN is released;
# not accepted by then, the app gave up while its SYN was held.
APP_ACCEPT_TIMEOUT = 20.0
# After the app's RST, what it wrote before goes out first (as the kernel's MPTCP would have sent
# it at write time), for at most this long; then MP_FASTCLOSE.
ABORT_FLUSH_MAX = 0.5


class Connection:
    """The data-level state shared by the subflows of one app connection."""

    def __init__(self, conn_id: int, key: int, now: float, counters: Counters, *,
                 checksums: bool = False, scheduler: _sched.Scheduler | None = None,
                 path_manager: _pm.PathManager | None = None, rand32: Callable[[], int] | None = None,
                 send_buffer: int = SEND_BUFFER, recv_buffer: int = RECV_BUFFER):
        self.id = conn_id
        self.key = key
        self.token = crypto.key_token(key)
        self.idsn = crypto.key_idsn(key)
        self.counters = counters
        self.pm = path_manager or _pm.SinglePath()
        # MP_JOIN nonces: the edge passes a real random source; the default is for tests.
        self.mp = Multipath(self, self.pm, rand32 or _counter32(key))
        self.created = now
        self.last_now = now
        self.state = ConnState.CONNECTING
        self.mode: Mode | None = None
        self.want_checksums = checksums
        self.checksums = False
        self.peer_key: int | None = None
        self.subflows: list[Subflow] = []
        self.error: str | None = None
        self.peer_dss_seen = False
        self._events: deque[Event] = deque()
        self.connected_at: float | None = None   # the initial subflow's socket connected
        self.app_accepted = False                # the listener accepted the app's leg
        self._abort_after: tuple[float, str] | None = None   # the app reset: flushing, then MP_FASTCLOSE
        self._subflows_shut = False

        # The two data streams: ours from IDSN + 1, the peer's.
        self.send = SendPath(self.idsn + 1, send_buffer, scheduler or _sched.create(_sched.DEFAULT), counters)
        self.recv = ReceivePath(recv_buffer, counters)
        self.app_shut = False              # FIN passed on to the app
        self.bytes_from_app = 0
        self.bytes_to_app = 0

    # ------------------------------------------------------------ views

    @property
    def snd_una(self) -> int:
        return self.send.buf.una

    @property
    def snd_end(self) -> int:
        return self.send.buf.end

    @property
    def app_eof(self) -> bool:
        return self.send.eof

    @property
    def peer_token(self) -> int:
        return crypto.key_token(self.peer_key)

    @property
    def over(self) -> bool:
        return self.state in (ConnState.ABORTED, ConnState.CLOSED)

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def events(self) -> list[Event]:
        """What the edge must do now, in order (drains the queue)."""
        if not self._events:
            return []
        out = list(self._events)
        self._events.clear()
        return out

    # ------------------------------------------------------------ lifecycle inputs

    def start(self, now: float) -> None:
        """The app's SYN arrived: open the initial subflow where the path manager says."""
        path = self.pm.initial_path()
        if path is None:
            self.abort("connect_errors")
            return
        self._events.append(OpenSubflow(path))

    def subflow_opened(self, path: int, local_port: int, remote_id: int = 0) -> Subflow:
        """The edge made the socket an OpenSubflow asked for (before connect: its SYN follows)."""
        return self.mp.new_subflow(path, local_port, remote_id)

    def subflow_open_failed(self, path: int, remote_id: int = 0) -> None:
        """The socket for an OpenSubflow could not be made (the edge counted why)."""
        if not self.subflows:
            self.abort("connect_errors")
        else:
            self.mp.join_failed(path, remote_id)

    def subflow_connected(self, sf: Subflow, now: float) -> None:
        """sf's socket finished its handshake."""
        self.last_now = now
        became = sf.connected()
        if sf.kind == SubflowKind.JOIN:
            if became:
                self.joined(sf)
            return
        if self.state != ConnState.CONNECTING:
            return
        self.state = ConnState.ESTABLISHED
        if self.mode is None:
            # The SYN/ACK went past the datapath without being seen (cannot happen unless
            # the capture is broken): plain TCP is the safe reading.
            self.set_fallback("fallback_unseen_synack")
        self.connected_at = now
        # The app's SYN goes on only now, so a refused or unreachable destination looks to the
        # app as it would without mptun.
        self._events.append(ReleaseAppSyn())

    def subflow_connect_failed(self, sf: Subflow, reason: str, detail: str, icmp_code: int | None = None) -> None:
        """sf's connect failed; reason is "refused", "unreachable", "connect_timeouts" or "connect_errors";
        icmp_code: the ICMP unreachable code that gives the app the same error (None: none does)."""
        if sf.kind == SubflowKind.JOIN:
            # A join the peer refused (it may limit subflows) or never answered: the connection
            # goes on; that pair is tried again later.
            self.mp.drop_join(sf)
            return
        sf.close()
        if self.state != ConnState.CONNECTING:
            self.abort("resets_from_peer")
            return
        self.counters[reason] += 1
        self.state = ConnState.ABORTED
        self.error = detail
        if reason == "refused" or icmp_code is not None:
            self._events.append(RefuseApp(icmp_code))
        self._events.append(Closed(reset=False, reason=detail))

    def subflow_reset(self, sf: Subflow) -> None:
        """sf's socket failed after it connected (the peer's RST): the connection goes on over the
        others; if it was the last, the connection is over."""
        if sf.retiring:
            self.mp.retire_now(sf)
            return
        if self.mode == Mode.MPTCP and self.mp.others_alive(sf):
            self.mp.lose(sf, "subflow_resets", reset=False)
            return
        self.abort("resets_from_peer")

    def joined(self, sf: Subflow) -> None:
        """A join became established: it may carry data now."""
        self.counters["subflows_joined"] += 1
        sf.progress_at = 0.0
        self.mp.join_succeeded(sf)

    def join_refused(self, sf: Subflow, synack_ack: int, reason: str) -> None:
        self.mp.refuse_join(sf, synack_ack, reason)

    # ------------------------------------------------------------ paths and the peer's addresses

    def path_changed(self, path: int, now: float) -> None:
        """Path `path` became usable or unusable, or its role changed (the path manager's table says
        which). Before a path goes, the edge reads its subflows out: what their sockets hold was
        acknowledged to the peer already."""
        self.last_now = now
        if self.mode == Mode.MPTCP and not self.over:
            self.mp.path_changed(path, now)

    def peer_added(self, sf: Subflow, address_id: int, addr: bytes, port: int | None) -> None:
        self.mp.peer_added(sf, address_id, addr, port)

    def peer_removed(self, ids: bytes) -> None:
        self.mp.peer_removed(ids)

    def closing_down(self) -> bool:
        """No new subflows are worth opening: aborting, or both directions delivered."""
        return self._abort_after is not None or (self.app_eof and self.app_shut)

    def on_app_accepted(self) -> None:
        self.app_accepted = True

    def app_reset(self, now: float) -> None:
        """The app's socket was reset: the app aborted, or exited or closed with data unread.
        RFC 8684 3.5: the whole connection is abandoned with MP_FASTCLOSE, whatever state its
        data-level close is in; nothing more is DATA_ACKed (the app can no longer read it). What
        the app wrote before its abort still goes out first, for at most ABORT_FLUSH_MAX."""
        if self.over or self._abort_after is not None:
            return
        self.recv.freeze()
        if self.mode is None or self._flushed():
            self.abort("resets_from_app")
            return
        self._abort_after = (now + ABORT_FLUSH_MAX, "resets_from_app")

    def _flushed(self) -> bool:
        """Every app byte is in a kernel socket and has been transmitted by it at least once."""
        if not self.all_written():
            return False
        for s in self.subflows:
            if s.established and s.write_ssn > 1 and (s.snd_nxt is None or s.out_offset(s.snd_nxt) < s.write_ssn):
                return False
        return True

    def abort(self, reason: str) -> None:
        """Reset the connection: the app gets a RST, the peer MP_FASTCLOSE (unless it started it)."""
        if self.over:
            return
        self.state = ConnState.ABORTED
        self.error = reason
        self.counters[reason] += 1
        self._events.append(Closed(reset=True, reason=reason))

    def set_fallback(self, reason: str) -> None:
        self.mode = Mode.FALLBACK
        self.counters[reason] += 1
        self.recv.start_plain()
        self.send.start_plain()

    # ------------------------------------------------------------ subflow packets (core/options.py)

    # Once per packet each: the functions themselves, so no wrapper call is paid per packet.
    # outgoing(sf, seq, ack, flags, payload_len, window, options) -> options to add (b"": none,
    # None: drop, counted); incoming(sf, seq, ack, flags, payload_len, window, parsed) -> deliver?
    outgoing = _options.outgoing
    incoming = _options.incoming

    def drop(self, reason: str) -> None:
        """A per-packet drop: counted, and None for the caller to return."""
        self.counters[reason] += 1
        return None

    def mpc_flags(self) -> int:
        return w.MPC_HMAC_SHA256 | (w.MPC_CHECKSUM_REQUIRED if (self.want_checksums or self.checksums) else 0)

    def data_ack(self) -> int:
        return self.recv.data_ack(self.subflows)

    # ------------------------------------------------------------ data from the app, to subflows

    def app_room(self) -> int:
        """How many more app bytes the send buffer takes."""
        return self.send.room()

    def app_data(self, data) -> None:
        self.send.append(data)
        self.bytes_from_app += len(data)

    def on_app_eof(self) -> None:
        self.send.eof = True
        if self.state == ConnState.ESTABLISHED:
            self.state = ConnState.CLOSING

    def wants_app_read(self) -> bool:
        return not self.app_eof and not self.over and self._abort_after is None and self.app_room() > 0

    def next_write(self) -> tuple[Subflow, memoryview] | None:
        """The next bytes to write (with MSG_EOR) and the subflow socket they go to, or None.
        Report each write with `written`."""
        if self.over or self.mode is None:
            return None
        return self.send.next_write(self.subflows, not self.peer_dss_seen)

    def written(self, sf: Subflow, n: int) -> None:
        """n bytes of what next_write gave were written to sf's socket; fewer than offered means
        the socket is full: sf gets nothing more until `subflow_writable`."""
        self.send.written(sf, n)

    def subflow_info(self, sf: Subflow, srtt: float, rttvar: float, cwnd: int, in_flight: int, notsent: int,
                     mss: int) -> None:
        """What sf's kernel socket says of itself (TCP_INFO): the scheduler's inputs."""
        sf.info(srtt, rttvar, cwnd, in_flight, notsent, mss)

    def subflow_writable(self, sf: Subflow) -> None:
        sf.write_blocked = False

    def wants_write(self, sf: Subflow) -> bool:
        """sf's socket is full and something waits for it: the edge should watch it for writability."""
        return self.send.wants_write(sf)

    def all_written(self) -> bool:
        return self.send.all_written(self.subflows)

    # ------------------------------------------------------------ data from subflows, to the app

    def subflow_room(self, sf: Subflow) -> int:
        """How many bytes may be read from sf's socket now (reassembly space)."""
        return self.recv.room_for(sf)

    def wants_subflow_read(self, sf: Subflow) -> bool:
        return not sf.eof and not sf.closed and self.recv.room_for(sf) > 0

    def subflow_data(self, sf: Subflow, data) -> None:
        """Bytes read from sf's socket: placed by the peer's mappings into the reassembly."""
        reason = self.recv.place(sf, data)
        if reason is not None:
            self.abort(reason)

    def subflow_eof(self, sf: Subflow) -> None:
        sf.eof = True
        if self.mode == Mode.MPTCP and not self.closing_down() and self.mp.others_alive(sf):
            # The peer closed this subflow only (RFC 8684 3.3.3: not a DATA_FIN).
            self.mp.lose(sf, "subflows_closed_by_peer", reset=False)
            return
        if self.mode == Mode.MPTCP and not any(not s.eof and not s.closed for s in self.subflows):
            # The last subflow ended without a DATA_FIN: nothing more can arrive.
            self.recv.last_subflow_ended()

    def app_pending(self) -> int:
        """In-order bytes waiting for the app."""
        return self.recv.readable()

    def take_for_app(self, max_len: int) -> bytes:
        out = self.recv.read(max_len)
        self.bytes_to_app += len(out)
        return out

    def app_fin_due(self) -> bool:
        """Everything before the peer's DATA_FIN (or, in fallback, the subflow FIN) is delivered:
        the app's socket should be shut for writing now (then call app_fin_delivered)."""
        if self.app_shut:
            return False
        if self.mode == Mode.FALLBACK:
            return bool(self.subflows) and self.subflows[0].eof and not self.recv.readable()
        return self.recv.fin_reached()

    def app_fin_delivered(self) -> None:
        self.app_shut = True
        self.recv.deliver_fin()

    # ------------------------------------------------------------ timers and what mptun sends itself

    def poll(self, now: float) -> None:
        """Act on time and on what the inputs changed: timeouts, our DATA_FIN and its retransmissions,
        the DATA_ACK of the peer's bare DATA_FIN, window probes, the end of the connection."""
        if self.over:
            return
        self.last_now = now
        if self._abort_after is not None:
            # Flushing before MP_FASTCLOSE: no DATA_FIN, no DATA_ACK, nothing but the app's bytes.
            if now >= self._abort_after[0] or self._flushed():
                self.abort(self._abort_after[1])
            return
        if self.state == ConnState.CONNECTING:
            if now - self.created > CONNECT_TIMEOUT:
                self.abort("connect_timeouts")
            return
        if (not self.app_accepted and self.connected_at is not None
                and now - self.connected_at > APP_ACCEPT_TIMEOUT):
            # The app gave up while its SYN was held (its socket is gone, so the listener never
            # accepts): nobody will ever use this MPTCP connection.
            self.abort("app_gone")
            return
        if self.mode == Mode.FALLBACK:
            if self.app_eof and self.all_written() and not self._subflows_shut:
                self._subflows_shut = True
                self._events.extend(ShutdownSubflow(s) for s in self.subflows if not s.closed)
        elif self.mode == Mode.MPTCP:
            self.mp.poll(now)
            self._control_segments(now)
            if self.over:
                return
        if self._done():
            self.state = ConnState.CLOSED
            self._events.append(Closed(reset=False, reason=None))

    def get_timer(self) -> float | None:
        """When `poll` must run next if no input comes first."""
        if self.over:
            return None
        if self.state == ConnState.CONNECTING:
            return self.created + CONNECT_TIMEOUT
        times = [self._abort_after[0]] if self._abort_after is not None else []
        if not self.app_accepted and self.connected_at is not None:
            times.append(self.connected_at + APP_ACCEPT_TIMEOUT)
        if self.mode == Mode.MPTCP:
            if (t := self.send.deadline()) is not None:
                times.append(t)
            if (t := self.mp.deadline()) is not None:
                times.append(t)
        return min(times) if times else None

    def _control_segments(self, now: float) -> None:
        sf = self._control_subflow()
        if sf is None:
            return
        # A server waiting for a request never sends a DSS: once our third ACK (MP_CAPABLE with
        # both keys) is out, the peer has the connection and takes a DATA_FIN, as Linux sends it.
        verdict = self.send.fin_verdict(now, self.subflows, self.peer_dss_seen or sf.mpc_ack_sent)
        if verdict == FinVerdict.GIVE_UP:
            self.abort("data_fin_timeouts")
            return
        if verdict == FinVerdict.SEND:
            # RFC 8684 3.3.3: a DATA_FIN without data: subflow sequence 0, data-level length 1;
            # RFC 8684 3.3.1: its checksum covers only the pseudo-header.
            end = self.snd_end & M64
            csum = _ck.dss_checksum_from_sum(end, 0, 1, 0) if self.checksums else 0
            opts = _opt.emit_dss(True, self.data_ack() & M64, True, True, end, True, 0, 1, True, self.checksums, csum)
            self._send_control(sf, opts)
            self.counters["data_fin_sent"] += 1
        if self.send.probe_due(now, self.subflows):
            # A keepalive-style pure ACK one below the subflow's next sequence: old to the peer's
            # TCP, which answers with a duplicate ACK carrying its current DATA_ACK and window
            # (RFC 9293 3.10.7.4; RFC 8684 3.3.7 for the shared window).
            self._send_control(sf, _opt.emit_dss(True, self.data_ack() & M64, True), seq=u32(sf.snd_nxt - 1))
            self.counters["window_probes_sent"] += 1
        if self.recv.fin_ack_pending:
            ack = self.data_ack()
            if self.recv.fin_dsn is not None and ack > self.recv.fin_dsn:
                self.recv.fin_ack_pending = False
                self._send_control(sf, _opt.emit_dss(True, ack & M64, True))
                self.counters["data_fin_acks_sent"] += 1

    def _control_subflow(self) -> Subflow | None:
        fallback = None
        for s in self.subflows:
            if s.established and s.snd_nxt is not None and s.last_ack is not None:
                if not s.stale and not s.retiring:
                    return s
                fallback = fallback or s
        return fallback

    def send_control(self, sf: Subflow, mptcp_options: bytes) -> None:
        """A pure ACK of ours on sf (options beside the timestamps)."""
        self._send_control(sf, mptcp_options)

    def _send_control(self, sf: Subflow, mptcp_options: bytes, seq: int | None = None) -> None:
        self._events.append(ControlSegment(sf, sf.snd_nxt if seq is None else seq, sf.last_ack, sf.last_window,
                                           so.timestamps_of(sf.last_options) + mptcp_options))

    def _done(self) -> bool:
        """Both directions closed at the data level and everything handed over."""
        if not (self.app_eof and self.app_shut):
            return False
        if self.mode == Mode.FALLBACK:
            return self.all_written()
        return self.send.fin_acked

    def describe(self) -> dict:
        return {"id": self.id, "state": str(self.state), "mode": str(self.mode or "handshake"),
                "token": f"{self.token:08x}", "bytes_from_app": self.bytes_from_app,
                "bytes_to_app": self.bytes_to_app, "error": self.error,
                "peer_addresses": sorted(self.mp.remotes),
                "subflows": [s.describe() for s in self.subflows]}



def _counter32(key: int) -> Callable[[], int]:
    """Deterministic 32-bit values from key (tests); the daemon passes a real random source."""
    state = [key]

    def nxt() -> int:
        state[0] = (state[0] * 6364136223846793005 + 1442695040888963407) & M64
        return state[0] >> 32
    return nxt
