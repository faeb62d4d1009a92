"""Connection, sans I/O, read as a script: "the kernel sends X on the subflow, mptun must add Y;
the peer sends Z, mptun must record W". Packets are reduced to the fields the datapath hands over;
options are built with mptun.wire's value types and parsed back with the datapath's parser.
"""

import pytest

from mptun import impl
from mptun.core.connection import Connection, ConnState, Mode
from mptun.core.send import CHUNK_MAX
from mptun.core.events import Closed, ControlSegment
from mptun.core.mib import Counters
from mptun.core.seqspace import M64
from mptun.wire.tcpip import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from mptun.wire import crypto
from mptun.wire import mptcp as w
from mptun.wire.tcpip import Timestamps, WindowScale

mo = impl.load("mptcpopt")

OUR_KEY = 0x1111222233334444
PEER_KEY = 0x5555666677778888
OUR_ISN = 1_000_000
PEER_ISN = 4_000_000_000          # the peer's subflow sequence wraps during these tests
PEER_IDSN = crypto.key_idsn(PEER_KEY)
TS = Timestamps(7, 9).emit()


def rec(*opts) -> dict:
    area = b"".join(o.emit() for o in opts)
    area += b"\x01" * (-len(area) % 4)
    return mo.parse_options(area)


def parsed(options: bytes) -> dict:
    return mo.parse_options(options + b"\x01" * (-len(options) % 4))


ABORTED, FALLBACK, MPTCP = ConnState.ABORTED, Mode.FALLBACK, Mode.MPTCP


def new_conn(**kw) -> tuple[Connection, object]:
    conn = Connection(1, OUR_KEY, 0.0, Counters(), **kw)
    conn.start(0.0)
    sf = conn.subflow_opened(0, 61440)
    return conn, sf


def connected(conn, sf):
    """The subflow's socket connected and the app's leg was accepted (as the edge reports them)."""
    conn.subflow_connected(sf, 0.0)
    conn.on_app_accepted()
    conn.events()


def next_chunk(conn, sf):
    """What the connection gives sf's socket next, or None."""
    w = conn.next_write()
    if w is None:
        return None
    assert w[0] is sf
    return w[1]


def write_chunk(conn, sf, n=None):
    chunk = next_chunk(conn, sf)
    conn.written(sf, len(chunk) if n is None else n)
    return chunk


def control(conn, now):
    """The pure ACKs mptun sends itself at now."""
    conn.poll(now)
    return [e for e in conn.events() if isinstance(e, ControlSegment)]


def handshake(conn, sf, peer_mpc=True, window=65535, wscale=7, peer_flags=w.MPC_HMAC_SHA256):
    syn_opts = conn.outgoing(sf, OUR_ISN, 0, TCP_SYN, 0, 64240, b"")
    opts = [WindowScale(wscale)]
    if peer_mpc:
        opts.append(w.MpCapable.synack(PEER_KEY, peer_flags))
    assert conn.incoming(sf, PEER_ISN, OUR_ISN + 1, TCP_SYN | TCP_ACK, 0, window, rec(*opts))
    connected(conn, sf)
    return syn_opts


def peer_dss(conn, sf, data_ack=None, mapping=None, payload_len=0, window=1000, fin=False, seq=None, ack=None):
    """The peer's segment with a DSS: mapping = (dsn, ssn, length)."""
    kw = {}
    if data_ack is not None:
        kw["data_ack"] = data_ack & M64
    if mapping is not None:
        dsn, ssn, length = mapping
        kw.update(dsn=dsn & M64, subflow_seq=ssn, data_len=length, data_fin=fin)
    seq = PEER_ISN + 1 if seq is None else seq
    ack = OUR_ISN + 1 if ack is None else ack
    return conn.incoming(sf, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, TCP_ACK, payload_len, window, rec(w.Dss(**kw)))


# ---------------------------------------------------------------- handshake and fallback

def test_syn_carries_mp_capable_v1_with_hmac_sha256():
    conn, sf = new_conn()
    o = parsed(conn.outgoing(sf, OUR_ISN, 0, TCP_SYN, 0, 64240, b""))
    assert o["mpc_form"] == 1 and o["mpc_version"] == 1
    assert o["mpc_flags"] == w.MPC_HMAC_SHA256
    assert sf.our_isn == OUR_ISN


