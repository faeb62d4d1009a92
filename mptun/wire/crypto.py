"""MPTCP v1 key material: tokens, initial data sequence numbers and HMACs (RFC 8684 3.1, 3.2, 3.4.1).

Keys are 64-bit integers, nonces 32-bit integers, and both enter hashes in network byte
order, as the Linux kernel does (net/mptcp/crypto.c, options.c). Pure functions over
hashlib/hmac, which are already C; no state, no I/O.
"""

import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable

KEY_LEN = 8
NONCE_LEN = 4
TRUNCATED_HMAC_LEN = 8  # MP_JOIN SYN/ACK and ADD_ADDR carry 64 bits of the HMAC
JOIN_ACK_HMAC_LEN = 20  # the MP_JOIN third ACK carries 160 bits (RFC 8684 3.2)

_KEY = struct.Struct("!Q")
_KEY_PAIR = struct.Struct("!QQ")
_NONCE_PAIR = struct.Struct("!II")
_PORT = struct.Struct("!H")


def _key_digest(key: int) -> bytes:
    return hashlib.sha256(_KEY.pack(key)).digest()


def key_token(key: int) -> int:
    """The 32-bit token naming the connection of this key: the most significant 32 bits of SHA-256(key) (RFC 8684 3.2)."""
    return int.from_bytes(_key_digest(key)[:4], "big")


def key_idsn(key: int) -> int:
    """The initial data sequence number of the key's sender: the least significant 64 bits of SHA-256(key) (RFC 8684 3.1)."""
    return int.from_bytes(_key_digest(key)[-8:], "big")


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) over bytes, the one MAC MPTCP v1 uses."""
    return hmac.new(key, msg, hashlib.sha256).digest()


def _key_hmac(first_key: int, second_key: int, msg: bytes) -> bytes:
    # RFC 8684 3.2: Key=(Key-A + Key-B) is the concatenation of the two 64-bit keys.
    return hmac_sha256(_KEY_PAIR.pack(first_key, second_key), msg)


def join_synack_hmac(server_key: int, client_key: int, server_nonce: int, client_nonce: int) -> int:
    """The 64-bit truncated HMAC of an MP_JOIN SYN/ACK (RFC 8684 3.2).

    HMAC-B = HMAC(Key=(Key-B + Key-A), Msg=(R-B + R-A)), leftmost 64 bits, where B is the
    host answering the join (the listener) and A the host that sent the SYN.
    """
    digest = _key_hmac(server_key, client_key, _NONCE_PAIR.pack(server_nonce, client_nonce))
    return int.from_bytes(digest[:TRUNCATED_HMAC_LEN], "big")


def join_ack_hmac(client_key: int, server_key: int, client_nonce: int, server_nonce: int) -> bytes:
    """The 160-bit HMAC of an MP_JOIN third ACK (RFC 8684 3.2).

    HMAC-A = HMAC(Key=(Key-A + Key-B), Msg=(R-A + R-B)), leftmost 160 bits, A being the
    host that sent the SYN.
    """
    digest = _key_hmac(client_key, server_key, _NONCE_PAIR.pack(client_nonce, server_nonce))
    return digest[:JOIN_ACK_HMAC_LEN]


def add_addr_hmac(
    sender_key: int,
    receiver_key: int,
    addr_id: int,
    addr: "str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address",
    port: int | None,
) -> int:
    """The 64-bit truncated HMAC of an ADD_ADDR announcing addr (RFC 8684 3.4.1).

    HMAC(Key=(sender key + receiver key), Msg=(Address ID + IP Address + Port)), the
    rightmost 64 bits. The address is 4 or 16 bytes by family; a missing port still
    enters the message as two zero octets (RFC 8684 3.4.1; Linux options.c agrees).
    """
    assert 0 <= addr_id <= 0xFF, addr_id
    assert port is None or 0 <= port <= 0xFFFF, port
    if isinstance(addr, bytes):
        assert len(addr) in (4, 16), addr
        packed = addr
    else:
        packed = ipaddress.ip_address(addr).packed
    msg = bytes((addr_id,)) + packed + _PORT.pack(port or 0)
    return int.from_bytes(_key_hmac(sender_key, receiver_key, msg)[-TRUNCATED_HMAC_LEN:], "big")


def new_key(randbytes: Callable[[int], bytes]) -> int:
    """A fresh 64-bit key drawn from randbytes (e.g. os.urandom) whose token is not zero.

    The caller supplies the randomness so core code stays deterministic under test. Token
    0 is skipped because Linux refuses it as a connection's token (token.c,
    __token_bucket_busy); the caller must still check the token is unique among its own
    connections (RFC 8684 3.1).
    """
    while True:
        key = int.from_bytes(randbytes(KEY_LEN), "big")
        if key_token(key) != 0:
            return key
