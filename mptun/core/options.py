"""Per-segment MPTCP options, both ways (as Linux's net/mptcp/options.c): what each of our subflow
segments must carry, and what each of the peer's says.

`outgoing` decides the options for a segment our kernel sends (MP_CAPABLE in the handshake and the
first data, then DSS with the DATA_ACK and the chunk's mapping, MP_FASTCLOSE on our RST); `incoming`
records the peer's (its key or fallback from the SYN/ACK, DATA_ACK and window, mappings, DATA_FIN,
MP_FASTCLOSE) and says whether the segment may reach our kernel. Both run once per packet and return
codes (None or False: dropped, counted by reason), never raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mptun import impl
from mptun.core import segopts as so
from mptun.core.send import CHUNK_MAX
from mptun.core.states import PEER_ABORTS, ConnState, Mode
from mptun.core.seqspace import M64, expand_dsn, u32
from mptun.core.subflow import Subflow, SubflowKind, SubflowState
from mptun.wire import crypto
from mptun.wire import mptcp as w
from mptun.wire.tcpip import TCP_ACK, TCP_RST, TCP_SYN

if TYPE_CHECKING:
    from mptun.core.connection import Connection

_opt = impl.load("mptcpopt")
JOIN_HANDSHAKING = (SubflowState.SYNACK_SEEN, SubflowState.PRE_ESTABLISHED)

def outgoing(conn: Connection, sf: Subflow, seq: int, ack: int, flags: int, payload_len: int, window: int,
             options: bytes) -> bytes | None:
    """The MPTCP options to add to this segment of sf going to the peer: b"" to add nothing,
    None to drop it (the reason is counted; TCP retransmits it)."""
    if flags & TCP_SYN:
        sf.seen_syn(seq, window, so.wscale_of(options))
        if sf.kind == SubflowKind.JOIN:
            # RFC 8684 3.2: the peer's token, our nonce, the local address's ID, our priority.
            return _opt.emit_mp_join_syn(sf.backup, sf.address_id, conn.peer_token, sf.nonce)
        if conn.mode == Mode.FALLBACK:
            return b""
        # RFC 8684 3.1: MP_CAPABLE in the SYN, version 1, H (HMAC-SHA256); A if we want checksums.
        return _opt.emit_mp_capable_syn(conn.mpc_flags())
    if sf.our_isn is None:
        return conn.drop("segments_unmapped")
    sf.seen_out(seq, ack, flags, payload_len, window, options)
    if conn.mode != Mode.MPTCP:
        return b""
    if flags & TCP_RST:
        if conn.state == ConnState.ABORTED and conn.error not in PEER_ABORTS and conn.peer_key is not None:
            # RFC 8684 3.5: MP_FASTCLOSE with the peer's key on a RST closes the whole connection.
            return _opt.emit_mp_fastclose(conn.peer_key & M64)
        if sf.closed:
            # One subflow closed (its path went, the peer removed its address, it stalled):
            # RFC 8684 3.6 says why; the connection goes on over the others.
            return _opt.emit_mp_tcprst(0, sf.rst_reason)
        return b""
    if flags & TCP_ACK:
        sf.note_kernel_ack(ack)
    if sf.kind == SubflowKind.JOIN and sf.state in (SubflowState.SYNACK_SEEN, SubflowState.PRE_ESTABLISHED):
        if payload_len or sf.join_hmac is None:
            return conn.drop("segments_unmapped")   # nothing is written before the join is established
        # RFC 8684 3.2: the third ACK carries our 160-bit HMAC; repeated until the peer answers.
        sf.third_ack_sent(conn.last_now)
        return _opt.emit_mp_join_ack(sf.join_hmac)

    rel = sf.out_offset(seq) if payload_len else 0
    if not conn.peer_dss_seen and sf.kind == SubflowKind.INITIAL:
        # RFC 8684 3.1: until the peer's first DSS, the third ACK's MP_CAPABLE is repeated,
        # and the first data carries both keys and the data-level length (in case the third
        # ACK was lost: the passive opener creates its socket from whichever arrives).
        if payload_len == 0:
            sf.mpc_ack_sent = True
            return _opt.emit_mp_capable_ack(conn.mpc_flags(), conn.key, conn.peer_key & M64)
        if sf.kind == SubflowKind.INITIAL and sf.first_chunk_len and rel + payload_len <= 1 + sf.first_chunk_len:
            csum = sf.our_csums.get(1, 0)
            return _opt.emit_mp_capable_ack_data(conn.mpc_flags(), conn.key, conn.peer_key & M64,
                                                 sf.first_chunk_len, conn.checksums, csum)
    data_ack = conn.data_ack()
    if payload_len == 0:
        return _opt.emit_dss(True, data_ack & M64, True)
    m = sf.our_maps.lookup(rel)
    if m is None:
        if rel + payload_len <= sf.peer_ack_ssn:
            # The peer acknowledged these bytes while the kernel retransmitted them (its
            # ACK was still on the way in): harmless to drop.
            return conn.drop("retransmits_of_acked_data")
        return conn.drop("segments_unmapped")
    start, dsn, length = m
    if rel + payload_len > start + length:
        return conn.drop("segments_across_mappings")
    return _opt.emit_dss(True, data_ack & M64, True, True, dsn & M64, True, u32(start), length, False,
                         conn.checksums, sf.our_csums.get(start, 0))

def incoming(conn: Connection, sf: Subflow, seq: int, ack: int, flags: int, payload_len: int, window: int,
             o: dict | None) -> bool:
    """Record what the peer's segment says; False: drop it (the reason is counted)."""
    if flags & TCP_SYN:
        if sf.kind == SubflowKind.JOIN:
            return _join_synack(conn, sf, seq, ack, window, o)
        return _synack(conn, sf, seq, window, o)
    if conn.mode != Mode.MPTCP:
        return True
    if o["error"] and o["present"] & so.HAS_MPTCP:
        # Malformed MPTCP options from the network: dropped and counted, never trusted.
        conn.counters["malformed_options"] += 1
        return False
    if flags & TCP_ACK and not sf.note_peer_ack(ack, CHUNK_MAX):
        conn.counters["acks_of_unsent_data"] += 1
        return False
    if flags & TCP_RST and sf.kind == SubflowKind.JOIN and sf.state in JOIN_HANDSHAKING \
            and sf.in_window(seq, 0):
        # The peer refused the join after its SYN/ACK (Linux can, at the third ACK): it never
        # joined. (A RST to the SYN itself fails the socket's connect: subflow_connect_failed.)
        conn.mp.drop_join(sf)
    elif sf.kind == SubflowKind.JOIN and sf.join_acked():
        # RFC 8684 3.2: the peer answered our third ACK (the fourth ACK): the subflow may carry data.
        conn.joined(sf)
    subs = o["suboptions"]
    if subs & so.SUBOPT_DSS:
        _dss(conn, sf, seq, payload_len, window, o)
    if subs & so.SUBOPT_MP_FASTCLOSE and o["fastclose_receiver_key"] == conn.key:
        # RFC 8684 3.5: the peer abandons the connection; the app gets a reset.
        conn.abort("fastclose_from_peer")
    if subs & so.SUBOPT_MP_FAIL:
        conn.counters["mp_fail_from_peer"] += 1
    if subs & so.SUBOPTS_PATH:
        _path_options(conn, sf, subs, o)
    if flags & TCP_RST and subs & so.SUBOPT_MP_TCPRST:
        conn.counters["tcprst_from_peer"] += 1
    return True