def test_synack_with_mp_capable_makes_it_mptcp():
    conn, sf = new_conn()
    handshake(conn, sf)
    assert conn.mode == MPTCP and conn.peer_key == PEER_KEY
    assert sf.peer_isn == PEER_ISN and sf.peer_wscale == 7
    assert conn.counters["mptcp_connections"] == 1
    # RFC 7323 2.2: the SYN/ACK's window is not scaled.
    assert conn.send.peer_wnd_end == conn.idsn + 1 + 65535


def test_synack_without_mp_capable_is_fallback_and_nothing_is_added():
    conn, sf = new_conn()
    handshake(conn, sf, peer_mpc=False)
    assert conn.mode == FALLBACK
    assert conn.counters["fallback_no_mp_capable"] == 1
    assert conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS) == b""
    conn.app_data(b"x" * 1000)
    chunk = next_chunk(conn, sf)
    assert bytes(chunk) == b"x" * 1000
    conn.written(sf, 1000)
    assert conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 1000, 500, TS) == b""
    assert len(conn.send.buf) == 0     # the kernel socket is the only copy in fallback
    conn.subflow_data(sf, b"hello")
    assert conn.take_for_app(100) == b"hello"


def test_synack_with_bad_mp_capable_flags_is_fallback():
    conn, sf = new_conn()
    handshake(conn, sf, peer_flags=0)      # H clear: no crypto we both know (RFC 8684 3.1)
    assert conn.mode == FALLBACK
    assert conn.counters["fallback_peer_version"] == 1


def test_third_ack_carries_both_keys_until_the_peer_speaks_dss():
    conn, sf = new_conn()
    handshake(conn, sf)
    o = parsed(conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS))
    assert o["mpc_form"] == 3
    assert (o["mpc_sender_key"], o["mpc_receiver_key"]) == (OUR_KEY, PEER_KEY)


def test_first_data_carries_mp_capable_with_the_data_level_length():
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.app_data(b"GET / HTTP/1.1\r\n\r\n")
    chunk = next_chunk(conn, sf)
    conn.written(sf, len(chunk))
    o = parsed(conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK | 0x08, 18, 500, TS))
    assert o["mpc_form"] == 4 and o["mpc_data_len"] == 18
    assert (o["mpc_sender_key"], o["mpc_receiver_key"]) == (OUR_KEY, PEER_KEY)


def test_after_the_peers_dss_data_carries_a_dss_mapping_and_data_ack():
    conn, sf = new_conn()
    handshake(conn, sf)
    peer_dss(conn, sf, data_ack=conn.idsn + 1, window=1000)
    assert conn.peer_dss_seen
    conn.app_data(b"a" * 300)
    chunk = next_chunk(conn, sf)
    conn.written(sf, len(chunk))
    o = parsed(conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 300, 500, TS))
    assert o["dss_flags"] & w.DSS_MAPPING and o["dss_flags"] & w.DSS_DATA_ACK
    assert (o["dsn"], o["subflow_seq"], o["data_len"]) == (conn.idsn + 1, 1, 300)
    assert o["data_ack"] == PEER_IDSN + 1
    # a retransmission of the second half carries the same mapping
    o2 = parsed(conn.outgoing(sf, OUR_ISN + 151, PEER_ISN + 1, TCP_ACK, 150, 500, TS))
    assert (o2["dsn"], o2["subflow_seq"], o2["data_len"]) == (conn.idsn + 1, 1, 300)


# ---------------------------------------------------------------- sending: chunks, window, DATA_ACK from the peer

