"""What the kernel says about an MPTCP connection through its uapi structs (SOL_MPTCP getsockopts).

Socket readers (`mptcp_info`, `subflow_addrs`, `full_info`, `is_fallback`) call getsockopt(SOL_MPTCP)
and decode by the length the kernel returned, since struct mptcp_info grew across kernel versions;
fields a kernel did not fill are None. The `parse_*` functions are pure (bytes in). What the kernel
prints (`ss -Mtni`, the MPTcpExt MIB) is read by mptun.lab.kstats.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from dataclasses import dataclass, field

SOL_MPTCP = 284
IPPROTO_MPTCP = 262

MPTCP_INFO = 1
MPTCP_TCPINFO = 2
MPTCP_SUBFLOW_ADDRS = 3
MPTCP_FULL_INFO = 4

MPTCP_INFO_FLAG_FALLBACK = 1 << 0
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 1 << 1

# On a connection that is plain TCP (a fallback, or a plain socket handed out by an MPTCP
# listener) the kernel passes SOL_MPTCP getsockopts to TCP, which refuses the level:
# measured on 6.18, the IPv4 path answers EOPNOTSUPP and the IPv6 path ENOPROTOOPT.
FALLBACK_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOPROTOOPT})

# (name, offset, struct format) of struct mptcp_info, in the order fields were appended:
# 5.9 ends at 40, 5.12 at 42, 5.14 at 43, 6.5 at 80, 6.8 at 81, 6.10 at 96.
_MPTCP_INFO_FIELDS = (
    ("subflows", 0, "B"),
    ("add_addr_signal", 1, "B"),
    ("add_addr_accepted", 2, "B"),
    ("subflows_max", 3, "B"),
    ("add_addr_signal_max", 4, "B"),
    ("add_addr_accepted_max", 5, "B"),
    ("flags", 8, "I"),
    ("token", 12, "I"),
    ("write_seq", 16, "Q"),
    ("snd_una", 24, "Q"),
    ("rcv_nxt", 32, "Q"),
    ("local_addr_used", 40, "B"),
    ("local_addr_max", 41, "B"),
    ("csum_enabled", 42, "B"),
    ("retransmits", 44, "I"),
    ("bytes_retrans", 48, "Q"),
    ("bytes_sent", 56, "Q"),
    ("bytes_received", 64, "Q"),
    ("bytes_acked", 72, "Q"),
    ("subflows_total", 80, "B"),
    ("last_data_sent", 84, "I"),
    ("last_data_recv", 88, "I"),
    ("last_ack_recv", 92, "I"),
)
MPTCP_INFO_KNOWN_SIZE = 96
# (sizeof(struct mptcp_info) of a kernel generation, where its last field ends): the kernel
# returns min(asked, sizeof), and sizeof includes tail padding, so a 5.14 kernel's 48 bytes
# hold nothing at 44 (retransmits) and a 6.8 kernel's 88 nothing at 84 (last_data_sent).
_MPTCP_INFO_GENERATIONS = ((40, 40), (48, 43), (80, 80), (88, 81), (96, 96))
# Room for fields a newer kernel may append; the kernel copies min(asked, its size).
_MPTCP_INFO_ASK = 256

SUBFLOW_DATA_HEADER = struct.Struct("=IIII")  # struct mptcp_subflow_data, aligned(8): 16 bytes
SOCKADDR_STORAGE_SIZE = 128
SUBFLOW_ADDRS_SIZE = 2 * SOCKADDR_STORAGE_SIZE  # struct mptcp_subflow_addrs
SUBFLOW_INFO_SIZE = 8 + SUBFLOW_ADDRS_SIZE  # struct mptcp_subflow_info: u32 id, pad, addrs (aligned 8)
FULL_INFO_HEADER = struct.Struct("=IIIIIIQQ")  # struct mptcp_full_info up to its mptcp_info
TCP_INFO_ASK = 512


@dataclass(frozen=True)
class MptcpInfo:
    """struct mptcp_info as the kernel returned it; None where the returned length stopped short."""

    length: int
    subflows: int | None = None  # subflows beyond the initial one (the kernel's pm count)
    add_addr_signal: int | None = None
    add_addr_accepted: int | None = None
    subflows_max: int | None = None
    add_addr_signal_max: int | None = None
    add_addr_accepted_max: int | None = None
    flags: int | None = None
    token: int | None = None
    write_seq: int | None = None
    snd_una: int | None = None
    rcv_nxt: int | None = None
    local_addr_used: int | None = None
    local_addr_max: int | None = None
    csum_enabled: int | None = None
    retransmits: int | None = None
    bytes_retrans: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    bytes_acked: int | None = None
    subflows_total: int | None = None  # all subflows including the initial one (6.8+)
    last_data_sent: int | None = None
    last_data_recv: int | None = None
    last_ack_recv: int | None = None

    @property
    def fallback(self) -> bool:
        return bool((self.flags or 0) & MPTCP_INFO_FLAG_FALLBACK)

    @property
    def remote_key_received(self) -> bool:
        return bool((self.flags or 0) & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED)

    def as_dict(self) -> dict:
        d = {name: getattr(self, name) for name, _, _ in _MPTCP_INFO_FIELDS}
        d["length"] = self.length
        d["fallback"] = self.fallback
        d["remote_key_received"] = self.remote_key_received
        return d


Endpoint = tuple[str, int]


@dataclass(frozen=True)
class SubflowAddrs:
    local: Endpoint
    remote: Endpoint

    @property
    def disconnected(self) -> bool:
        """A subflow the MPTCP socket still holds after closing it (addresses zeroed, remote port 0)."""
        return self.remote[1] == 0


@dataclass(frozen=True)
class TcpInfo:
    """The few struct tcp_info fields the lab looks at (per subflow); None where not returned."""

    length: int
    state: int | None = None
    retransmits: int | None = None
    rtt_us: int | None = None
    snd_cwnd: int | None = None
    total_retrans: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None
    min_rtt_us: int | None = None
    bytes_sent: int | None = None
    bytes_retrans: int | None = None


# (name, offset, format) in struct tcp_info (linux/tcp.h).
_TCP_INFO_FIELDS = (
    ("state", 0, "B"),
    ("retransmits", 2, "B"),
    ("rtt_us", 68, "I"),
    ("snd_cwnd", 80, "I"),
    ("total_retrans", 100, "I"),
    ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"),
    ("segs_in", 140, "I"),
    ("min_rtt_us", 148, "I"),
    ("bytes_sent", 200, "Q"),
    ("bytes_retrans", 208, "Q"),
)


@dataclass(frozen=True)
class SubflowInfo:
    id: int
    addrs: SubflowAddrs | None
    tcp: TcpInfo | None


@dataclass(frozen=True)
class MptcpFullInfo:
    """MPTCP_FULL_INFO: the connection and all its subflows, read in one consistent call."""

    info: MptcpInfo
    num_subflows: int  # what the kernel has; may exceed len(subflows) if the arrays were short
    subflows: list[SubflowInfo] = field(default_factory=list)


# ---- pure decoders ---------------------------------------------------------------------------


def _decode_fields(data: bytes, table, valid_end: int | None = None) -> dict:
    end = len(data) if valid_end is None else min(valid_end, len(data))
    values = {}
    for name, offset, fmt in table:
        size = struct.calcsize("=" + fmt)
        if offset + size <= end:
            values[name] = struct.unpack_from("=" + fmt, data, offset)[0]
    return values


def parse_mptcp_info(data: bytes) -> MptcpInfo:
    valid_end = 0
    for size, fields_end in _MPTCP_INFO_GENERATIONS:
        if len(data) >= size:
            valid_end = fields_end
    if len(data) > MPTCP_INFO_KNOWN_SIZE:
        valid_end = len(data)  # a newer kernel: every field known here is real
    return MptcpInfo(length=len(data), **_decode_fields(data, _MPTCP_INFO_FIELDS, valid_end))


def parse_tcp_info(data: bytes) -> TcpInfo:
    return TcpInfo(length=len(data), **_decode_fields(data, _TCP_INFO_FIELDS))


def parse_sockaddr(data: bytes) -> Endpoint | None:
    """(address, port) of a struct sockaddr_in/_in6 at the start of data; None for AF_UNSPEC."""
    if len(data) < 2:
        return None
    family = struct.unpack_from("=H", data, 0)[0]
    if family == socket.AF_INET and len(data) >= 8:
        port = struct.unpack_from("!H", data, 2)[0]
        return socket.inet_ntop(socket.AF_INET, data[4:8]), port
    if family == socket.AF_INET6 and len(data) >= 24:
        port = struct.unpack_from("!H", data, 2)[0]
        return socket.inet_ntop(socket.AF_INET6, data[8:24]), port
    return None


def parse_subflow_addrs_entry(data: bytes) -> SubflowAddrs | None:
    local = parse_sockaddr(data[:SOCKADDR_STORAGE_SIZE])
    remote = parse_sockaddr(data[SOCKADDR_STORAGE_SIZE:SUBFLOW_ADDRS_SIZE])
    if local is None or remote is None:
        return None
    return SubflowAddrs(local, remote)


def parse_subflow_data(data: bytes) -> tuple[int, list[bytes]]:
    """Split an MPTCP_SUBFLOW_ADDRS / MPTCP_TCPINFO answer into (subflows the kernel has, elements)."""
    if len(data) < SUBFLOW_DATA_HEADER.size:
        raise ValueError(f"mptcp_subflow_data answer too short: {len(data)} bytes")
    size_subflow_data, num_subflows, _size_kernel, size_user = SUBFLOW_DATA_HEADER.unpack_from(data)
    elements = []
    if size_user:
        body = data[size_subflow_data:]
        for i in range(len(body) // size_user):
            elements.append(body[i * size_user : (i + 1) * size_user])
    return num_subflows, elements


def parse_subflow_addrs(data: bytes) -> tuple[int, list[SubflowAddrs]]:
    num, elements = parse_subflow_data(data)
    return num, [a for a in map(parse_subflow_addrs_entry, elements) if a is not None]


def parse_full_info(header: bytes, sfinfo: bytes, tcpinfo: bytes) -> MptcpFullInfo:
    """Decode MPTCP_FULL_INFO: `header` is what getsockopt returned, the others are the arrays it filled."""
    (_tcp_kernel, size_tcp, _sf_kernel, size_sf, num_subflows, _arrays,
     _sf_ptr, _tcp_ptr) = FULL_INFO_HEADER.unpack_from(header)
    info = parse_mptcp_info(header[FULL_INFO_HEADER.size:])
    count = min(num_subflows, len(sfinfo) // size_sf if size_sf else 0)
    subflows = []
    for i in range(count):
        element = sfinfo[i * size_sf : (i + 1) * size_sf]
        sf_id = struct.unpack_from("=I", element, 0)[0]
        addrs = parse_subflow_addrs_entry(element[8:]) if len(element) >= SUBFLOW_INFO_SIZE else None
        tcp = parse_tcp_info(tcpinfo[i * size_tcp : (i + 1) * size_tcp]) if size_tcp else None
        subflows.append(SubflowInfo(sf_id, addrs, tcp))
    return MptcpFullInfo(info=info, num_subflows=num_subflows, subflows=subflows)


# ---- socket readers ----------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.POINTER(ctypes.c_uint32)]


def _fileno(sock) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def _getsockopt_inout(sock, level: int, optname: int, buf) -> int:
    """getsockopt with an input buffer (Python's socket.getsockopt cannot pass one); returns optlen."""
    optlen = ctypes.c_uint32(ctypes.sizeof(buf))
    if _libc.getsockopt(_fileno(sock), level, optname, ctypes.addressof(buf), ctypes.byref(optlen)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getsockopt(SOL_MPTCP, {optname}): {os.strerror(err)}")
    return optlen.value


def mptcp_info(sock) -> MptcpInfo:
    """MPTCP_INFO; raises OSError (errno in FALLBACK_ERRNOS) if the connection is plain TCP."""
    buf = ctypes.create_string_buffer(_MPTCP_INFO_ASK)
    n = _getsockopt_inout(sock, SOL_MPTCP, MPTCP_INFO, buf)
    return parse_mptcp_info(buf.raw[:n])


def is_fallback(sock) -> bool:
    """True if the kernel runs this connection as plain TCP (no MPTCP, or fell back to TCP)."""
    try:
        info = mptcp_info(sock)
    except OSError as e:
        if e.errno in FALLBACK_ERRNOS:
            return True
        raise
    return info.fallback


def subflow_addrs(sock, max_subflows: int = 8) -> list[SubflowAddrs]:
    """MPTCP_SUBFLOW_ADDRS: local and remote (address, port) of every subflow the kernel has now."""
    for _ in range(3):  # subflows may be added between calls: grow the array a bounded number of times
        buf = ctypes.create_string_buffer(SUBFLOW_DATA_HEADER.size + max_subflows * SUBFLOW_ADDRS_SIZE)
        SUBFLOW_DATA_HEADER.pack_into(buf, 0, SUBFLOW_DATA_HEADER.size, 0, 0, SUBFLOW_ADDRS_SIZE)
        n = _getsockopt_inout(sock, SOL_MPTCP, MPTCP_SUBFLOW_ADDRS, buf)
        num, addrs = parse_subflow_addrs(buf.raw[:n])
        if num <= max_subflows:
            return addrs
        max_subflows = num + 4
    return addrs


def full_info(sock, max_subflows: int = 8) -> MptcpFullInfo:
    """MPTCP_FULL_INFO (6.6+): mptcp_info plus every subflow's id, addresses and tcp_info at once."""
    sfinfo = ctypes.create_string_buffer(max_subflows * SUBFLOW_INFO_SIZE)
    tcpinfo = ctypes.create_string_buffer(max_subflows * TCP_INFO_ASK)
    buf = ctypes.create_string_buffer(FULL_INFO_HEADER.size + _MPTCP_INFO_ASK)
    FULL_INFO_HEADER.pack_into(buf, 0, 0, TCP_INFO_ASK, 0, SUBFLOW_INFO_SIZE, 0, max_subflows,
                               ctypes.addressof(sfinfo), ctypes.addressof(tcpinfo))
    n = _getsockopt_inout(sock, SOL_MPTCP, MPTCP_FULL_INFO, buf)
    return parse_full_info(buf.raw[:n], sfinfo.raw, tcpinfo.raw)


def socket_protocol(sock) -> int:
    """IPPROTO_MPTCP, or IPPROTO_TCP: an MPTCP listener hands out a plain TCP socket to a plain client."""
    if isinstance(sock, int):
        sock = socket.socket(fileno=os.dup(sock))
        try:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        finally:
            sock.close()
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
