# cython: language_level=3
"""Python-visible wrappers over mptcpopt.pxd, for tests and the pure/fast agreement checks.

parse_options(bytes) returns the flat TcpOptions record as a dict; emit_*()
return the option's bytes. The hot path cimports mptcpopt.pxd directly.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cimport mptcpopt

REASON_NAMES = (
    "OK",
    "TRUNCATED",
    "BAD_OPTION_LENGTH",
    "BAD_TCP_OPTION_LENGTH",
    "BAD_SUBOPTION_LENGTH",
    "UNKNOWN_SUBTYPE",
    "BAD_VERSION",
    "DUPLICATE_SUBOPTION",
    "UNSUPPORTED_MPC_FLAGS",
    "DATA_FIN_WITHOUT_MAPPING",
    "OPTIONS_TOO_LONG",
)
assert len(REASON_NAMES) == mptcpopt.REASON_COUNT

# TcpOptions.present bits and SUBTYPE_NONE, for Python readers of the record
HAS_MSS = mptcpopt.HAS_MSS
HAS_WSCALE = mptcpopt.HAS_WSCALE
HAS_SACK_PERMITTED = mptcpopt.HAS_SACK_PERMITTED
HAS_SACK = mptcpopt.HAS_SACK
HAS_TIMESTAMPS = mptcpopt.HAS_TIMESTAMPS
HAS_MPTCP = mptcpopt.HAS_MPTCP
HAS_UNKNOWN = mptcpopt.HAS_UNKNOWN
HAS_EOL = mptcpopt.HAS_EOL
SUBTYPE_NONE = mptcpopt.SUBTYPE_NONE


cdef dict _as_dict(mptcpopt.TcpOptions* o):
    cdef int n = o.mptcp_count
    return {
        "error": o.error,
        "error_offset": o.error_offset,
        "malformed_count": o.malformed_count,
        "end": o.end,
        "present": o.present,
        "mss": o.mss,
        "mss_offset": o.mss_offset,
        "wscale": o.wscale,
        "wscale_offset": o.wscale_offset,
        "sack_count": o.sack_count,
        "sack_offset": o.sack_offset,
        "ts_offset": o.ts_offset,
        "tsval": o.tsval,
        "tsecr": o.tsecr,
        "unknown_count": o.unknown_count,
        "mptcp_count": n,
        "mptcp_offset": [o.mptcp_offset[i] for i in range(n)],
        "mptcp_len": [o.mptcp_len[i] for i in range(n)],
        "mptcp_subtype": [o.mptcp_subtype[i] for i in range(n)],
        "suboptions": o.suboptions,
        "mpc_form": o.mpc_form,
        "mpc_version": o.mpc_version,
        "mpc_flags": o.mpc_flags,
        "mpc_has_checksum": bool(o.mpc_has_checksum),
        "mpc_sender_key": o.mpc_sender_key,
        "mpc_receiver_key": o.mpc_receiver_key,
        "mpc_data_len": o.mpc_data_len,
        "mpc_checksum": o.mpc_checksum,
        "join_form": o.join_form,
        "join_backup": bool(o.join_backup),
        "join_address_id": o.join_address_id,
        "join_token": o.join_token,
        "join_nonce": o.join_nonce,
        "join_truncated_hmac": o.join_truncated_hmac,
        "join_hmac": bytes(o.join_hmac[:mptcpopt.MPTCPOPT_JOIN_HMAC_LEN]),
        "dss_flags": o.dss_flags,
        "data_ack": o.data_ack,
        "dsn": o.dsn,
        "subflow_seq": o.subflow_seq,
        "data_len": o.data_len,
        "dss_has_checksum": bool(o.dss_has_checksum),
        "dss_checksum": o.dss_checksum,
        "add_addr_id": o.add_addr_id,
        "add_addr_echo": bool(o.add_addr_echo),
        "add_addr_ipv6": bool(o.add_addr_ipv6),
        "add_addr_address": bytes(o.add_addr_address[:16 if o.add_addr_ipv6 else 4])
        if o.suboptions & mptcpopt.SUBOPT_ADD_ADDR else b"",
        "add_addr_has_port": bool(o.add_addr_has_port),
        "add_addr_port": o.add_addr_port,
        "add_addr_hmac": o.add_addr_hmac,
        "remove_ids": bytes(o.remove_ids[:o.remove_count]),
        "prio_backup": bool(o.prio_backup),
        "fail_dsn": o.fail_dsn,
        "fastclose_receiver_key": o.fastclose_receiver_key,
        "tcprst_flags": o.tcprst_flags,
        "tcprst_reason": o.tcprst_reason,
    }


def parse_options(const unsigned char[::1] area not None) -> dict:
    """The flat record of a TCP options area; `error` is 0 or an index into REASON_NAMES."""
    cdef mptcpopt.TcpOptions o
    cdef const unsigned char* buf = &area[0] if area.shape[0] else NULL
    with nogil:
        mptcpopt.parse_tcp_options(buf, area.shape[0], &o)
    return _as_dict(&o)


# Emitters: the same arguments as the cdef functions, minus the output buffer.
# 40 bytes is the most any option can take.

def emit_mp_capable_syn(uint8_t flags) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_capable_syn(out, flags)])


def emit_mp_capable_synack(uint8_t flags, uint64_t sender_key) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_capable_synack(out, flags, sender_key)])


def emit_mp_capable_ack(uint8_t flags, uint64_t sender_key, uint64_t receiver_key) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_capable_ack(out, flags, sender_key, receiver_key)])


def emit_mp_capable_ack_data(uint8_t flags, uint64_t sender_key, uint64_t receiver_key,
                             uint16_t data_len, bint has_checksum=False, uint16_t checksum=0) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_capable_ack_data(
        out, flags, sender_key, receiver_key, data_len, has_checksum, checksum)])


def emit_mp_join_syn(bint backup, uint8_t address_id, uint32_t token, uint32_t nonce) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_join_syn(out, backup, address_id, token, nonce)])


def emit_mp_join_synack(bint backup, uint8_t address_id, uint64_t truncated_hmac, uint32_t nonce) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_join_synack(out, backup, address_id, truncated_hmac, nonce)])


def emit_mp_join_ack(bytes hmac not None) -> bytes:
    cdef unsigned char out[40]
    # The C emitter copies MPTCPOPT_JOIN_HMAC_LEN bytes whatever the length (no assert: python -O).
    if len(hmac) != mptcpopt.MPTCPOPT_JOIN_HMAC_LEN:
        raise ValueError(f"MP_JOIN ACK carries a 160-bit HMAC (20 bytes), not {len(hmac)} bytes")
    return bytes(out[:mptcpopt.emit_mp_join_ack(out, hmac)])


def emit_dss(bint has_data_ack=False, uint64_t data_ack=0, bint data_ack_64=False,
             bint has_mapping=False, uint64_t dsn=0, bint dsn_64=False, uint32_t subflow_seq=0,
             uint16_t data_len=0, bint data_fin=False, bint has_checksum=False,
             uint16_t checksum=0) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_dss(out, has_data_ack, data_ack, data_ack_64, has_mapping, dsn,
                                        dsn_64, subflow_seq, data_len, data_fin, has_checksum, checksum)])


def dss_length(bint has_data_ack, bint data_ack_64, bint has_mapping, bint dsn_64, bint has_checksum) -> int:
    return mptcpopt.dss_length(has_data_ack, data_ack_64, has_mapping, dsn_64, has_checksum)


def emit_add_addr(uint8_t address_id, bint echo, bytes address not None, bint has_port=False,
                  uint16_t port=0, uint64_t truncated_hmac=0) -> bytes:
    cdef unsigned char out[40]
    # The C emitter reads 4 or 16 bytes whatever the length (no assert: python -O).
    if len(address) not in (4, 16):
        raise ValueError(f"an IPv4 or IPv6 address, packed (4 or 16 bytes), not {len(address)} bytes")
    return bytes(out[:mptcpopt.emit_add_addr(out, address_id, echo, len(address) == 16, address,
                                             has_port, port, truncated_hmac)])


def emit_remove_addr(bytes address_ids not None) -> bytes:
    cdef unsigned char out[40]
    cdef const unsigned char* ids = address_ids
    return bytes(out[:mptcpopt.emit_remove_addr(out, ids, len(address_ids))])


def emit_mp_prio(bint backup) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_prio(out, backup)])


def emit_mp_fail(uint64_t dsn) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_fail(out, dsn)])


def emit_mp_fastclose(uint64_t receiver_key) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_fastclose(out, receiver_key)])


def emit_mp_tcprst(uint8_t flags, uint8_t reason) -> bytes:
    cdef unsigned char out[40]
    return bytes(out[:mptcpopt.emit_mp_tcprst(out, flags, reason)])
