"""Pure-Python twin of mptun._fast.mptcpopt: the same flat record and emitters, built on mptun.wire.mptcp.

parse_options(bytes) -> dict flattens wire.mptcp.parse_options() into the
fields of mptcpopt.pxd's TcpOptions; emit_*() go through the value types.
"""

import ipaddress

from mptun.wire import mptcp as w
from mptun.wire import tcpip as t

REASON_NAMES = tuple(r.name for r in t.Reason)

# TcpOptions.present bits and SUBTYPE_NONE, as in mptcpopt.pxd
HAS_MSS, HAS_WSCALE, HAS_SACK_PERMITTED, HAS_SACK = 0x01, 0x02, 0x04, 0x08
HAS_TIMESTAMPS, HAS_MPTCP, HAS_UNKNOWN, HAS_EOL = 0x10, 0x20, 0x40, 0x80
SUBTYPE_NONE = 0xFF
# Reasons given before an option's kind is looked at: such an option is not counted as MPTCP.
_UNWALKED = (t.Reason.TRUNCATED, t.Reason.BAD_OPTION_LENGTH, t.Reason.OPTIONS_TOO_LONG)


def _empty_record() -> dict:
    return {
        "error": 0, "error_offset": 0, "malformed_count": 0, "end": 0, "present": 0,
        "mss": 0, "mss_offset": 0, "wscale": 0, "wscale_offset": 0, "sack_count": 0, "sack_offset": 0,
        "ts_offset": 0, "tsval": 0, "tsecr": 0, "unknown_count": 0,
        "mptcp_count": 0, "mptcp_offset": [], "mptcp_len": [], "mptcp_subtype": [],
        "suboptions": 0,
        "mpc_form": 0, "mpc_version": 0, "mpc_flags": 0, "mpc_has_checksum": False, "mpc_sender_key": 0,
        "mpc_receiver_key": 0, "mpc_data_len": 0, "mpc_checksum": 0,
        "join_form": 0, "join_backup": False, "join_address_id": 0, "join_token": 0, "join_nonce": 0,
        "join_truncated_hmac": 0, "join_hmac": bytes(w.MPTCPOPT_JOIN_HMAC_LEN),
        "dss_flags": 0, "data_ack": 0, "dsn": 0, "subflow_seq": 0, "data_len": 0,
        "dss_has_checksum": False, "dss_checksum": 0,
        "add_addr_id": 0, "add_addr_echo": False, "add_addr_ipv6": False, "add_addr_address": b"",
        "add_addr_has_port": False, "add_addr_port": 0, "add_addr_hmac": 0,
        "remove_ids": b"", "prio_backup": False, "fail_dsn": 0, "fastclose_receiver_key": 0,
        "tcprst_flags": 0, "tcprst_reason": 0,
    }


def _record_suboption(r: dict, o) -> None:
    r["suboptions"] |= 1 << w.SUBTYPE_OF[type(o)]
    if isinstance(o, w.MpCapable):
        r.update(mpc_form=int(o.form), mpc_version=o.version, mpc_flags=o.flags,
                 mpc_has_checksum=o.checksum is not None, mpc_sender_key=o.sender_key or 0,
                 mpc_receiver_key=o.receiver_key or 0, mpc_data_len=o.data_len or 0,
                 mpc_checksum=o.checksum or 0)
    elif isinstance(o, w.MpJoin):
        r.update(join_form=int(o.form), join_backup=o.backup, join_address_id=o.address_id or 0,
                 join_token=o.token or 0, join_nonce=o.nonce or 0,
                 join_truncated_hmac=o.truncated_hmac or 0,
                 join_hmac=o.hmac if o.hmac is not None else bytes(w.MPTCPOPT_JOIN_HMAC_LEN))
    elif isinstance(o, w.Dss):
        r.update(dss_flags=o.flags, data_ack=o.data_ack or 0, dsn=o.dsn or 0, subflow_seq=o.subflow_seq or 0,
                 data_len=o.data_len or 0, dss_has_checksum=o.checksum is not None,
                 dss_checksum=o.checksum or 0)
    elif isinstance(o, w.AddAddr):
        r.update(add_addr_id=o.address_id, add_addr_echo=o.echo, add_addr_ipv6=o.address.version == 6,
                 add_addr_address=o.address.packed, add_addr_has_port=o.port is not None,
                 add_addr_port=o.port or 0, add_addr_hmac=o.truncated_hmac or 0)
    elif isinstance(o, w.RemoveAddr):
        r["remove_ids"] = bytes(o.address_ids)
    elif isinstance(o, w.MpPrio):
        r["prio_backup"] = o.backup
    elif isinstance(o, w.MpFail):
        r["fail_dsn"] = o.dsn
    elif isinstance(o, w.MpFastclose):
        r["fastclose_receiver_key"] = o.receiver_key
    elif isinstance(o, w.MpTcpRst):
        r.update(tcprst_flags=o.flags, tcprst_reason=o.reason)


