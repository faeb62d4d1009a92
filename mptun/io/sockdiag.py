"""Kernel TCP sockets of this network namespace by 4-tuple, over NETLINK_SOCK_DIAG: look one up, list, destroy.

mptun uses it on the app's side of an app leg, which it does not own: whether the app still waits
for its connect while mptun holds its SYN, how many bytes the app has not read yet (so mptun never
ends a connection cleanly while the app may still abort with data unread), and, after the daemon
died, to reset the apps' sockets it left behind (`mptun down`). IPv4 only, like the app leg.
Needs CAP_NET_ADMIN for destroy (CONFIG_INET_DIAG_DESTROY).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_SYN_SENT = 2
TCP_STATES_ALL = 0xFFF
TCP_STATES_LIVE = TCP_STATES_ALL & ~((1 << 6) | (1 << 7) | (1 << 10))   # not TIME_WAIT, CLOSE, LISTEN
NOCOOKIE = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")                 # family, protocol, ext, states
_SOCKID = struct.Struct("!HH16s16s")           # ports and addresses are big-endian
_SOCKID_TAIL = struct.Struct("=III")           # interface, cookie (host order)
_MSG_HEAD = struct.Struct("=BBBB")             # family, state, timer, retrans
_MSG_TAIL = struct.Struct("=IIIII")            # expires, rqueue, wqueue, uid, inode


@dataclass(frozen=True)
class TcpSock:
    src: bytes
    sport: int
    dst: bytes
    dport: int
    state: int
    rqueue: int        # received, not read by the owner (for a listener: its backlog)
    wqueue: int
    cookie: tuple[int, int]


class SockDiagError(OSError):
    pass


def _request(kind: int, flags: int, src: bytes, sport: int, dst: bytes, dport: int, states: int,
             cookie: tuple[int, int] = (NOCOOKIE, NOCOOKIE)) -> bytes:
    body = (_REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, states)
            + _SOCKID.pack(sport, dport, src.ljust(16, b"\0"), dst.ljust(16, b"\0"))
            + _SOCKID_TAIL.pack(0, *cookie))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body


def _parse_msg(payload: bytes) -> TcpSock:
    _, state, _, _ = _MSG_HEAD.unpack_from(payload, 0)
    sport, dport, src, dst = _SOCKID.unpack_from(payload, _MSG_HEAD.size)
    _, c0, c1 = _SOCKID_TAIL.unpack_from(payload, _MSG_HEAD.size + _SOCKID.size)
    _, rq, wq, _, _ = _MSG_TAIL.unpack_from(payload, _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size)
    return TcpSock(src[:4], sport, dst[:4], dport, state, rq, wq, (c0, c1))


def _talk(request: bytes, dump: bool = False) -> list[TcpSock]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        nl.sendto(request, (0, 0))
        out = []
        while True:
            data = nl.recv(1 << 16)
            pos = 0
            while pos + _NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, pos)
                if length < _NLMSGHDR.size:
                    return out
                payload = data[pos + _NLMSGHDR.size:pos + length]
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload, 0)[0]
                    if err == 0:
                        return out      # an ACK (destroy)
                    raise SockDiagError(err, os.strerror(err))
                if kind == SOCK_DIAG_BY_FAMILY:
                    out.append(_parse_msg(payload))
                pos += (length + 3) & ~3
            if not dump and out:
                return out


def lookup(src: bytes, sport: int, dst: bytes, dport: int) -> TcpSock | None:
    """The socket with this exact 4-tuple (local src:sport, remote dst:dport), or None."""
    try:
        got = _talk(_request(SOCK_DIAG_BY_FAMILY, 0, src, sport, dst, dport, TCP_STATES_ALL))
    except SockDiagError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return got[0] if got else None


def connecting(src: bytes, sport: int, dst: bytes, dport: int) -> bool:
    """True while the socket with this 4-tuple is still in SYN_SENT: an app waiting for its connect
    (one that gave up closed it, or it timed out)."""
    s = lookup(src, sport, dst, dport)
    return s is not None and s.state == TCP_SYN_SENT


def sockets_from(src: bytes, states: int = TCP_STATES_LIVE) -> list[TcpSock]:
    """Every TCP socket whose local address is src, in the given states (a bitmask of 1 << state)."""
    got = _talk(_request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, bytes(4), 0, bytes(4), 0, states), dump=True)
    return [s for s in got if s.src == src]


def destroy(sock: TcpSock) -> bool:
    """Reset that socket as if a RST had arrived (its owner gets ECONNABORTED); False if it was gone."""
    try:
        _talk(_request(SOCK_DESTROY, NLM_F_ACK, sock.src, sock.sport, sock.dst, sock.dport, TCP_STATES_ALL, sock.cookie))
    except SockDiagError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True
