# cython: language_level=3
"""C-level MPTCP (RFC 8684) + plain TCP option codec for the per-packet loops.

parse_tcp_options() reads a whole TCP options area into one flat TcpOptions
record (a `suboptions` bitmask like Linux's mptcp_options_received) and never
reads past `length`; malformed options set a REASON_* code, never raise.
The emit_* functions write one option into a caller buffer (no padding) and
return its length, or 0 when the arguments describe no valid option.

An inline header (docs/datapath.md, "Build notes"): everything is `cdef inline`,
cimported by the short name (`cimport mptcpopt`); a module that cimports it compiles
its own copy and imports nothing at run time. Keep this contract stable:
src/fastpath/rewrite.pxd uses it.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from packet cimport load_be16, load_be32, load_be64, store_be16, store_be32, store_be64

# Why an option was not accepted. The same codes, in the same order, are
# mptun.wire.mptcp.Reason and REASON_NAMES of both mptcpopt twins.
cdef enum:
    REASON_OK = 0
    REASON_TRUNCATED = 1                 # length byte or body runs past the options area
    REASON_BAD_OPTION_LENGTH = 2         # option length byte < 2: the rest cannot be walked
    REASON_BAD_TCP_OPTION_LENGTH = 3     # MSS/WS/SACK-permitted/SACK/timestamps of a wrong length
    REASON_BAD_SUBOPTION_LENGTH = 4      # MPTCP length not valid for its subtype (or its E flag)
    REASON_UNKNOWN_SUBTYPE = 5           # MPTCP subtype 9..15
    REASON_BAD_VERSION = 6               # MP_CAPABLE version other than 1 (on a SYN: below 1)
    REASON_DUPLICATE_SUBOPTION = 7       # a second well-formed suboption of a subtype already seen
    REASON_UNSUPPORTED_MPC_FLAGS = 8     # MP_CAPABLE with B set or H clear (RFC 8684 3.1)
    REASON_DATA_FIN_WITHOUT_MAPPING = 9  # DSS with F but no M (RFC 8684 3.3.3)
    REASON_OPTIONS_TOO_LONG = 10         # area longer than 40 bytes; only the first 40 are read
    REASON_COUNT = 11

# TCP option kinds and lengths (RFC 9293, RFC 7323, RFC 2018; kind 30 = MPTCP)
cdef enum:
    TCPOPT_EOL = 0
    TCPOPT_NOP = 1
    TCPOPT_MSS = 2
    TCPOPT_WSCALE = 3
    TCPOPT_SACK_PERMITTED = 4
    TCPOPT_SACK = 5
    TCPOPT_TIMESTAMPS = 8
    TCPOPT_MPTCP = 30
    TCPOLEN_MSS = 4
    TCPOLEN_WSCALE = 3
    TCPOLEN_SACK_PERMITTED = 2
    TCPOLEN_SACK_BASE = 2
    TCPOLEN_SACK_BLOCK = 8
    TCPOLEN_TIMESTAMPS = 10
    TCP_OPTIONS_MAX_LEN = 40

# TcpOptions.present: which plain options were seen (first one of each kind is recorded)
cdef enum:
    HAS_MSS = 0x01
    HAS_WSCALE = 0x02
    HAS_SACK_PERMITTED = 0x04
    HAS_SACK = 0x08
    HAS_TIMESTAMPS = 0x10
    HAS_MPTCP = 0x20                     # any kind-30 option, well-formed or not
    HAS_UNKNOWN = 0x40                   # any other kind (kept in place, not interpreted)
    HAS_EOL = 0x80

# MPTCP subtypes (RFC 8684 section 7.2 registry) and their TcpOptions.suboptions bits
cdef enum:
    SUBTYPE_MP_CAPABLE = 0
    SUBTYPE_MP_JOIN = 1
    SUBTYPE_DSS = 2
    SUBTYPE_ADD_ADDR = 3
    SUBTYPE_REMOVE_ADDR = 4
    SUBTYPE_MP_PRIO = 5
    SUBTYPE_MP_FAIL = 6
    SUBTYPE_MP_FASTCLOSE = 7
    SUBTYPE_MP_TCPRST = 8
    SUBTYPE_NONE = 0xFF                  # option too short to carry a subtype
    SUBOPT_MP_CAPABLE = 1 << 0
    SUBOPT_MP_JOIN = 1 << 1
    SUBOPT_DSS = 1 << 2
    SUBOPT_ADD_ADDR = 1 << 3
    SUBOPT_REMOVE_ADDR = 1 << 4
    SUBOPT_MP_PRIO = 1 << 5
    SUBOPT_MP_FAIL = 1 << 6
    SUBOPT_MP_FASTCLOSE = 1 << 7
    SUBOPT_MP_TCPRST = 1 << 8

# MPTCP option lengths, kind and length bytes included
cdef enum:
    MPTCP_VERSION = 1
    MPTCPOPT_MPC_SYN_LEN = 4
    MPTCPOPT_MPC_SYNACK_LEN = 12
    MPTCPOPT_MPC_ACK_LEN = 20
    MPTCPOPT_MPC_ACK_DATA_LEN = 22
    MPTCPOPT_MPC_ACK_DATA_CSUM_LEN = 24
    MPTCPOPT_JOIN_SYN_LEN = 12
    MPTCPOPT_JOIN_SYNACK_LEN = 16
    MPTCPOPT_JOIN_ACK_LEN = 24
    MPTCPOPT_JOIN_HMAC_LEN = 20          # the third ACK's 160-bit HMAC
    MPTCPOPT_DSS_BASE_LEN = 4
    MPTCPOPT_DSS_ACK32_LEN = 4
    MPTCPOPT_DSS_ACK64_LEN = 8
    MPTCPOPT_DSS_MAP32_LEN = 10          # DSN 4 + subflow seq 4 + data-level length 2
    MPTCPOPT_DSS_MAP64_LEN = 14
    MPTCPOPT_DSS_CSUM_LEN = 2
    MPTCPOPT_DSS_MAX_LEN = 28            # 64-bit DATA_ACK, 64-bit mapping, checksum
    MPTCPOPT_ADD_ADDR_V4_LEN = 8         # echo form; + 8 truncated HMAC when E = 0
    MPTCPOPT_ADD_ADDR_V6_LEN = 20
    MPTCPOPT_ADD_ADDR_PORT_LEN = 2
    MPTCPOPT_ADD_ADDR_HMAC_LEN = 8
    MPTCPOPT_ADD_ADDR_MAX_LEN = 30
    MPTCPOPT_REMOVE_ADDR_BASE_LEN = 3    # + 1 per address ID
    MPTCPOPT_REMOVE_ADDR_MAX_IDS = 37    # what fits in 40 option bytes
    MPTCPOPT_MP_PRIO_LEN = 3
    MPTCPOPT_MP_FAIL_LEN = 12
    MPTCPOPT_MP_FASTCLOSE_LEN = 12
    MPTCPOPT_MP_TCPRST_LEN = 4
    MPTCPOPT_MAX_PER_SEGMENT = 20        # 40 bytes / 2: every kind-30 option gets a slot

# Flag bits, as on the wire
cdef enum:
    MPC_CHECKSUM_REQUIRED = 0x80         # A
    MPC_EXTENSIBILITY = 0x40             # B
    MPC_NO_MORE_SUBFLOWS = 0x20          # C: do not open subflows to this source address
    MPC_CRYPTO_MASK = 0x1F               # D..H
    MPC_HMAC_SHA256 = 0x01               # H
    MPC_FORM_NONE = 0
    MPC_FORM_SYN = 1                     # 4 bytes
    MPC_FORM_SYNACK = 2                  # 12: sender's key
    MPC_FORM_ACK = 3                     # 20: both keys
    MPC_FORM_ACK_DATA = 4                # 22/24: both keys, data-level length [, checksum]
    JOIN_BACKUP = 0x01
    JOIN_FORM_NONE = 0
    JOIN_FORM_SYN = 1
    JOIN_FORM_SYNACK = 2
    JOIN_FORM_ACK = 3
    DSS_DATA_ACK = 0x01                  # A
    DSS_DATA_ACK_64 = 0x02               # a
    DSS_MAPPING = 0x04                   # M
    DSS_DSN_64 = 0x08                    # m
    DSS_DATA_FIN = 0x10                  # F
    DSS_FLAG_MASK = 0x1F
    ADD_ADDR_ECHO = 0x01
    PRIO_BACKUP = 0x01
    TCPRST_TRANSIENT = 0x01              # T; U V W are 0x08 0x04 0x02


cdef struct TcpOptions:
    # first malformed option: reason, offset; and how many options were malformed
    int error
    int error_offset
    int malformed_count
    # offset where parsing stopped: the EOL, the option that could not be walked, or the area's end
    int end
    # plain TCP options (first of each kind)
    unsigned int present                 # HAS_* bits
    uint16_t mss
    uint8_t mss_offset                   # offsets are of the kind byte, within the options area
    uint8_t wscale
    uint8_t wscale_offset
    uint8_t sack_count                   # blocks in the first SACK option
    uint8_t sack_offset                  # blocks start at sack_offset + 2, 8 bytes each
    uint8_t ts_offset
    uint32_t tsval
    uint32_t tsecr
    uint8_t unknown_count
    # every kind-30 option in order, well-formed or not, so a rewriter can strip or replace it
    uint8_t mptcp_count
    uint8_t mptcp_offset[MPTCPOPT_MAX_PER_SEGMENT]
    uint8_t mptcp_len[MPTCPOPT_MAX_PER_SEGMENT]
    uint8_t mptcp_subtype[MPTCPOPT_MAX_PER_SEGMENT]    # SUBTYPE_NONE if too short to carry one
    # one SUBOPT_* bit per well-formed suboption; the fields below are set only for those
    unsigned int suboptions
    # MP_CAPABLE (RFC 8684 3.1)
    uint8_t mpc_form                     # MPC_FORM_*
    uint8_t mpc_version
    uint8_t mpc_flags
    bint mpc_has_checksum
    uint64_t mpc_sender_key              # SYNACK, ACK, ACK_DATA
    uint64_t mpc_receiver_key            # ACK, ACK_DATA
    uint16_t mpc_data_len                # ACK_DATA
    uint16_t mpc_checksum
    # MP_JOIN (3.2)
    uint8_t join_form                    # JOIN_FORM_*
    bint join_backup                     # SYN, SYNACK
    uint8_t join_address_id              # SYN, SYNACK
    uint32_t join_token                  # SYN: receiver's token
    uint32_t join_nonce                  # SYN, SYNACK: sender's random number
    uint64_t join_truncated_hmac         # SYNACK
    uint8_t join_hmac[MPTCPOPT_JOIN_HMAC_LEN]          # ACK
    # DSS (3.3); 32-bit fields are as on the wire, not expanded to 64 bits
    uint8_t dss_flags                    # DSS_* bits; a only with A, m only with M
    uint64_t data_ack
    uint64_t dsn
    uint32_t subflow_seq
    uint16_t data_len
    bint dss_has_checksum
    uint16_t dss_checksum
    # ADD_ADDR (3.4.1)
    uint8_t add_addr_id
    bint add_addr_echo
    bint add_addr_ipv6
    uint8_t add_addr_address[16]         # first 4 bytes for IPv4
    bint add_addr_has_port
    uint16_t add_addr_port
    uint64_t add_addr_hmac               # present exactly when not echo
    # REMOVE_ADDR (3.4.2)
    uint8_t remove_count
    uint8_t remove_ids[MPTCPOPT_REMOVE_ADDR_MAX_IDS]
    # MP_PRIO (3.3.8)
    bint prio_backup
    # MP_FAIL (3.7)
    uint64_t fail_dsn
    # MP_FASTCLOSE (3.5)
    uint64_t fastclose_receiver_key
    # MP_TCPRST (3.6)
    uint8_t tcprst_flags                 # U V W T
    uint8_t tcprst_reason


cdef inline void _record_malformed(TcpOptions* out, int reason, Py_ssize_t offset) noexcept nogil:
    if out.error == REASON_OK:
        out.error = reason
        out.error_offset = <int>offset
    out.malformed_count += 1


cdef inline bint _claim(TcpOptions* out, unsigned int suboption) noexcept nogil:
    """Take a well-formed suboption (its SUBOPT_* bit); False if one of its subtype already was:
    a segment carries at most one of each, the first counts."""
    if out.suboptions & suboption:
        return False
    out.suboptions |= suboption
    return True


cdef inline int _admit(TcpOptions* out, unsigned int suboption, bint length_ok) noexcept nogil:
    """Verdict on a suboption whose value needs no check but its length: REASON_OK (and taken,
    the caller fills in its fields), REASON_BAD_SUBOPTION_LENGTH or REASON_DUPLICATE_SUBOPTION."""
    if not length_ok:
        return REASON_BAD_SUBOPTION_LENGTH
    if not _claim(out, suboption):
        return REASON_DUPLICATE_SUBOPTION
    return REASON_OK


cdef inline Py_ssize_t dss_length(bint has_data_ack, bint data_ack_64, bint has_mapping,
                                  bint dsn_64, bint has_checksum) noexcept nogil:
    """Bytes of a DSS option with these parts (the checksum only counts with a mapping)."""
    cdef Py_ssize_t n = MPTCPOPT_DSS_BASE_LEN
    if has_data_ack:
        n += MPTCPOPT_DSS_ACK64_LEN if data_ack_64 else MPTCPOPT_DSS_ACK32_LEN
    if has_mapping:
        n += MPTCPOPT_DSS_MAP64_LEN if dsn_64 else MPTCPOPT_DSS_MAP32_LEN
        if has_checksum:
            n += MPTCPOPT_DSS_CSUM_LEN
    return n


cdef inline uint64_t _load_wide(const unsigned char* p, Py_ssize_t* pos, bint wide) noexcept nogil:
    """A DSS DATA_ACK or DSN at p + *pos: 8 bytes if wide, else 4 (as on the wire, not expanded).
    Advances *pos past it."""
    cdef Py_ssize_t at = pos[0]
    if wide:
        pos[0] = at + 8
        return load_be64(p + at)
    pos[0] = at + 4
    return load_be32(p + at)


cdef inline void _store_wide(unsigned char* p, Py_ssize_t* pos, uint64_t value, bint wide) noexcept nogil:
    """_load_wide's inverse: value at p + *pos, 8 bytes if wide, else its low 4; advances *pos."""
    if wide:
        store_be64(p + pos[0], value)
        pos[0] += 8
    else:
        store_be32(p + pos[0], <uint32_t>value)
        pos[0] += 4


