"""MPTCP key material (mptun.wire.crypto) against vectors from independent sources.

Sources: RFC 4231 (HMAC-SHA256), the Linux kernel's own KUnit vectors for its MPTCP HMAC
(net/mptcp/crypto_test.c), values read back from a live Linux 6.18 MPTCP listener
(tests/netns/test_kernel_handshake.py proves the same against the running kernel), and
derivations by hand from hashlib following the RFC 8684 text.
"""

import hashlib
import hmac
import ipaddress
import itertools

import pytest

from mptun.wire import crypto


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- hmac_sha256 ------------------------------------------------------------------------

def test_hmac_sha256_rfc4231_test_case_2():
    assert crypto.hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


# net/mptcp/crypto_test.c: key1 || key2 and nonce1 || nonce2 are ASCII strings read as
# big-endian integers; the expected value is the full 256-bit HMAC.
LINUX_KUNIT_VECTORS = [
    (b"0b0b0b0b0b0b0b0b", b"48692054",
     "8385e24fb4235ac37556b6b886db106284a1da671699f46db1f235ec622dcafa"),
    (b"aaaaaaaaaaaaaaaa", b"dddddddd",
     "2c5e219164ff1dca1c4a92318d847bb6b9d44492984e1eb71aff9022f71046e9"),
    (b"0102030405060708", b"cdcdcdcd",
     "e73b9ba9969969cefb04aa0d6df18ec2fcc075b6f23b4d8c4da736a5dbbc6e7d"),
]


@pytest.mark.parametrize("key, msg, full_hmac", LINUX_KUNIT_VECTORS)
def test_hmac_sha256_linux_kunit_vectors(key, msg, full_hmac):
    assert crypto.hmac_sha256(key, msg).hex() == full_hmac


# --- MP_JOIN HMACs (RFC 8684 3.2) ----------------------------------------------------------

def _split_kunit(key: bytes, msg: bytes):
    key1, key2 = int.from_bytes(key[:8], "big"), int.from_bytes(key[8:], "big")
    nonce1, nonce2 = int.from_bytes(msg[:4], "big"), int.from_bytes(msg[4:], "big")
    return key1, key2, nonce1, nonce2


@pytest.mark.parametrize("key, msg, full_hmac", LINUX_KUNIT_VECTORS)
def test_join_synack_hmac_is_leftmost_64_bits_of_linux_vector(key, msg, full_hmac):
    # Linux computes the SYN/ACK HMAC as mptcp_crypto_hmac_sha(local key, remote key,
    # local nonce || remote nonce): the listener's values first.
    server_key, client_key, server_nonce, client_nonce = _split_kunit(key, msg)
    got = crypto.join_synack_hmac(server_key, client_key, server_nonce, client_nonce)
    assert got == int(full_hmac[:16], 16)


@pytest.mark.parametrize("key, msg, full_hmac", LINUX_KUNIT_VECTORS)
def test_join_ack_hmac_is_leftmost_160_bits_of_linux_vector(key, msg, full_hmac):
    client_key, server_key, client_nonce, server_nonce = _split_kunit(key, msg)
    got = crypto.join_ack_hmac(client_key, server_key, client_nonce, server_nonce)
    assert got.hex() == full_hmac[:40]
    assert len(got) == crypto.JOIN_ACK_HMAC_LEN == 20


def test_join_synack_hmac_matches_one_linux_sent():
    # From a Linux 6.18 listener's MP_JOIN SYN/ACK (tests/netns/test_kernel_handshake.py).
    server_key, client_key = 0x34156CE58EF9F3F8, 0x5CC2FF02BF57BD61
    server_nonce, client_nonce = 0x9BB9A38D, 0xF2864C09
    assert crypto.join_synack_hmac(server_key, client_key, server_nonce, client_nonce) == (
        0xD87CBECC96852335)


def test_join_hmacs_by_hand_from_rfc_text():
    key_a, key_b = 0x0123456789ABCDEF, 0xFEDCBA9876543210  # A sends the SYN, B answers
    r_a, r_b = 0xA1A2A3A4, 0xB1B2B3B4
    hmac_b = hmac.new(key_b.to_bytes(8, "big") + key_a.to_bytes(8, "big"),
                      r_b.to_bytes(4, "big") + r_a.to_bytes(4, "big"), hashlib.sha256).digest()
    hmac_a = hmac.new(key_a.to_bytes(8, "big") + key_b.to_bytes(8, "big"),
                      r_a.to_bytes(4, "big") + r_b.to_bytes(4, "big"), hashlib.sha256).digest()
    assert crypto.join_synack_hmac(key_b, key_a, r_b, r_a) == int.from_bytes(hmac_b[:8], "big")
    assert crypto.join_ack_hmac(key_a, key_b, r_a, r_b) == hmac_a[:20]


def test_join_hmacs_depend_on_key_and_nonce_order():
    k1, k2, n1, n2 = 1, 2, 3, 4
    assert crypto.join_synack_hmac(k1, k2, n1, n2) != crypto.join_synack_hmac(k2, k1, n1, n2)
    assert crypto.join_synack_hmac(k1, k2, n1, n2) != crypto.join_synack_hmac(k1, k2, n2, n1)
    assert crypto.join_ack_hmac(k1, k2, n1, n2) != crypto.join_ack_hmac(k2, k1, n2, n1)


# --- tokens and IDSNs (RFC 8684 3.1, 3.2) ----------------------------------------------------

