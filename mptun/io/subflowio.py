"""What the edge does with one subflow socket beyond plain reads and writes: reading it out before it
closes, closing it (with RST or not), and reporting its TCP_INFO to core as the scheduler's inputs."""

from __future__ import annotations

import socket
import struct

from mptun.core.connection import Connection
from mptun.core.subflow import Subflow

IO_CHUNK = 256 * 1024
# struct tcp_info (linux/tcp.h) from offset 16: snd_mss, rcv_mss, unacked, sacked, lost, retrans,
# fackets, last_data_sent, last_ack_sent, last_data_recv, last_ack_recv, pmtu, rcv_ssthresh, rtt,
# rttvar, snd_ssthresh, snd_cwnd; tcpi_notsent_bytes at 144.
_TCP_INFO_LEN = 148
_TCP_INFO_A = struct.Struct("=I4x4I28x2I4xI")
_TCP_INFO_NOTSENT = struct.Struct("=I")
# Reads of one socket being read out, at most (each up to IO_CHUNK).
READ_OUT_MAX = 64


def read_out(conn: Connection, sf: Subflow, s: socket.socket) -> None:
    """Everything sf's socket holds that fits the reassembly now: our kernel acknowledged it to the
    peer already, so it must reach the connection before the socket goes."""
    for _ in range(READ_OUT_MAX):
        want = min(conn.subflow_room(sf), IO_CHUNK)
        if want <= 0:
            return
        try:
            data = s.recv(want, socket.MSG_DONTWAIT)
        except OSError:
            return
        if not data:
            return
        conn.subflow_data(sf, data)


def close(s: socket.socket, reset: bool) -> None:
    """Close a connection's socket (a subflow's or the app's), with a RST if reset."""
    if reset:
        # SO_LINGER 0: close sends a RST (the datapath adds MP_FASTCLOSE or MP_TCPRST).
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    s.close()


def report_info(conn: Connection, socks: dict[Subflow, socket.socket]) -> None:
    """Each established subflow's TCP_INFO to core (RTT, congestion window, packets in flight,
    bytes not yet sent): what the scheduler decides by."""
    for sf, s in socks.items():
        if not sf.established:
            continue
        try:
            raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except OSError:
            continue
        if len(raw) < _TCP_INFO_LEN:
            continue
        mss, unacked, sacked, lost, retrans, rtt, rttvar, cwnd = _TCP_INFO_A.unpack_from(raw, 16)
        notsent = _TCP_INFO_NOTSENT.unpack_from(raw, 144)[0]
        conn.subflow_info(sf, rtt / 1e6, rttvar / 1e6, cwnd, max(0, unacked - sacked - lost + retrans), notsent, mss)