cdef inline int _parse_mp_capable(const unsigned char* p, Py_ssize_t n, TcpOptions* out) noexcept nogil:
    cdef uint8_t form, version, flags
    if n == MPTCPOPT_MPC_SYN_LEN:
        form = MPC_FORM_SYN
    elif n == MPTCPOPT_MPC_SYNACK_LEN:
        form = MPC_FORM_SYNACK
    elif n == MPTCPOPT_MPC_ACK_LEN:
        form = MPC_FORM_ACK
    elif n == MPTCPOPT_MPC_ACK_DATA_LEN or n == MPTCPOPT_MPC_ACK_DATA_CSUM_LEN:
        form = MPC_FORM_ACK_DATA
    else:
        return REASON_BAD_SUBOPTION_LENGTH
    version = p[2] & 0x0F
    # RFC 8684 3.1: the initiator signals the highest version it supports and the
    # responder answers with one "equal to or lower", so any SYN version >= 1 can be
    # answered with 1; every later MP_CAPABLE must carry the version agreed (1).
    if (form == MPC_FORM_SYN and version < MPTCP_VERSION) or (form != MPC_FORM_SYN and version != MPTCP_VERSION):
        return REASON_BAD_VERSION
    flags = p[3]
    # RFC 8684 3.1: B "MUST be set to 0" (an unknown B=1 MP_CAPABLE "MUST be silently
    # ignored"), and with none of D..H usable the option "MUST be treated as invalid".
    if (flags & MPC_EXTENSIBILITY) or not (flags & MPC_HMAC_SHA256):
        return REASON_UNSUPPORTED_MPC_FLAGS
    if not _claim(out, SUBOPT_MP_CAPABLE):
        return REASON_DUPLICATE_SUBOPTION
    out.mpc_form = form
    out.mpc_version = version
    out.mpc_flags = flags
    if n >= MPTCPOPT_MPC_SYNACK_LEN:
        out.mpc_sender_key = load_be64(p + 4)
    if n >= MPTCPOPT_MPC_ACK_LEN:
        out.mpc_receiver_key = load_be64(p + 12)
    if n >= MPTCPOPT_MPC_ACK_DATA_LEN:
        out.mpc_data_len = load_be16(p + 20)
    if n == MPTCPOPT_MPC_ACK_DATA_CSUM_LEN:
        out.mpc_has_checksum = True
        out.mpc_checksum = load_be16(p + 22)
    return REASON_OK