def test_chunks_stay_under_64k_and_within_the_peers_window():
    conn, sf = new_conn()
    handshake(conn, sf, wscale=0)
    peer_dss(conn, sf, data_ack=conn.idsn + 1, window=50_000)
    conn.app_data(bytes(200_000))
    chunk = next_chunk(conn, sf)
    assert len(chunk) == CHUNK_MAX < 65536    # RFC 8684 3.3: a 16-bit data-level length
    conn.written(sf, len(chunk))
    # The window the SYN/ACK gave (65535, never scaled) is the larger one seen so far.
    chunk = next_chunk(conn, sf)
    assert len(chunk) == 65535 - CHUNK_MAX
    conn.written(sf, len(chunk))
    assert next_chunk(conn, sf) is None        # nothing beyond DATA_ACK + window (RFC 8684 3.3.4)
    peer_dss(conn, sf, data_ack=conn.idsn + 1 + 65535, window=65535, ack=OUR_ISN + 1 + 65535)
    assert conn.snd_una == conn.idsn + 1 + 65535
    assert len(next_chunk(conn, sf)) == CHUNK_MAX


def test_a_partly_written_chunk_is_finished_before_the_next():
    conn, sf = new_conn()
    handshake(conn, sf)
    peer_dss(conn, sf, data_ack=conn.idsn + 1, window=10_000)
    conn.app_data(bytes(range(256)) * 400)
    chunk = next_chunk(conn, sf)
    conn.written(sf, 1000)
    assert conn.next_write() is None              # the socket took less: it is full
    conn.subflow_writable(sf)
    rest = next_chunk(conn, sf)
    assert len(rest) == len(chunk) - 1000
    assert list(sf.our_maps) == [(1, conn.idsn + 1, len(chunk))]


def test_segment_across_two_mappings_is_refused():
    conn, sf = new_conn()
    handshake(conn, sf)
    peer_dss(conn, sf, data_ack=conn.idsn + 1, window=10_000)
    conn.app_data(bytes(100_000))
    for _ in range(2):
        write_chunk(conn, sf)
    assert conn.outgoing(sf, OUR_ISN + 1 + CHUNK_MAX - 10, PEER_ISN + 1, TCP_ACK, 20, 500, TS) is None
    assert conn.counters["segments_across_mappings"] == 1


def test_data_ack_beyond_what_was_sent_is_ignored():
    conn, sf = new_conn()
    handshake(conn, sf)
    peer_dss(conn, sf, data_ack=conn.idsn + 1000)
    assert conn.counters["data_ack_invalid"] == 1 and conn.snd_una == conn.idsn + 1


def test_32_bit_data_ack_is_expanded():
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.app_data(bytes(5000))
    write_chunk(conn, sf)
    conn.incoming(sf, PEER_ISN + 1, OUR_ISN + 1, TCP_ACK, 0, 1000,
                  rec(w.Dss(data_ack=(conn.idsn + 4001) & 0xFFFFFFFF, data_ack_64=False)))
    assert conn.snd_una == conn.idsn + 4001


# ---------------------------------------------------------------- receiving: mappings, DATA_ACK to the peer

def test_data_ack_counts_what_the_kernel_acked_and_is_mapped():
    conn, sf = new_conn()
    handshake(conn, sf)
    # The peer's 3000 bytes (wrapping its subflow sequence space) mapped in one go.
    peer_dss(conn, sf, data_ack=conn.idsn + 1, mapping=(PEER_IDSN + 1, 1, 3000), payload_len=1448)
    # the kernel acks 2000 of them: DATA_ACK = IDSN+1+2000 although nothing was read yet
    o = parsed(conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1 + 2000, TCP_ACK, 0, 500, TS))
    assert o["data_ack"] == PEER_IDSN + 1 + 2000
    conn.subflow_data(sf, bytes(2000))
    assert conn.take_for_app(10_000) == bytes(2000)
    o = parsed(conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1 + 2000, TCP_ACK, 0, 500, TS))
    assert o["data_ack"] == PEER_IDSN + 1 + 2000


def test_bytes_without_mapping_reset_the_connection():
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.subflow_data(sf, b"surprise")
    assert conn.state == ABORTED and conn.error == "unmapped_data"