def parse_options(area: bytes) -> dict:
    """The flat record of a TCP options area; `error` is 0 or an index into REASON_NAMES."""
    parsed = w.parse_options(bytes(area))
    r = _empty_record()
    r["end"] = parsed.end
    bad = parsed.malformed
    if bad:
        r.update(error=int(bad[0].reason), error_offset=bad[0].offset, malformed_count=len(bad))
    for offset, o, raw in zip(parsed.offsets, parsed.options, parsed.raw):
        is_mptcp = type(o) in w.SUBTYPE_OF or (
            isinstance(o, w.Malformed) and o.reason not in _UNWALKED and raw[0] == t.TCPOPT_MPTCP)
        if is_mptcp:
            r["present"] |= HAS_MPTCP
            r["mptcp_count"] += 1
            r["mptcp_offset"].append(offset)
            r["mptcp_len"].append(len(raw))
            r["mptcp_subtype"].append(raw[2] >> 4 if len(raw) >= 3 else SUBTYPE_NONE)
            if not isinstance(o, w.Malformed):
                _record_suboption(r, o)
        elif isinstance(o, t.Eol):
            r["present"] |= HAS_EOL
        elif isinstance(o, t.UnknownOption):
            r["present"] |= HAS_UNKNOWN
            r["unknown_count"] = min(255, r["unknown_count"] + 1)
        elif isinstance(o, t.SackPermitted):
            r["present"] |= HAS_SACK_PERMITTED
        elif isinstance(o, t.Mss) and not r["present"] & HAS_MSS:
            r.update(present=r["present"] | HAS_MSS, mss=o.value, mss_offset=offset)
        elif isinstance(o, t.WindowScale) and not r["present"] & HAS_WSCALE:
            r.update(present=r["present"] | HAS_WSCALE, wscale=o.shift, wscale_offset=offset)
        elif isinstance(o, t.Sack) and not r["present"] & HAS_SACK:
            r.update(present=r["present"] | HAS_SACK, sack_count=len(o.blocks), sack_offset=offset)
        elif isinstance(o, t.Timestamps) and not r["present"] & HAS_TIMESTAMPS:
            r.update(present=r["present"] | HAS_TIMESTAMPS, tsval=o.tsval, tsecr=o.tsecr, ts_offset=offset)
    return r


# Emitters: the same arguments as mptcpopt.pxd's, minus the output buffer; b"" where the C one returns 0.

def emit_mp_capable_syn(flags: int) -> bytes:
    return w.MpCapable.syn(flags).emit()


def emit_mp_capable_synack(flags: int, sender_key: int) -> bytes:
    return w.MpCapable.synack(sender_key, flags).emit()


def emit_mp_capable_ack(flags: int, sender_key: int, receiver_key: int) -> bytes:
    return w.MpCapable.ack(sender_key, receiver_key, flags).emit()


def emit_mp_capable_ack_data(flags: int, sender_key: int, receiver_key: int, data_len: int,
                             has_checksum: bool = False, checksum: int = 0) -> bytes:
    return w.MpCapable.ack_data(sender_key, receiver_key, data_len, checksum if has_checksum else None,
                                flags).emit()


def emit_mp_join_syn(backup: bool, address_id: int, token: int, nonce: int) -> bytes:
    return w.MpJoin.syn(address_id, token, nonce, bool(backup)).emit()


def emit_mp_join_synack(backup: bool, address_id: int, truncated_hmac: int, nonce: int) -> bytes:
    return w.MpJoin.synack(address_id, truncated_hmac, nonce, bool(backup)).emit()


def emit_mp_join_ack(hmac: bytes) -> bytes:
    if len(hmac) != w.MPTCPOPT_JOIN_HMAC_LEN:
        raise ValueError(f"MP_JOIN ACK carries a 160-bit HMAC (20 bytes), not {len(hmac)} bytes")
    return w.MpJoin.ack(hmac).emit()


def emit_dss(has_data_ack: bool = False, data_ack: int = 0, data_ack_64: bool = False,
             has_mapping: bool = False, dsn: int = 0, dsn_64: bool = False, subflow_seq: int = 0,
             data_len: int = 0, data_fin: bool = False, has_checksum: bool = False, checksum: int = 0) -> bytes:
    if data_fin and not has_mapping:
        return b""
    return w.Dss(
        data_ack=(data_ack if data_ack_64 else data_ack & 0xFFFFFFFF) if has_data_ack else None,
        data_ack_64=bool(data_ack_64) if has_data_ack else True,
        dsn=(dsn if dsn_64 else dsn & 0xFFFFFFFF) if has_mapping else None,
        dsn_64=bool(dsn_64) if has_mapping else True,
        subflow_seq=subflow_seq if has_mapping else None,
        data_len=data_len if has_mapping else None,
        checksum=checksum if has_mapping and has_checksum else None,
        data_fin=bool(data_fin)).emit()


def dss_length(has_data_ack: bool, data_ack_64: bool, has_mapping: bool, dsn_64: bool, has_checksum: bool) -> int:
    return w.dss_length(has_data_ack, data_ack_64, has_mapping, dsn_64, has_checksum)


def emit_add_addr(address_id: int, echo: bool, address: bytes, has_port: bool = False, port: int = 0,
                  truncated_hmac: int = 0) -> bytes:
    if len(address) not in (4, 16):
        raise ValueError(f"an IPv4 or IPv6 address, packed (4 or 16 bytes), not {len(address)} bytes")
    return w.AddAddr(address_id=address_id, address=ipaddress.ip_address(bytes(address)),
                     port=port if has_port else None, echo=bool(echo),
                     truncated_hmac=None if echo else truncated_hmac).emit()


def emit_remove_addr(address_ids: bytes) -> bytes:
    if not 1 <= len(address_ids) <= w.MPTCPOPT_REMOVE_ADDR_MAX_IDS:
        return b""
    return w.RemoveAddr(tuple(address_ids)).emit()


def emit_mp_prio(backup: bool) -> bytes:
    return w.MpPrio(bool(backup)).emit()


def emit_mp_fail(dsn: int) -> bytes:
    return w.MpFail(dsn).emit()


def emit_mp_fastclose(receiver_key: int) -> bytes:
    return w.MpFastclose(receiver_key).emit()


def emit_mp_tcprst(flags: int, reason: int) -> bytes:
    return w.MpTcpRst(reason=reason, flags=flags & 0x0F).emit()