cdef inline int _parse_mp_join(const unsigned char* p, Py_ssize_t n, TcpOptions* out) noexcept nogil:
    if n != MPTCPOPT_JOIN_SYN_LEN and n != MPTCPOPT_JOIN_SYNACK_LEN and n != MPTCPOPT_JOIN_ACK_LEN:
        return REASON_BAD_SUBOPTION_LENGTH
    if not _claim(out, SUBOPT_MP_JOIN):
        return REASON_DUPLICATE_SUBOPTION
    if n == MPTCPOPT_JOIN_SYN_LEN:
        out.join_form = JOIN_FORM_SYN
        out.join_backup = p[2] & JOIN_BACKUP
        out.join_address_id = p[3]
        out.join_token = load_be32(p + 4)
        out.join_nonce = load_be32(p + 8)
    elif n == MPTCPOPT_JOIN_SYNACK_LEN:
        out.join_form = JOIN_FORM_SYNACK
        out.join_backup = p[2] & JOIN_BACKUP
        out.join_address_id = p[3]
        out.join_truncated_hmac = load_be64(p + 4)
        out.join_nonce = load_be32(p + 12)
    else:
        out.join_form = JOIN_FORM_ACK
        memcpy(out.join_hmac, p + 4, MPTCPOPT_JOIN_HMAC_LEN)
    return REASON_OK