def test_zero_window_probe_mapped_one_below_never_overwrites():
    """Linux probes a zero window with the byte at snd_una mapped at snd_una - 1 (docs/datapath.md)."""
    conn, sf = new_conn()
    handshake(conn, sf)
    base = PEER_IDSN + 1
    peer_dss(conn, sf, mapping=(base, 1, 100), payload_len=100)
    conn.subflow_data(sf, bytes(range(100)))
    peer_dss(conn, sf, mapping=(base + 99, 101, 1), payload_len=1, seq=PEER_ISN + 101)      # the probe
    conn.subflow_data(sf, b"\xee")
    peer_dss(conn, sf, mapping=(base + 100, 102, 50), payload_len=50, seq=PEER_ISN + 102)
    conn.subflow_data(sf, b"z" * 50)
    assert conn.take_for_app(1000) == bytes(range(100)) + b"z" * 50


def test_a_conflicting_mapping_is_counted_and_ignored():
    conn, sf = new_conn()
    handshake(conn, sf)
    peer_dss(conn, sf, mapping=(PEER_IDSN + 1, 1, 100), payload_len=100)
    peer_dss(conn, sf, mapping=(PEER_IDSN + 500, 50, 10), payload_len=10, seq=PEER_ISN + 50)
    assert conn.counters["dss_conflicts"] == 1


def test_malformed_mptcp_options_drop_the_packet():
    conn, sf = new_conn()
    handshake(conn, sf)
    bad = bytes([30, 5, 0x20, 0x01, 0]) + b"\x01\x01\x01"    # a DSS too short for its flags
    assert conn.incoming(sf, PEER_ISN + 1, OUR_ISN + 1, TCP_ACK, 0, 100, mo.parse_options(bad)) is False
    assert conn.counters["malformed_options"] == 1


# ---------------------------------------------------------------- DATA_FIN both ways, resets

def test_peer_data_fin_on_a_pure_ack_is_data_acked_by_mptun_once_the_app_has_everything():
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS)    # third ACK: numbers to copy
    base = PEER_IDSN + 1
    peer_dss(conn, sf, data_ack=conn.idsn + 1, mapping=(base, 1, 10), payload_len=10)
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 11, TCP_ACK, 0, 500, TS)   # the kernel acks the data
    peer_dss(conn, sf, data_ack=conn.idsn + 1, mapping=(base + 10, 0, 1), fin=True, seq=PEER_ISN + 11)
    assert conn.recv.fin_dsn == base + 10
    # Not acknowledged while the app has not read up to it: it may still abort (MP_FASTCLOSE).
    assert control(conn, 1.0) == []
    assert not conn.app_fin_due()
    conn.subflow_data(sf, bytes(10))
    assert conn.take_for_app(100) == bytes(10)
    assert conn.app_fin_due()
    conn.app_fin_delivered()
    segs = control(conn, 1.1)
    assert len(segs) == 1
    o = parsed(segs[0].options)
    assert o["data_ack"] == base + 11                         # RFC 8684 3.3.3: the DATA_FIN takes one DSN
    assert o["present"] & 0x10                                # timestamps copied from the kernel's segment
    assert segs[0].seq == OUR_ISN + 1 and segs[0].ack == PEER_ISN + 11
    assert control(conn, 1.2) == []


def test_our_data_fin_after_the_last_byte_retransmitted_until_acked():
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS)
    peer_dss(conn, sf, data_ack=conn.idsn + 1, window=10_000)
    conn.app_data(bytes(100))
    write_chunk(conn, sf)
    conn.on_app_eof()
    segs = control(conn, 1.0)
    o = parsed(segs[0].options)
    assert o["dss_flags"] & w.DSS_DATA_FIN
    assert (o["dsn"], o["subflow_seq"], o["data_len"]) == (conn.idsn + 101, 0, 1)
    # not retransmitted while the data before it is unacknowledged (each would be a dup ACK)
    assert control(conn, 5.0) == []
    peer_dss(conn, sf, data_ack=conn.idsn + 101, ack=OUR_ISN + 101)
    assert control(conn, 5.0) == []           # just acked: a fresh RTO starts
    assert len(control(conn, 5.3)) == 1       # the DATA_FIN itself was lost
    peer_dss(conn, sf, data_ack=conn.idsn + 102, ack=OUR_ISN + 101)
    assert conn.send.fin_acked
    conn.app_fin_delivered()
    conn.poll(6.0)
    assert conn.events() == [Closed(reset=False, reason=None)] and conn.state == ConnState.CLOSED


