"""Multipath: a connection's subflows beyond the first: joins, the peer's addresses, paths that come
and go, stalled subflows, roles. The Connection delegates here; nothing here does I/O.

- Joins (RFC 8684 3.2): once the connection is MPTCP, every (path, peer address) pair the path
  manager wants gets an MP_JOIN subflow. One that fails (refused, wrong HMAC, reset) is retried with
  backoff; a path that comes back clears its backoff, so it joins again at once.
- The peer's addresses (RFC 8684 3.4): 0 is the destination; ADD_ADDR (HMAC verified) adds one and
  is echoed; REMOVE_ADDR closes the subflows to it.
- A path that goes (link down, address lost): its subflows were read out by the edge; a REMOVE_ADDR
  for their address IDs goes out on a live subflow (the peer stops sending there at once instead of
  waiting for its timeouts), they are closed and what they carried unacknowledged is reinjected.
- A stalled subflow (no progress for several RTTs while another made progress) is not scheduled
  and its unacknowledged data is reinjected on the others; it is scheduled again once it moves.
- Roles: a path's backup flag is sent as MP_PRIO on its live subflows when it changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mptun.core import pm as _pm
from mptun.core.events import CloseSubflow, ControlSegment, OpenSubflow
from mptun.core.seqspace import M64
from mptun.core.subflow import Subflow, SubflowKind, SubflowState

if TYPE_CHECKING:
    from mptun.core.connection import Connection

from mptun import impl

_opt = impl.load("mptcpopt")

JOIN_RETRY_FIRST = 1.0
# Joins wait for the peer's first DSS (it has our key then), or this long after the initial
# subflow connected (a server that waits for a request sends no DSS until it gets one).
KEYS_WAIT = 0.3
JOIN_RETRY_MAX = 30.0
# A subflow with data outstanding that saw no progress for max(STALL_MIN, STALL_RTTS x its RTT)
# while another subflow progressed is stalled.
STALL_MIN = 0.25
STALL_RTTS = 4
# RFC 8684 3.6 MP_TCPRST reasons.
RST_UNSPECIFIED = 0
RST_MPTCP_ERROR = 1
RST_UNACCEPTABLE_PERFORMANCE = 5


class Multipath:
    def __init__(self, conn: Connection, path_manager: _pm.PathManager, rand32):
        self.conn = conn
        self.pm = path_manager
        self.rand32 = rand32                       # () -> a random 32-bit int (MP_JOIN nonces)
        self.remotes: dict[int, tuple[bytes, int | None] | None] = {0: None}   # None: the destination
        self.retry_at: dict[tuple[int, int], float] = {}
        self.retry_wait: dict[tuple[int, int], float] = {}
        self.dirty = True          # re-evaluate which joins are wanted

    # ------------------------------------------------------------ joins

    def new_subflow(self, path: int, local_port: int, remote_id: int) -> Subflow:
        conn = self.conn
        initial = not conn.subflows
        sf = Subflow(conn, path, local_port, _pm.address_id(path, initial),
                     SubflowKind.INITIAL if initial else SubflowKind.JOIN, remote_id=remote_id,
                     nonce=0 if initial else self.rand32(), backup=self.pm.backup(path))
        # MP_CAPABLE has no backup bit: an initial subflow on a backup path says so with MP_PRIO.
        sf.prio_pending = initial and sf.backup
        conn.subflows.append(sf)
        return sf

    def open_joins(self, now: float) -> None:
        """Open the subflows the path manager wants now (not those waiting out a retry backoff)."""
        conn = self.conn
        if not conn.peer_dss_seen and conn.connected_at is not None and now < conn.connected_at + KEYS_WAIT:
            return      # the peer may not have our key yet (our third ACK is on its way): a join would be refused
        due = [k for k, t in self.retry_at.items() if t <= now]
        if not self.dirty and not due:
            return
        self.dirty = False
        for k in due:
            del self.retry_at[k]
        live = [(s.path, s.remote_id) for s in conn.subflows if not s.closed and not s.retiring]
        for path, remote_id in self.pm.wanted(list(self.remotes), live):
            if (path, remote_id) in self.retry_at:
                continue
            where = self.remotes.get(remote_id)
            addr, port = where if where is not None else (None, None)
            conn.emit(OpenSubflow(path, remote_id, addr, port))

    def join_failed(self, path: int, remote_id: int) -> None:
        """A join never became a subflow: try that pair again later, backing off."""
        key = (path, remote_id)
        wait = self.retry_wait.get(key, JOIN_RETRY_FIRST / 2) * 2
        self.retry_wait[key] = min(wait, JOIN_RETRY_MAX)
        self.retry_at[key] = self.conn.last_now + self.retry_wait[key]

    def join_succeeded(self, sf: Subflow) -> None:
        self.retry_wait.pop((sf.path, sf.remote_id), None)

    def refuse_join(self, sf: Subflow, synack_ack: int, reason: str) -> None:
        """The peer's SYN/ACK of our join failed its check: RST with MP_TCPRST, socket closed."""
        conn = self.conn
        conn.counters[reason] += 1
        opts = _opt.emit_mp_tcprst(0, RST_MPTCP_ERROR)
        conn.emit(ControlSegment(sf, synack_ack, 0, 0, opts + b"\x01" * (-len(opts) % 4), flags=0x04))
        sf.close()
        conn.emit(CloseSubflow(sf, reset=False))
        self.join_failed(sf.path, sf.remote_id)

    def drop_join(self, sf: Subflow) -> None:
        """A join that never became established (its connect failed, or the peer reset it after its
        SYN/ACK): closed and counted once, whichever of the datapath and the socket tells first;
        that pair is retried with backoff."""
        if sf.closed:
            return
        self.conn.counters["join_failures"] += 1
        sf.close()
        self.conn.emit(CloseSubflow(sf, reset=False))
        self.join_failed(sf.path, sf.remote_id)

    # ------------------------------------------------------------ losing subflows

    def lose(self, sf: Subflow, reason: str, *, reset: bool = True, rst_reason: int = RST_UNSPECIFIED) -> None:
        """sf is closed for good: what it carried unacknowledged goes out on the others."""
        conn = self.conn
        if sf.closed:
            return
        if sf.retiring:
            return
        conn.counters[reason] += 1
        sf.rst_reason = rst_reason
        sf.retiring = True
        sf.close_reset = reset
        conn.send.reinject_from(sf, closing=True)
        # That pair gets a subflow again after a backoff (at once if its path comes back): a peer
        # that keeps resetting one does not get a join every round trip.
        self.join_failed(sf.path, sf.remote_id)
        self.dirty = True
        self._retire(sf)

    def _retire(self, sf: Subflow, force: bool = False) -> None:
        """Close a retiring subflow once its socket holds nothing our kernel acknowledged and we
        have not read: those bytes are DATA_ACKed already, so they must reach the connection."""
        if sf.closed or (sf.kernel_ack_ssn > sf.read_ssn and not sf.eof and not force):
            return
        sf.close()
        self.dirty = True
        self.conn.emit(CloseSubflow(sf, reset=sf.close_reset))

    def retire_now(self, sf: Subflow) -> None:
        """A retiring subflow's socket failed: nothing more can be read from it."""
        self._retire(sf, force=True)

    def others_alive(self, sf: Subflow) -> bool:
        return any(s is not sf and s.established and not s.eof and not s.retiring for s in self.conn.subflows)

    def path_changed(self, path: int, now: float) -> None:
        """The path manager's view of path changed (usable or not, backup or not)."""
        conn = self.conn
        mine = [s for s in conn.subflows if s.path == path and not s.closed]
        if not self.pm.usable(path):
            alive = [s for s in conn.subflows if s.path != path and s.established and not s.closed
                     and not s.retiring]
            if not mine or not alive:
                return          # nothing to move, or nowhere to move it: TCP may still recover
            ids = bytes(sorted({s.address_id for s in mine}))
            self._control(alive[0], _opt.emit_remove_addr(ids))
            conn.counters["remove_addr_sent"] += 1
            for s in mine:
                self.lose(s, "subflows_path_down")
            return
        for key in [k for k in self.retry_at if k[0] == path]:
            del self.retry_at[key]
            self.retry_wait.pop(key, None)
        self.dirty = True
        backup = self.pm.backup(path)
        for s in mine:
            if s.backup != backup:
                s.backup = backup
                s.prio_pending = True

    # ------------------------------------------------------------ the peer's addresses

    def peer_added(self, sf: Subflow, address_id: int, addr: bytes, port: int | None) -> None:
        conn = self.conn
        if address_id not in self.remotes:
            conn.counters["add_addr_from_peer"] += 1
            self.remotes[address_id] = (addr, port)
            self.dirty = True
        # RFC 8684 3.4.1: echoed (E=1, no HMAC), or the peer retransmits it.
        has_port = port is not None
        self._control(sf, _opt.emit_add_addr(address_id, True, addr, has_port, port or 0))

    def peer_removed(self, ids: bytes) -> None:
        conn = self.conn
        for address_id in ids:
            conn.counters["remove_addr_from_peer"] += 1
            if address_id != 0:
                self.remotes.pop(address_id, None)
            for s in conn.subflows:
                if s.remote_id == address_id and not s.closed and self.others_alive(s):
                    self.lose(s, "subflows_removed_by_peer")

    # ------------------------------------------------------------ in poll

    def poll(self, now: float) -> None:
        conn = self.conn
        self._stalls(now)
        for s in conn.subflows:
            if s.retiring:
                self._retire(s)
            elif s.state == SubflowState.PRE_ESTABLISHED and s.join_hmac is not None \
                    and now >= s.third_ack_at + s.third_ack_rto and s.last_ack is not None:
                # RFC 8684 3.2: the third ACK is resent until the peer's fourth ACK arrives.
                s.third_ack_at, s.third_ack_rto = now, min(s.third_ack_rto * 2, JOIN_RETRY_MAX)
                conn.send_control(s, _opt.emit_mp_join_ack(s.join_hmac))
                conn.counters["join_acks_resent"] += 1
        for s in conn.subflows:
            if s.prio_pending and s.established and not s.closed and s.last_ack is not None:
                s.prio_pending = False
                self._control(s, _opt.emit_mp_prio(s.backup))
                conn.counters["mp_prio_sent"] += 1
        if not conn.closing_down():
            self.open_joins(now)

    def _stalls(self, now: float) -> None:
        subs = [s for s in self.conn.subflows if s.established and not s.closed and not s.retiring]
        if len(subs) < 2:
            for s in subs:
                if s.stale:             # the only one left: nothing to compare it with
                    s.stale = False
                    self.conn.counters["subflows_recovered"] += 1
            return
        latest = 0.0     # the last ACK progress of any subflow (an idle one does not count)
        for s in subs:
            if s.advanced:
                s.acked_at = now
            if s.advanced or s.outstanding <= 0 or not s.progress_at:
                s.advanced = False
                s.progress_at = now
                if s.stale:
                    s.stale = False
                    self.conn.counters["subflows_recovered"] += 1
            latest = max(latest, s.acked_at)
        for s in subs:
            if not s.stale and now - s.progress_at > self.stall_after(s) and latest > s.progress_at:
                s.stale = True
                self.conn.counters["subflows_stalled"] += 1
                self.conn.send.reinject_from(s, closing=False)

    @staticmethod
    def stall_after(s: Subflow) -> float:
        return max(STALL_MIN, STALL_RTTS * s.srtt)

    def deadline(self) -> float | None:
        """The next time poll has something to do here (never one already past: a stall that waits
        for another subflow's progress is seen when that progress comes)."""
        conn = self.conn
        if conn.closing_down():
            return None
        times = list(self.retry_at.values())
        if self.dirty and not conn.peer_dss_seen and conn.connected_at is not None:
            times.append(conn.connected_at + KEYS_WAIT)
        subs = [s for s in conn.subflows if s.established and not s.closed]
        if len(subs) > 1:
            times.extend(s.progress_at + self.stall_after(s) for s in subs
                         if not s.stale and s.outstanding > 0 and s.progress_at)
        times.extend(s.third_ack_at + s.third_ack_rto for s in conn.subflows
                     if s.state == SubflowState.PRE_ESTABLISHED and s.join_hmac is not None)
        future = [t for t in times if t > conn.last_now]
        return min(future) if future else None

    def _control(self, sf: Subflow, option: bytes) -> None:
        """A pure ACK on sf carrying option beside the DATA_ACK."""
        conn = self.conn
        conn.send_control(sf, option + _opt.emit_dss(True, conn.data_ack() & M64, True))