cdef inline int _parse_dss(const unsigned char* p, Py_ssize_t n, TcpOptions* out) noexcept nogil:
    cdef uint8_t flags
    cdef Py_ssize_t expected, pos = 4
    cdef bint has_checksum = False
    if n < MPTCPOPT_DSS_BASE_LEN:
        return REASON_BAD_SUBOPTION_LENGTH
    flags = p[3] & DSS_FLAG_MASK
    expected = dss_length(flags & DSS_DATA_ACK, flags & DSS_DATA_ACK_64,
                          flags & DSS_MAPPING, flags & DSS_DSN_64, False)
    # RFC 8684 3.3: the checksum belongs to the mapping; whether it must be there is
    # the connection's business (3.3.1), so both are accepted here.
    if (flags & DSS_MAPPING) and n == expected + MPTCPOPT_DSS_CSUM_LEN:
        has_checksum = True
    elif n != expected:
        return REASON_BAD_SUBOPTION_LENGTH
    # RFC 8684 3.3.3: a DATA_FIN is a position in the data sequence space; it only
    # exists as part of a mapping (subflow seq 0, length 1 when it has no data).
    if (flags & DSS_DATA_FIN) and not (flags & DSS_MAPPING):
        return REASON_DATA_FIN_WITHOUT_MAPPING
    if not _claim(out, SUBOPT_DSS):
        return REASON_DUPLICATE_SUBOPTION
    # a and m mean nothing without A and M: keep the record canonical
    if not flags & DSS_DATA_ACK:
        flags &= ~DSS_DATA_ACK_64
    if not flags & DSS_MAPPING:
        flags &= ~DSS_DSN_64
    out.dss_flags = flags
    if flags & DSS_DATA_ACK:
        out.data_ack = _load_wide(p, &pos, flags & DSS_DATA_ACK_64)
    if flags & DSS_MAPPING:
        out.dsn = _load_wide(p, &pos, flags & DSS_DSN_64)
        out.subflow_seq = load_be32(p + pos)
        out.data_len = load_be16(p + pos + 4)
        if has_checksum:
            out.dss_has_checksum = True
            out.dss_checksum = load_be16(p + pos + 6)
    return REASON_OK