# Computed by Linux 6.18 in runs of tests/netns/test_kernel_handshake.py: for its own key,
# the token (MPTCP_INFO mptcpi_token) and IDSN (mptcpi_write_seq - 1); for our key, the
# IDSN it derived (mptcpi_rcv_nxt - 1).
KERNEL_TOKENS = [(0x8BCAFF47587A54CF, 0x1F7ABF38), (0x42B61613A3DD8739, 0xF4901A0B)]
KERNEL_IDSNS = [
    (0x8BCAFF47587A54CF, 0xE65F1FEEBADAE183),
    (0xF11FF7C0BBBE2039, 0x3ADC389C9A26A3B3),
    (0x42B61613A3DD8739, 0x5DB5A0347527A137),
    (0x1FF279DE6998F768, 0x1381D1168B3F9912),
]


@pytest.mark.parametrize("key", [0, 1, 0x0123456789ABCDEF, 0xFFFFFFFFFFFFFFFF, 1 << 63])
def test_token_and_idsn_by_hand(key):
    digest = sha256(key.to_bytes(8, "big"))
    assert crypto.key_token(key) == int.from_bytes(digest[:4], "big")
    assert crypto.key_idsn(key) == int.from_bytes(digest[24:], "big")


def test_token_of_key_zero_literal():
    # SHA-256 of eight zero bytes, computed once by `printf '\0%.0s' {1..8} | sha256sum`.
    digest = "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
    assert crypto.key_token(0) == int(digest[:8], 16)
    assert crypto.key_idsn(0) == int(digest[-16:], 16)


@pytest.mark.parametrize("key, token", KERNEL_TOKENS)
def test_token_matches_the_kernel(key, token):
    assert crypto.key_token(key) == token


@pytest.mark.parametrize("key, idsn", KERNEL_IDSNS)
def test_idsn_matches_the_kernel(key, idsn):
    assert crypto.key_idsn(key) == idsn


def test_token_is_32_bits_and_idsn_64_bits():
    for key in (3, 1 << 40, (1 << 64) - 2):
        assert 0 <= crypto.key_token(key) < 1 << 32
        assert 0 <= crypto.key_idsn(key) < 1 << 64


# --- ADD_ADDR HMAC (RFC 8684 3.4.1) ------------------------------------------------------------

def _add_addr_by_hand(key_s: int, key_r: int, addr_id: int, packed: bytes, port: int) -> int:
    msg = bytes([addr_id]) + packed + port.to_bytes(2, "big")
    digest = hmac.new(key_s.to_bytes(8, "big") + key_r.to_bytes(8, "big"), msg,
                      hashlib.sha256).digest()
    return int.from_bytes(digest[-8:], "big")  # the rightmost 64 bits


@pytest.mark.parametrize("addr, port", list(itertools.product(
    ["198.18.250.3", "2001:2::7"], [None, 0, 8080, 65535])))
def test_add_addr_hmac_by_hand(addr, port):
    key_s, key_r = 0x1122334455667788, 0x99AABBCCDDEEFF00
    packed = ipaddress.ip_address(addr).packed
    want = _add_addr_by_hand(key_s, key_r, 5, packed, port or 0)
    assert crypto.add_addr_hmac(key_s, key_r, 5, addr, port) == want
    assert crypto.add_addr_hmac(key_s, key_r, 5, packed, port) == want
    assert crypto.add_addr_hmac(key_s, key_r, 5, ipaddress.ip_address(addr), port) == want


@pytest.mark.parametrize("sender_key, receiver_key, port, truncated_hmac", [
    (0x38E2AEFED3592385, 0x5E5ED834BD5BAE69, None, 0x7E4F28D5609C1421),
    (0xF8752FA957596719, 0x71B2F4FE89CE32DF, 18099, 0x4DB3F5B5B1F8C1AF),
])
def test_add_addr_hmac_matches_ones_linux_sent(sender_key, receiver_key, port, truncated_hmac):
    # ADD_ADDR id 5 for 198.18.250.3 from a Linux 6.18 listener (test_kernel_handshake.py).
    assert crypto.add_addr_hmac(sender_key, receiver_key, 5, "198.18.250.3", port) == truncated_hmac


def test_add_addr_hmac_missing_port_counts_as_zero_octets():
    # RFC 8684 3.4.1: without a port the message still carries two zero octets.
    args = (1, 2, 9, "198.18.250.3")
    assert crypto.add_addr_hmac(*args, None) == crypto.add_addr_hmac(*args, 0)
    assert crypto.add_addr_hmac(*args, None) != crypto.add_addr_hmac(*args, 1)


def test_add_addr_hmac_uses_sender_key_first():
    assert (crypto.add_addr_hmac(1, 2, 1, "198.18.250.3", None)
            != crypto.add_addr_hmac(2, 1, 1, "198.18.250.3", None))


def test_add_addr_hmac_covers_address_id_and_family():
    base = crypto.add_addr_hmac(1, 2, 1, "198.18.250.3", None)
    assert base != crypto.add_addr_hmac(1, 2, 2, "198.18.250.3", None)
    assert base != crypto.add_addr_hmac(1, 2, 1, "::ffff:198.18.250.3", None)


# --- new_key ------------------------------------------------------------------------------------

def test_new_key_reads_eight_bytes_big_endian():
    assert crypto.new_key(lambda n: bytes(range(1, n + 1))) == 0x0102030405060708


def test_new_key_skips_a_key_whose_token_is_zero(monkeypatch):
    real_token = crypto.key_token
    monkeypatch.setattr(crypto, "key_token", lambda key: 0 if key == 1 else real_token(key))
    draws = iter([(1).to_bytes(8, "big"), (2).to_bytes(8, "big")])
    assert crypto.new_key(lambda n: next(draws)) == 2


def test_new_key_from_os_urandom_has_nonzero_token():
    import os

    key = crypto.new_key(os.urandom)
    assert 0 <= key < 1 << 64
    assert crypto.key_token(key) != 0