def test_our_data_fin_without_data_before_the_peer_ever_sent_a_dss():
    """An app that connects and closes at once, to a server waiting for a request (it never sends
    a DSS): once the third ACK is out the DATA_FIN goes anyway, as Linux sends it."""
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.on_app_eof()
    assert control(conn, 0.5) == []           # no third ACK yet: nothing to copy, no keys given
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS)     # the third ACK
    segs = control(conn, 1.0)
    assert len(segs) == 1
    o = parsed(segs[0].options)
    assert o["dss_flags"] & w.DSS_DATA_FIN and o["dss_flags"] & w.DSS_DATA_ACK
    assert (o["dsn"], o["subflow_seq"], o["data_len"]) == (conn.idsn + 1, 0, 1)
    assert o["data_ack"] == PEER_IDSN + 1
    assert segs[0].seq == OUR_ISN + 1 and segs[0].ack == PEER_ISN + 1
    assert conn.get_timer() == pytest.approx(1.2)
    assert len(control(conn, 1.2)) == 1       # retransmitted until DATA_ACKed
    peer_dss(conn, sf, data_ack=conn.idsn + 2)
    assert conn.send.fin_acked


def test_our_data_fin_without_data_checksummed_before_the_peer_sent_a_dss():
    conn, sf = new_conn()
    handshake(conn, sf, peer_flags=w.MPC_HMAC_SHA256 | w.MPC_CHECKSUM_REQUIRED)
    conn.on_app_eof()
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS)
    o = parsed(control(conn, 1.0)[0].options)
    assert o["dss_has_checksum"]
    assert o["dss_checksum"] == w.dss_checksum(conn.idsn + 1, 0, 1, b"")


def test_closed_data_level_window_is_probed_with_backoff_until_it_opens():
    """The peer's window closes, all we sent is DATA_ACKed and its one window update is lost: the
    kernel has nothing queued and never probes, so mptun's persist timer sends a pure ACK one below
    snd_nxt, which the peer's TCP answers with a duplicate ACK carrying its window."""
    conn, sf = new_conn()
    handshake(conn, sf, window=128)
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS)
    peer_dss(conn, sf, data_ack=conn.idsn + 1, window=1)            # 128 bytes (wscale 7)
    conn.app_data(bytes(1000))
    assert len(next_chunk(conn, sf)) == 128
    conn.written(sf, 128)
    assert next_chunk(conn, sf) is None
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 128, 500, TS)
    assert control(conn, 0.5) == [] and conn.get_timer() is None   # not yet acknowledged
    peer_dss(conn, sf, data_ack=conn.idsn + 129, window=0, ack=OUR_ISN + 129)
    assert control(conn, 1.0) == []
    assert conn.get_timer() == pytest.approx(1.2)
    segs = control(conn, 1.2)
    assert len(segs) == 1
    seg = segs[0]
    assert seg.seq == OUR_ISN + 128 and seg.ack == PEER_ISN + 1
    o = parsed(seg.options)
    assert o["dss_flags"] == w.DSS_DATA_ACK | w.DSS_DATA_ACK_64
    assert conn.counters["window_probes_sent"] == 1
    assert control(conn, 1.3) == []
    assert conn.get_timer() == pytest.approx(1.6)                   # backing off: 0.2, 0.4, ...
    assert len(control(conn, 1.6)) == 1
    assert conn.get_timer() == pytest.approx(2.4)
    for t in range(20):
        control(conn, 100.0 + 20 * t)
    assert conn.send.persist_rto == 10.0                                  # capped
    # the peer's duplicate ACK says its window opened: data flows, the timer is off
    peer_dss(conn, sf, data_ack=conn.idsn + 129, window=10, ack=OUR_ISN + 129)
    assert len(next_chunk(conn, sf)) == 872
    conn.written(sf, 872)
    assert control(conn, 1000.0) == [] and conn.get_timer() is None


def test_mp_fastclose_with_our_key_aborts():
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.incoming(sf, PEER_ISN + 1, OUR_ISN + 1, TCP_ACK | TCP_RST, 0, 0, rec(w.MpFastclose(OUR_KEY)))
    assert conn.state == ABORTED and conn.error == "fastclose_from_peer"