cdef inline int _parse_add_addr(const unsigned char* p, Py_ssize_t n, TcpOptions* out) noexcept nogil:
    cdef bint echo, ipv6, has_port
    cdef Py_ssize_t base
    if n < MPTCPOPT_ADD_ADDR_V4_LEN:
        return REASON_BAD_SUBOPTION_LENGTH
    echo = p[2] & ADD_ADDR_ECHO
    # RFC 8684 3.4.1: the truncated HMAC is there exactly when E = 0, so the length
    # tells the family and the port: 8/10/20/22 (+8 with the HMAC).
    base = n if echo else n - MPTCPOPT_ADD_ADDR_HMAC_LEN
    if base == MPTCPOPT_ADD_ADDR_V4_LEN or base == MPTCPOPT_ADD_ADDR_V4_LEN + MPTCPOPT_ADD_ADDR_PORT_LEN:
        ipv6 = False
    elif base == MPTCPOPT_ADD_ADDR_V6_LEN or base == MPTCPOPT_ADD_ADDR_V6_LEN + MPTCPOPT_ADD_ADDR_PORT_LEN:
        ipv6 = True
    else:
        return REASON_BAD_SUBOPTION_LENGTH
    has_port = base == MPTCPOPT_ADD_ADDR_V4_LEN + MPTCPOPT_ADD_ADDR_PORT_LEN or \
        base == MPTCPOPT_ADD_ADDR_V6_LEN + MPTCPOPT_ADD_ADDR_PORT_LEN
    if not _claim(out, SUBOPT_ADD_ADDR):
        return REASON_DUPLICATE_SUBOPTION
    out.add_addr_echo = echo
    out.add_addr_ipv6 = ipv6
    out.add_addr_id = p[3]
    memcpy(out.add_addr_address, p + 4, 16 if ipv6 else 4)
    if has_port:
        out.add_addr_has_port = True
        out.add_addr_port = load_be16(p + (20 if ipv6 else 8))
    if not echo:
        out.add_addr_hmac = load_be64(p + base)
    return REASON_OK