def _path_options(conn: Connection, sf: Subflow, subs: int, o: dict) -> None:
    """The peer's MP_PRIO, ADD_ADDR and REMOVE_ADDR (RFC 8684 3.3.8, 3.4)."""
    if subs & so.SUBOPT_MP_PRIO:
        sf.peer_backup = bool(o["prio_backup"])
    if subs & so.SUBOPT_ADD_ADDR and not o["add_addr_echo"]:
        if o["add_addr_ipv6"]:
            conn.counters["add_addr_ignored"] += 1     # the subflows are IPv4 for now
        else:
            port = o["add_addr_port"] if o["add_addr_has_port"] else None
            want = crypto.add_addr_hmac(conn.peer_key, conn.key, o["add_addr_id"], o["add_addr_address"], port)
            if want != o["add_addr_hmac"]:
                conn.counters["add_addr_hmac_failures"] += 1
            else:
                conn.peer_added(sf, o["add_addr_id"], bytes(o["add_addr_address"]), port)
    if subs & so.SUBOPT_REMOVE_ADDR:
        conn.peer_removed(bytes(o["remove_ids"]))


def _join_synack(conn: Connection, sf: Subflow, seq: int, ack: int, window: int, o: dict) -> bool:
    """The peer's SYN/ACK of our MP_JOIN: its HMAC proves it knows both keys (RFC 8684 3.2). A
    wrong or missing one: the subflow is reset with MP_TCPRST and never joins; the SYN/ACK is
    not delivered, so our kernel socket never connects."""
    if not sf.seen_synack(seq, o["wscale"] if o["present"] & so.HAS_WSCALE else 0):
        return sf.join_hmac is not None   # a retransmission: decided already
    ok = o["suboptions"] & so.SUBOPT_MP_JOIN and o["join_form"] == so.JOIN_FORM_SYNACK
    if ok:
        want = crypto.join_synack_hmac(conn.peer_key, conn.key, o["join_nonce"], sf.nonce)
        ok = want == o["join_truncated_hmac"]
    if not ok:
        conn.join_refused(sf, ack, "join_hmac_failures" if o["suboptions"] & so.SUBOPT_MP_JOIN
                          else "join_without_mp_join")
        return False
    sf.peer_nonce = o["join_nonce"]
    sf.peer_backup = bool(o["join_backup"])
    sf.join_hmac = crypto.join_ack_hmac(conn.key, conn.peer_key, sf.nonce, sf.peer_nonce)
    return True