def test_app_reset_sends_mp_fastclose_with_the_peers_key():
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.abort("resets_from_app")
    o = parsed(conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_RST | TCP_ACK, 0, 0, b""))
    assert o["fastclose_receiver_key"] == PEER_KEY


def test_kernel_fin_after_close_gets_a_data_ack_not_a_data_fin():
    conn, sf = new_conn()
    handshake(conn, sf)
    peer_dss(conn, sf, data_ack=conn.idsn + 1)
    o = parsed(conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK | TCP_FIN, 0, 500, TS))
    assert o["dss_flags"] == w.DSS_DATA_ACK | w.DSS_DATA_ACK_64


# ---------------------------------------------------------------- DSS checksums (RFC 8684 3.3.1)

def test_checksums_when_the_peer_asks_our_mappings_carry_them():
    conn, sf = new_conn()
    handshake(conn, sf, peer_flags=w.MPC_HMAC_SHA256 | w.MPC_CHECKSUM_REQUIRED)
    assert conn.checksums
    peer_dss(conn, sf, data_ack=conn.idsn + 1)
    data = bytes(range(256)) * 4
    conn.app_data(data)
    write_chunk(conn, sf)
    o = parsed(conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, len(data), 500, b""))
    assert o["dss_has_checksum"]
    assert o["dss_checksum"] == w.dss_checksum(conn.idsn + 1, 1, len(data), data)


def test_checksums_a_wrong_one_from_the_peer_resets():
    conn, sf = new_conn()
    handshake(conn, sf, peer_flags=w.MPC_HMAC_SHA256 | w.MPC_CHECKSUM_REQUIRED)
    data = b"payload!" * 10
    good = w.dss_checksum(PEER_IDSN + 1, 1, len(data), data)
    conn.incoming(sf, PEER_ISN + 1, OUR_ISN + 1, TCP_ACK, len(data), 100,
                  rec(w.Dss(dsn=PEER_IDSN + 1, subflow_seq=1, data_len=len(data), checksum=good)))
    conn.subflow_data(sf, data[:30])
    conn.subflow_data(sf, data[30:])
    assert conn.take_for_app(1000) == data
    bad = w.dss_checksum(PEER_IDSN + 81, 81, len(data), data) ^ 1
    conn.incoming(sf, PEER_ISN + 81, OUR_ISN + 1, TCP_ACK, len(data), 100,
                  rec(w.Dss(dsn=PEER_IDSN + 81, subflow_seq=81, data_len=len(data), checksum=bad)))
    conn.subflow_data(sf, data)
    assert conn.state == ABORTED and conn.error == "dss_checksum_failures"


def test_checksums_a_data_fin_on_the_last_data_mapping_counts_in_the_length():
    """Linux (subflow.c validate_data_csum): the pseudo-header's length is the announced data-level
    length, the DATA_FIN's octet included, while the sum covers only the data."""
    conn, sf = new_conn()
    handshake(conn, sf, peer_flags=w.MPC_HMAC_SHA256 | w.MPC_CHECKSUM_REQUIRED)
    data = b"the last bytes of the file" * 3
    n = len(data)
    good = w.dss_checksum(PEER_IDSN + 1, 1, n + 1, data)
    conn.incoming(sf, PEER_ISN + 1, OUR_ISN + 1, TCP_ACK, n, 100,
                  rec(w.Dss(dsn=PEER_IDSN + 1, subflow_seq=1, data_len=n + 1, data_fin=True, checksum=good)))
    assert conn.recv.fin_dsn == PEER_IDSN + 1 + n
    conn.subflow_data(sf, data[:10])
    conn.subflow_data(sf, data[10:])
    assert conn.state != ABORTED, conn.error
    assert conn.take_for_app(1000) == data
    assert conn.app_fin_due()
    assert not conn.counters["dss_checksum_failures"]


# ---------------------------------------------------------------- options of segments the kernel would drop