cdef inline int _parse_mptcp(const unsigned char* p, Py_ssize_t n, TcpOptions* out) noexcept nogil:
    """p: an MPTCP option of n >= 3 bytes, kind byte first."""
    cdef uint8_t subtype = p[2] >> 4
    cdef int reason
    if subtype == SUBTYPE_MP_CAPABLE:
        return _parse_mp_capable(p, n, out)
    if subtype == SUBTYPE_MP_JOIN:
        return _parse_mp_join(p, n, out)
    if subtype == SUBTYPE_DSS:
        return _parse_dss(p, n, out)
    if subtype == SUBTYPE_ADD_ADDR:
        return _parse_add_addr(p, n, out)
    if subtype == SUBTYPE_REMOVE_ADDR:
        reason = _admit(out, SUBOPT_REMOVE_ADDR, MPTCPOPT_REMOVE_ADDR_BASE_LEN + 1 <= n
                        <= MPTCPOPT_REMOVE_ADDR_BASE_LEN + MPTCPOPT_REMOVE_ADDR_MAX_IDS)
        if reason == REASON_OK:
            out.remove_count = <uint8_t>(n - MPTCPOPT_REMOVE_ADDR_BASE_LEN)
            memcpy(out.remove_ids, p + 3, out.remove_count)
    elif subtype == SUBTYPE_MP_PRIO:
        reason = _admit(out, SUBOPT_MP_PRIO, n == MPTCPOPT_MP_PRIO_LEN)
        if reason == REASON_OK:
            out.prio_backup = p[2] & PRIO_BACKUP
    elif subtype == SUBTYPE_MP_FAIL:
        reason = _admit(out, SUBOPT_MP_FAIL, n == MPTCPOPT_MP_FAIL_LEN)
        if reason == REASON_OK:
            out.fail_dsn = load_be64(p + 4)
    elif subtype == SUBTYPE_MP_FASTCLOSE:
        reason = _admit(out, SUBOPT_MP_FASTCLOSE, n == MPTCPOPT_MP_FASTCLOSE_LEN)
        if reason == REASON_OK:
            out.fastclose_receiver_key = load_be64(p + 4)
    elif subtype == SUBTYPE_MP_TCPRST:
        reason = _admit(out, SUBOPT_MP_TCPRST, n == MPTCPOPT_MP_TCPRST_LEN)
        if reason == REASON_OK:
            out.tcprst_flags = p[2] & 0x0F
            out.tcprst_reason = p[3]
    else:
        reason = REASON_UNKNOWN_SUBTYPE
    return reason