def _synack(conn: Connection, sf: Subflow, seq: int, window: int, o: dict) -> bool:
    if not sf.seen_synack(seq, o["wscale"] if o["present"] & so.HAS_WSCALE else 0):
        return True   # a retransmitted SYN/ACK: decided already
    if conn.mode is not None:
        return True
    form = o["mpc_form"] if o["suboptions"] & so.SUBOPT_MP_CAPABLE else 0
    if form != so.MPC_FORM_SYNACK:
        bad = o["error"] in (so.REASON_BAD_VERSION, so.REASON_UNSUPPORTED_MPC_FLAGS)
        # RFC 8684 3.1: no (usable) MP_CAPABLE in the SYN/ACK: the connection is plain TCP.
        conn.set_fallback("fallback_peer_version" if bad else "fallback_no_mp_capable")
        return True
    conn.mode = Mode.MPTCP
    conn.counters["mptcp_connections"] += 1
    conn.peer_key = o["mpc_sender_key"]
    # RFC 8684 3.1: checksums are used if either host asks for them.
    conn.checksums = bool(conn.want_checksums or o["mpc_flags"] & w.MPC_CHECKSUM_REQUIRED)
    conn.recv.start(crypto.key_idsn(conn.peer_key) + 1, conn.checksums)
    conn.send.start(conn.checksums, window)
    return True

def _dss(conn: Connection, sf: Subflow, seq: int, payload_len: int, window: int, o: dict) -> None:
    conn.peer_dss_seen = True
    dflags = o["dss_flags"]
    if dflags & (w.DSS_MAPPING | w.DSS_DATA_FIN) and not sf.in_window(seq, payload_len):
        # Our kernel drops a segment outside its window: its mapping or DATA_FIN is not
        # recorded (a spoofed or stale one would truncate or misplace the stream).
        conn.counters["dss_outside_window"] += 1
        dflags &= ~(w.DSS_MAPPING | w.DSS_DATA_FIN)
    if dflags & w.DSS_DATA_ACK:
        da = expand_dsn(conn.snd_una, o["data_ack"], bool(dflags & w.DSS_DATA_ACK_64))
        # RFC 8684 3.3.4: the receive window is shared by all subflows and counts from the DATA_ACK.
        if not conn.send.data_ack(da, window << sf.peer_wscale):
            conn.counters["data_ack_invalid"] += 1
    if dflags & w.DSS_MAPPING:
        conn.recv.record_mapping(sf, seq, payload_len, o, bool(dflags & w.DSS_DATA_FIN))