def test_an_ack_of_unsent_data_is_dropped_and_prunes_nothing():
    conn, sf = new_conn()
    handshake(conn, sf)
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS)
    peer_dss(conn, sf, data_ack=conn.idsn + 1, window=10_000)
    conn.app_data(bytes(3000))
    write_chunk(conn, sf)
    # spoofed ACK far beyond what was sent (RFC 5961: the kernel drops it)
    assert conn.incoming(sf, PEER_ISN + 1, OUR_ISN + 1 + 1_000_000, TCP_ACK, 0, 500, rec()) is False
    assert conn.counters["acks_of_unsent_data"] == 1
    assert sf.peer_ack_ssn == 1 and len(sf.our_maps) == 1
    assert conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 1448, 500, TS) is not None
    # the real ACK of everything (and of a FIN) is taken
    assert conn.incoming(sf, PEER_ISN + 1, OUR_ISN + 1 + 3001, TCP_ACK, 0, 500, rec())
    assert sf.peer_ack_ssn == 3002          # write_ssn 3001, + 1 for a FIN


def test_a_data_fin_or_mapping_outside_the_receive_window_is_ignored():
    conn, sf = new_conn()
    conn.outgoing(sf, OUR_ISN, 0, TCP_SYN, 0, 1000, WindowScale(2).emit())
    assert conn.incoming(sf, PEER_ISN, OUR_ISN + 1, TCP_SYN | TCP_ACK, 0, 65535,
                         rec(WindowScale(7), w.MpCapable.synack(PEER_KEY, w.MPC_HMAC_SHA256)))
    connected(conn, sf)
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 1, TCP_ACK, 0, 500, TS)     # window 2000 bytes
    assert sf.rcv_wnd_edge == 1 + 2000
    base = PEER_IDSN + 1
    peer_dss(conn, sf, mapping=(base, 1, 100), payload_len=100)
    conn.subflow_data(sf, bytes(100))
    conn.outgoing(sf, OUR_ISN + 1, PEER_ISN + 101, TCP_ACK, 0, 500, TS)
    conn.take_for_app(1000)
    # spoofed bare DATA_FINs: far ahead, and behind the kernel's ACK point
    peer_dss(conn, sf, mapping=(base + 100, 0, 1), fin=True, seq=PEER_ISN + 1 + 50_000_000)
    peer_dss(conn, sf, mapping=(base + 100, 0, 1), fin=True, seq=PEER_ISN + 50)
    # a mapping beyond the window
    peer_dss(conn, sf, mapping=(base + 5000, 5001, 100), payload_len=100, seq=PEER_ISN + 5001)
    assert conn.counters["dss_outside_window"] == 3
    assert conn.recv.fin_dsn is None and not conn.app_fin_due()
    assert sf.peer_maps.lookup(5001) is None
    # the real DATA_FIN, at the kernel's ACK point, is taken
    peer_dss(conn, sf, mapping=(base + 100, 0, 1), fin=True, seq=PEER_ISN + 101)
    assert conn.recv.fin_dsn == base + 100 and conn.app_fin_due()


def test_a_mapping_must_cover_the_payload_it_rides_on():
    conn, sf = new_conn()
    handshake(conn, sf)
    base = PEER_IDSN + 1
    peer_dss(conn, sf, mapping=(base + 1000, 1001, 5), payload_len=0)                 # on a pure ACK
    peer_dss(conn, sf, mapping=(base + 1000, 1001, 5), payload_len=100)               # not these bytes
    assert len(sf.peer_maps) == 0
    assert conn.counters["dss_mapping_off_payload"] == 1
    peer_dss(conn, sf, mapping=(base, 1, 100), payload_len=50, seq=PEER_ISN + 51)     # overlaps: taken
    assert sf.peer_maps.lookup(1) == (1, base, 100)


def test_the_peer_mapping_table_is_capped(monkeypatch):
    from mptun.core import recv
    monkeypatch.setattr(recv, "PEER_MAPPINGS_MAX", 4)
    conn, sf = new_conn()
    handshake(conn, sf)
    for k in range(10):
        peer_dss(conn, sf, mapping=(PEER_IDSN + 1 + 10 * k, 1 + 10 * k, 10), payload_len=10, seq=PEER_ISN + 1 + 10 * k)
    assert len(sf.peer_maps) == 4
    assert conn.counters["peer_mappings_overflow"] == 6