cdef inline int parse_tcp_options(const unsigned char* opts, Py_ssize_t length, TcpOptions* out) noexcept nogil:
    """Fill *out from the TCP options area opts[0:length]; returns REASON_OK or the first reason (out.error)."""
    cdef Py_ssize_t i = 0, optlen
    cdef uint8_t kind, slot
    cdef int reason
    cdef const unsigned char* p
    memset(out, 0, sizeof(TcpOptions))
    if length > TCP_OPTIONS_MAX_LEN:
        _record_malformed(out, REASON_OPTIONS_TOO_LONG, TCP_OPTIONS_MAX_LEN)
        length = TCP_OPTIONS_MAX_LEN
    while i < length:
        kind = opts[i]
        if kind == TCPOPT_EOL:
            out.present |= HAS_EOL
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if length - i < 2:
            _record_malformed(out, REASON_TRUNCATED, i)
            break
        optlen = opts[i + 1]
        if optlen < 2:
            _record_malformed(out, REASON_BAD_OPTION_LENGTH, i)
            break
        if optlen > length - i:
            _record_malformed(out, REASON_TRUNCATED, i)
            break
        p = opts + i
        if kind == TCPOPT_MPTCP:
            out.present |= HAS_MPTCP
            slot = out.mptcp_count
            if slot < MPTCPOPT_MAX_PER_SEGMENT:     # always true for <= 40 bytes
                out.mptcp_offset[slot] = <uint8_t>i
                out.mptcp_len[slot] = <uint8_t>optlen
                out.mptcp_subtype[slot] = (p[2] >> 4) if optlen >= 3 else SUBTYPE_NONE
                out.mptcp_count = slot + 1
            reason = _parse_mptcp(p, optlen, out) if optlen >= 3 else REASON_BAD_SUBOPTION_LENGTH
            if reason != REASON_OK:
                _record_malformed(out, reason, i)
        elif kind == TCPOPT_MSS:
            if optlen != TCPOLEN_MSS:
                _record_malformed(out, REASON_BAD_TCP_OPTION_LENGTH, i)
            elif not out.present & HAS_MSS:
                out.present |= HAS_MSS
                out.mss = load_be16(p + 2)
                out.mss_offset = <uint8_t>i
        elif kind == TCPOPT_WSCALE:
            if optlen != TCPOLEN_WSCALE:
                _record_malformed(out, REASON_BAD_TCP_OPTION_LENGTH, i)
            elif not out.present & HAS_WSCALE:
                out.present |= HAS_WSCALE
                out.wscale = p[2]
                out.wscale_offset = <uint8_t>i
        elif kind == TCPOPT_SACK_PERMITTED:
            if optlen != TCPOLEN_SACK_PERMITTED:
                _record_malformed(out, REASON_BAD_TCP_OPTION_LENGTH, i)
            else:
                out.present |= HAS_SACK_PERMITTED
        elif kind == TCPOPT_SACK:
            if optlen < TCPOLEN_SACK_BASE + TCPOLEN_SACK_BLOCK or (optlen - TCPOLEN_SACK_BASE) % TCPOLEN_SACK_BLOCK:
                _record_malformed(out, REASON_BAD_TCP_OPTION_LENGTH, i)
            elif not out.present & HAS_SACK:
                out.present |= HAS_SACK
                out.sack_count = <uint8_t>((optlen - TCPOLEN_SACK_BASE) // TCPOLEN_SACK_BLOCK)
                out.sack_offset = <uint8_t>i
        elif kind == TCPOPT_TIMESTAMPS:
            if optlen != TCPOLEN_TIMESTAMPS:
                _record_malformed(out, REASON_BAD_TCP_OPTION_LENGTH, i)
            elif not out.present & HAS_TIMESTAMPS:
                out.present |= HAS_TIMESTAMPS
                out.tsval = load_be32(p + 2)
                out.tsecr = load_be32(p + 6)
                out.ts_offset = <uint8_t>i
        else:
            out.present |= HAS_UNKNOWN
            if out.unknown_count < 255:
                out.unknown_count += 1
        i += optlen
    out.end = <int>i
    return out.error


# ---- emitters: one option at out[0:], no padding; return its length, 0 if not a valid option

cdef inline Py_ssize_t emit_nops(unsigned char* out, Py_ssize_t count) noexcept nogil:
    memset(out, TCPOPT_NOP, count)
    return count


cdef inline Py_ssize_t _emit_head(unsigned char* out, Py_ssize_t length, uint8_t subtype, uint8_t low4) noexcept nogil:
    """The three bytes every MPTCP option starts with: kind, length, subtype << 4 | low4 (a
    flag or the version). The emitters write them last, once the length is known; returns length."""
    out[0] = TCPOPT_MPTCP
    out[1] = <uint8_t>length
    out[2] = <uint8_t>((subtype << 4) | low4)
    return length


cdef inline Py_ssize_t _emit_mpc_head(unsigned char* out, uint8_t length, uint8_t flags) noexcept nogil:
    out[3] = flags
    return _emit_head(out, length, SUBTYPE_MP_CAPABLE, MPTCP_VERSION)


cdef inline Py_ssize_t emit_mp_capable_syn(unsigned char* out, uint8_t flags) noexcept nogil:
    return _emit_mpc_head(out, MPTCPOPT_MPC_SYN_LEN, flags)


cdef inline Py_ssize_t emit_mp_capable_synack(unsigned char* out, uint8_t flags, uint64_t sender_key) noexcept nogil:
    store_be64(out + 4, sender_key)
    return _emit_mpc_head(out, MPTCPOPT_MPC_SYNACK_LEN, flags)


cdef inline Py_ssize_t emit_mp_capable_ack(unsigned char* out, uint8_t flags, uint64_t sender_key,
                                           uint64_t receiver_key) noexcept nogil:
    store_be64(out + 4, sender_key)
    store_be64(out + 12, receiver_key)
    return _emit_mpc_head(out, MPTCPOPT_MPC_ACK_LEN, flags)


cdef inline Py_ssize_t emit_mp_capable_ack_data(unsigned char* out, uint8_t flags, uint64_t sender_key,
                                                uint64_t receiver_key, uint16_t data_len,
                                                bint has_checksum, uint16_t checksum) noexcept nogil:
    store_be64(out + 4, sender_key)
    store_be64(out + 12, receiver_key)
    store_be16(out + 20, data_len)
    if has_checksum:
        store_be16(out + 22, checksum)
        return _emit_mpc_head(out, MPTCPOPT_MPC_ACK_DATA_CSUM_LEN, flags)
    return _emit_mpc_head(out, MPTCPOPT_MPC_ACK_DATA_LEN, flags)


cdef inline Py_ssize_t emit_mp_join_syn(unsigned char* out, bint backup, uint8_t address_id,
                                        uint32_t token, uint32_t nonce) noexcept nogil:
    out[3] = address_id
    store_be32(out + 4, token)
    store_be32(out + 8, nonce)
    return _emit_head(out, MPTCPOPT_JOIN_SYN_LEN, SUBTYPE_MP_JOIN, JOIN_BACKUP if backup else 0)


cdef inline Py_ssize_t emit_mp_join_synack(unsigned char* out, bint backup, uint8_t address_id,
                                           uint64_t truncated_hmac, uint32_t nonce) noexcept nogil:
    out[3] = address_id
    store_be64(out + 4, truncated_hmac)
    store_be32(out + 12, nonce)
    return _emit_head(out, MPTCPOPT_JOIN_SYNACK_LEN, SUBTYPE_MP_JOIN, JOIN_BACKUP if backup else 0)


cdef inline Py_ssize_t emit_mp_join_ack(unsigned char* out, const unsigned char* hmac) noexcept nogil:
    """hmac: the 20 bytes (160 bits) of the sender's HMAC."""
    out[3] = 0
    memcpy(out + 4, hmac, MPTCPOPT_JOIN_HMAC_LEN)
    return _emit_head(out, MPTCPOPT_JOIN_ACK_LEN, SUBTYPE_MP_JOIN, 0)


cdef inline Py_ssize_t emit_dss(unsigned char* out, bint has_data_ack, uint64_t data_ack, bint data_ack_64,
                                bint has_mapping, uint64_t dsn, bint dsn_64, uint32_t subflow_seq,
                                uint16_t data_len, bint data_fin, bint has_checksum,
                                uint16_t checksum) noexcept nogil:
    """A DSS of at most MPTCPOPT_DSS_MAX_LEN bytes; 32-bit forms write the low 32 bits.

    has_checksum only counts with a mapping; DATA_FIN without a mapping returns 0
    (RFC 8684 3.3.3: a DATA_FIN is part of a mapping).
    """
    cdef Py_ssize_t pos = 4
    cdef uint8_t flags = 0
    if data_fin and not has_mapping:
        return 0
    if has_data_ack:
        flags |= DSS_DATA_ACK | (DSS_DATA_ACK_64 if data_ack_64 else 0)
        _store_wide(out, &pos, data_ack, data_ack_64)
    if has_mapping:
        flags |= DSS_MAPPING | (DSS_DATA_FIN if data_fin else 0) | (DSS_DSN_64 if dsn_64 else 0)
        _store_wide(out, &pos, dsn, dsn_64)
        store_be32(out + pos, subflow_seq)
        store_be16(out + pos + 4, data_len)
        pos += 6
        if has_checksum:
            store_be16(out + pos, checksum)
            pos += 2
    out[3] = flags
    return _emit_head(out, pos, SUBTYPE_DSS, 0)


cdef inline Py_ssize_t emit_add_addr(unsigned char* out, uint8_t address_id, bint echo, bint ipv6,
                                     const unsigned char* address, bint has_port, uint16_t port,
                                     uint64_t truncated_hmac) noexcept nogil:
    """address: 4 or 16 bytes; the truncated HMAC is written exactly when not echo (RFC 8684 3.4.1)."""
    cdef Py_ssize_t pos = 4
    cdef Py_ssize_t addr_len = 16 if ipv6 else 4
    memcpy(out + pos, address, addr_len)
    pos += addr_len
    if has_port:
        store_be16(out + pos, port)
        pos += 2
    if not echo:
        store_be64(out + pos, truncated_hmac)
        pos += 8
    out[3] = address_id
    return _emit_head(out, pos, SUBTYPE_ADD_ADDR, ADD_ADDR_ECHO if echo else 0)


cdef inline Py_ssize_t emit_remove_addr(unsigned char* out, const unsigned char* address_ids,
                                        Py_ssize_t count) noexcept nogil:
    """count: 1..MPTCPOPT_REMOVE_ADDR_MAX_IDS, else 0 is returned and nothing written."""
    if count < 1 or count > MPTCPOPT_REMOVE_ADDR_MAX_IDS:
        return 0
    memcpy(out + 3, address_ids, count)
    return _emit_head(out, MPTCPOPT_REMOVE_ADDR_BASE_LEN + count, SUBTYPE_REMOVE_ADDR, 0)


cdef inline Py_ssize_t emit_mp_prio(unsigned char* out, bint backup) noexcept nogil:
    return _emit_head(out, MPTCPOPT_MP_PRIO_LEN, SUBTYPE_MP_PRIO, PRIO_BACKUP if backup else 0)


cdef inline Py_ssize_t emit_mp_fail(unsigned char* out, uint64_t dsn) noexcept nogil:
    out[3] = 0
    store_be64(out + 4, dsn)
    return _emit_head(out, MPTCPOPT_MP_FAIL_LEN, SUBTYPE_MP_FAIL, 0)


cdef inline Py_ssize_t emit_mp_fastclose(unsigned char* out, uint64_t receiver_key) noexcept nogil:
    out[3] = 0
    store_be64(out + 4, receiver_key)
    return _emit_head(out, MPTCPOPT_MP_FASTCLOSE_LEN, SUBTYPE_MP_FASTCLOSE, 0)


cdef inline Py_ssize_t emit_mp_tcprst(unsigned char* out, uint8_t flags, uint8_t reason) noexcept nogil:
    """flags: U V W T in the low 4 bits (TCPRST_TRANSIENT = T)."""
    out[3] = reason
    return _emit_head(out, MPTCPOPT_MP_TCPRST_LEN, SUBTYPE_MP_TCPRST, flags & 0x0F)
