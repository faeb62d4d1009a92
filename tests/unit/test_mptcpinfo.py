"""Decoders of mptun.lab.mptcpinfo and mptun.lab.kstats on bytes and text captured from kernel 6.18 / iproute2 6.1.

The captures come from one MPTCP connection with two subflows (198.18.241.1 and 198.18.242.1 ->
198.18.241.2:6000), an IPv6 one, an MPTCP client against a plain server (fallback) and a plain
client against an MPTCP server. Token 0x50fc4c2b is the server's, 0xebf6813b the client's.
"""

import hashlib
import socket
import struct

import pytest

from mptun.lab import kstats as ks
from mptun.lab import mptcpinfo as mi
from mptun.lab.peerserver import PATTERN_BLOCK, pattern_blocks, pattern_sha256

SERVER_TOKEN = 0x50FC4C2B
CLIENT_TOKEN = 0xEBF6813B

# ---- captured ----------------------------------------------------------------------------------

SERVER_MPTCP_INFO = bytes.fromhex(
    "0100000200020000020000002b4cfc50957fd9b1b258802b957fd9b1b258802b3a7de55c994a88b30000000000000000"
    "0000000000000000e803000000000000e093040000000000e80300000000000002000000000000000000000000000000"
)

CLIENT_MPTCP_INFO = bytes.fromhex(
    "0100000200020000020000003b81f6eb3a7de55c994a88b33a7de55c994a88b3957fd9b1b258802b0101000000000000"
    "0028000000000000e093040000000000e803000000000000e09304000000000002000000000000000000000000000000"
)

SERVER_SUBFLOW_ADDRS = bytes.fromhex(
    "1000000002000000000100000001000002001770c612f102000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0200c586c612f10100000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000002001770c612f1020000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000200c425c612f201000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
)

CLIENT_SUBFLOW_ADDRS = bytes.fromhex(
    "100000000200000000010000000100000200c586c612f101000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "02001770c612f10200000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000200c425c612f2010000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000002001770c612f102000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
)

SERVER_V6_SUBFLOW_ADDRS = bytes.fromhex(
    "100000000100000000010000000100000a00177100000000200100020000024100000000000000020000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0a00dd4a0000000020010002000002410000000000000001000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)

SERVER_FULL_INFO_HEADER = bytes.fromhex(
    "180100001801000008010000080100000200000004000000000000000000000000000000000000000100000200020000"
    "020000002b4cfc50957fd9b1b258802b957fd9b1b258802b3a7de55c994a88b300000000000000000000000000000000"
    "e803000000000000e093040000000000e80300000000000002000000000000000000000000000000"
)

SERVER_FULL_INFO_SUBFLOWS = bytes.fromhex(
    "010000000000000002001770c612f1020000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000200c586c612f101"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000020000000000000002001770c612f1020000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000200c425c612f201000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
)

SERVER_FULL_INFO_TCP = bytes.fromhex(
    "010000000007aa01e01c0300409c0000a805000090050000000000000000000000000000000000000000000000000000"
    "000000000000000000000000dc050000f40402005d00000036000000ffffff7f0b000000a805000003000000c6000000"
    "88ab030000000000b9dca93d00000000ffffffffffffffffe80300000000000040060400000000000d000000be000000"
    "0000000004000000bb0000000100000080ae931500000000000000000000000000000000000000000000000000000000"
    "0200000000000000e8030000000000000000000000000000000000000000000000000000000001000008020000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000010000000007aa01"
    "e01c0300409c0000a80500009005000000000000000000000000000000000000000000000c0000000000000000000000"
    "00000000dc0500005c950100e8030000f4010000ffffff7f0a000000a805000003000000e803000088ab030000000000"
    "136f770200000000ffffffffffffffff0000000000000000a0b5000000000000040000002400000000000000e8030000"
    "220000000000000000000000000000000000000000000000000000000000000000000000000000000100000000000000"
    "0000000000000000000000000000000000000000000000000000000000fc000000080200000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)

SS_SERVER_TWO_SUBFLOWS = """\
tcp   ESTAB 0      0      198.18.241.2:6000 198.18.242.1:50213
	 bbr wscale:10,10 rto:204 rtt:1/0.5 ato:40 mss:1448 pmtu:1500 rcvmss:1424 advmss:1448 cwnd:10 bytes_received:46496 segs_out:4 segs_in:36 data_segs_in:34 bbr:(bw:0bps,mrtt:1) send 115840000bps lastsnd:24 lastrcv:12 lastack:12 pacing_rate 331053208bps delivered:1 app_limited rcv_rtt:1 rcv_space:240520 rcv_ssthresh:103772 minrtt:1 snd_wnd:64512 tcp-ulp-mptcp flags:Jec token:0000(id:1)/50fc4c2b(id:0) seq:b3884a995ce4e81a sfseq:40d9 ssnoff:31c53bee maplen:74c8
tcp   ESTAB 0      0      198.18.241.2:6000 198.18.241.1:50566
	 bbr wscale:10,10 rto:204 rtt:0.093/0.054 ato:40 mss:1448 pmtu:1500 rcvmss:1424 advmss:1448 cwnd:11 bytes_sent:1000 bytes_acked:1000 bytes_received:263744 segs_out:13 segs_in:190 data_segs_out:1 data_segs_in:187 bbr:(bw:2896000000bps,mrtt:0.004,pacing_gain:2.88672,cwnd_gain:2.88672) send 1370150538bps lastsnd:12 lastrcv:12 lastack:12 pacing_rate 8276338120bps delivery_rate 2896000000bps delivered:2 app_limited rcv_rtt:0.198 rcv_space:240520 rcv_ssthresh:132340 minrtt:0.004 snd_wnd:65536 tcp-ulp-mptcp flags:Mec token:0000(id:0)/50fc4c2b(id:0) seq:b3884a995ce55ce2 sfseq:3e5e9 ssnoff:300a30d3 maplen:2058
mptcp ESTAB 0      0      198.18.241.2:6000 198.18.241.1:50566
	 subflows:1 subflows_max:2 add_addr_accepted_max:2 remote_key token:50fc4c2b write_seq:2b8058b2b1d97f95 snd_una:2b8058b2b1d97f95 rcv_nxt:b3884a995ce57d3a
"""

SS_CLIENT_TWO_SUBFLOWS = """\
tcp   ESTAB 0      0      198.18.242.1%cb:50213 198.18.241.2:6000
	 bbr wscale:10,10 rto:204 rtt:0.027/0.033 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:44 bytes_sent:46496 bytes_acked:46497 segs_out:36 segs_in:5 data_segs_out:34 bbr:(bw:69504000000bps,mrtt:0.001,pacing_gain:2.88672,cwnd_gain:2.88672) send 18877629630bps lastsnd:28 lastrcv:40 lastack:28 pacing_rate 198632115000bps delivery_rate 4344000000bps delivered:35 busy:4ms rcv_space:14480 rcv_ssthresh:64088 minrtt:0.001 snd_wnd:133120 tcp-ulp-mptcp flags:Jjec token:50fc4c2b(id:0)/ebf6813b(id:1) seq:2b8058b2b1d97bad sfseq:0 ssnoff:b4693f6a maplen:0
tcp   ESTAB 0      0         198.18.241.1:50566 198.18.241.2:6000
	 bbr wscale:10,10 rto:204 rtt:0.059/0.061 ato:40 mss:1448 pmtu:1500 rcvmss:1000 advmss:1448 cwnd:197 ssthresh:154 bytes_sent:263744 bytes_acked:263745 bytes_received:1000 segs_out:190 segs_in:14 data_segs_out:187 data_segs_in:1 bbr:(bw:220096000000bps,mrtt:0.001,pacing_gain:1,cwnd_gain:2) send 38678779661bps lastsnd:36 lastrcv:36 lastack:36 pacing_rate 217895040000bps delivery_rate 34752000000bps delivered:188 busy:4ms sndbuf_limited:4ms(100.0%) rcv_space:14480 rcv_ssthresh:67408 minrtt:0.001 snd_wnd:133120 tcp-ulp-mptcp flags:Mmec token:0000(id:0)/ebf6813b(id:0) seq:2b8058b2b1d97bad sfseq:1 ssnoff:4e53fd3 maplen:3e8
mptcp ESTAB 0      0         198.18.241.1:50566 198.18.241.2:6000
	 subflows:1 subflows_max:2 add_addr_accepted_max:2 remote_key token:ebf6813b write_seq:b3884a995ce57d3a snd_una:b3884a995ce57d3a rcv_nxt:2b8058b2b1d97f95
"""

SS_CLIENT_FALLBACK = """\
tcp   ESTAB 0      0      198.18.241.1:48058 198.18.241.2:6002
	 bbr wscale:10,10 rto:204 rtt:0.027/0.015 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:11 bytes_sent:1000 bytes_acked:1001 segs_out:3 segs_in:2 data_segs_out:1 bbr:(bw:1930666200bps,mrtt:0.006,pacing_gain:2.88672,cwnd_gain:2.88672) send 4719407407bps lastsnd:4 lastrcv:4 lastack:4 pacing_rate 11035116840bps delivery_rate 1930666664bps delivered:2 app_limited rcv_space:14480 rcv_ssthresh:64088 minrtt:0.006 snd_wnd:68608 tcp-ulp-mptcp flags:mc token:0000(id:0)/948dba57(id:0) seq:0 sfseq:0 ssnoff:d725288 maplen:0
mptcp ESTAB 0      0      198.18.241.1:48058 198.18.241.2:6002
	 subflows_max:2 add_addr_accepted_max:2 fallback token:948dba57 write_seq:3bb8be3fd4608b17 snd_una:3bb8be3fd4608b17
"""

SS_SERVER_PLAIN_CLIENT = """\
tcp ESTAB 0      0      198.18.241.2:6003 198.18.241.1:53052
	 bbr wscale:10,10 rto:200 rtt:0.022/0.011 ato:40 mss:1448 pmtu:1500 rcvmss:1000 advmss:1448 cwnd:10 bytes_received:1000 segs_out:1 segs_in:3 data_segs_in:1 bbr:(bw:0bps,mrtt:0.022) send 5265454545bps lastsnd:4 lastrcv:4 lastack:4 pacing_rate 15047886960bps delivered:1 app_limited rcv_space:14480 rcv_ssthresh:68056 minrtt:0.022 snd_wnd:64512
"""

PROC_NET_NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned OutOfWindowIcmps LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab BeyondWindow TSEcrRejected PAWSOldAck PAWSTimewait DelayedACKs DelayedACKLocked DelayedACKLost ListenOverflows ListenDrops TCPHPHits TCPPureAcks TCPHPAcks TCPRenoRecovery TCPSackRecovery TCPSACKReneging TCPSACKReorder TCPRenoReorder TCPTSReorder TCPFullUndo TCPPartialUndo TCPDSACKUndo TCPLossUndo TCPLostRetransmit TCPRenoFailures TCPSackFailures TCPLossFailures TCPFastRetrans TCPSlowStartRetrans TCPTimeouts TCPLossProbes TCPLossProbeRecovery TCPRenoRecoveryFail TCPSackRecoveryFail TCPRcvCollapsed TCPBacklogCoalesce TCPDSACKOldSent TCPDSACKOfoSent TCPDSACKRecv TCPDSACKOfoRecv TCPAbortOnData TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger TCPAbortFailed TCPMemoryPressures TCPMemoryPressuresChrono TCPSACKDiscard TCPDSACKIgnoredOld TCPDSACKIgnoredNoUndo TCPSpuriousRTOs TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPSackShifted TCPSackMerged TCPSackShiftFallback TCPBacklogDrop PFMemallocDrop TCPMinTTLDrop TCPDeferAcceptDrop IPReversePathFilter TCPTimeWaitOverflow TCPReqQFullDoCookies TCPReqQFullDrop TCPRetransFail TCPRcvCoalesce TCPOFOQueue TCPOFODrop TCPOFOMerge TCPChallengeACK TCPSYNChallenge TCPFastOpenActive TCPFastOpenActiveFail TCPFastOpenPassive TCPFastOpenPassiveFail TCPFastOpenListenOverflow TCPFastOpenCookieReqd TCPFastOpenBlackhole TCPSpuriousRtxHostQueues BusyPollRxPackets TCPAutoCorking TCPFromZeroWindowAdv TCPToZeroWindowAdv TCPWantZeroWindowAdv TCPSynRetrans TCPOrigDataSent TCPHystartTrainDetect TCPHystartTrainCwnd TCPHystartDelayDetect TCPHystartDelayCwnd TCPACKSkippedSynRecv TCPACKSkippedPAWS TCPACKSkippedSeq TCPACKSkippedFinWait2 TCPACKSkippedTimeWait TCPACKSkippedChallenge TCPWinProbe TCPKeepAlive TCPMTUPFail TCPMTUPSuccess TCPDelivered TCPDeliveredCE TCPAckCompressed TCPZeroWindowDrop TCPRcvQDrop TCPWqueueTooBig TCPFastOpenPassiveAltKey TcpTimeoutRehash TcpDuplicateDataRehash TCPDSACKRecvSegs TCPDSACKIgnoredDubious TCPMigrateReqSuccess TCPMigrateReqFailure TCPPLBRehash TCPAORequired TCPAOBad TCPAOKeyNotFound TCPAOGood TCPAODroppedIcmps
TcpExt: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 11 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7 0 0 0 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts InECT0Pkts InCEPkts ReasmOverlaps
IpExt: 0 0 0 0 0 0 50470528 93824 0 0 0 0 0 36031 0 0 0 0
MPTcpExt: MPCapableSYNRX MPCapableSYNTX MPCapableSYNACKRX MPCapableACKRX MPCapableFallbackACK MPCapableFallbackSYNACK MPCapableSYNTXDrop MPCapableSYNTXDisabled MPCapableEndpAttempt MPFallbackTokenInit MPTCPRetrans MPJoinNoTokenFound MPJoinSynRx MPJoinSynBackupRx MPJoinSynAckRx MPJoinSynAckBackupRx MPJoinSynAckHMacFailure MPJoinAckRx MPJoinAckHMacFailure MPJoinRejected MPJoinSynTx MPJoinSynTxCreatSkErr MPJoinSynTxBindErr MPJoinSynTxConnectErr DSSNotMatching DSSCorruptionFallback DSSCorruptionReset InfiniteMapTx InfiniteMapRx DSSNoMatchTCP DataCsumErr OFOQueueTail OFOQueue OFOMerge NoDSSInWindow DuplicateData AddAddr AddAddrTx AddAddrTxDrop EchoAdd EchoAddTx EchoAddTxDrop PortAdd AddAddrDrop MPJoinPortSynRx MPJoinPortSynAckRx MPJoinPortAckRx MismatchPortSynRx MismatchPortAckRx RmAddr RmAddrDrop RmAddrTx RmAddrTxDrop RmSubflow MPPrioTx MPPrioRx MPFailTx MPFailRx MPFastcloseTx MPFastcloseRx MPRstTx MPRstRx SubflowStale SubflowRecover SndWndShared RcvWndShared RcvWndConflictUpdate RcvWndConflict MPCurrEstab Blackhole MPCapableDataFallback MD5SigFallback DssFallback SimultConnectFallback FallbackFailed WinProbe
MPTcpExt: 2 0 0 2 0 0 0 0 0 0 0 0 2 0 0 0 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 122 239 68 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 346 0 0 1 0 0 0 0 0 0 0
"""

# ---- struct mptcp_info ---------------------------------------------------------------------------


def test_mptcp_info_full_length_of_this_kernel():
    info = mi.parse_mptcp_info(SERVER_MPTCP_INFO)
    assert info.length == mi.MPTCP_INFO_KNOWN_SIZE == 96
    assert info.token == SERVER_TOKEN
    assert info.remote_key_received and not info.fallback
    assert info.flags == mi.MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED
    assert info.subflows == 1  # the join; the initial subflow is not counted here
    assert info.subflows_total == 2
    assert info.subflows_max == 2 and info.add_addr_accepted_max == 2
    assert info.bytes_received == 300_000 and info.bytes_sent == 1000
    assert info.write_seq == info.snd_una == 0x2B8058B2B1D97F95  # as ss printed it


def test_mptcp_info_both_ends_agree_on_the_data_sequence():
    server = mi.parse_mptcp_info(SERVER_MPTCP_INFO)
    client = mi.parse_mptcp_info(CLIENT_MPTCP_INFO)
    assert client.token == CLIENT_TOKEN
    assert server.write_seq == client.rcv_nxt
    assert client.write_seq == server.rcv_nxt
    assert client.bytes_sent == server.bytes_received


@pytest.mark.parametrize("length, present, absent", [
    (40, "rcv_nxt", "local_addr_used"),       # 5.9
    (48, "csum_enabled", "retransmits"),      # 5.12 / 5.14 (sizeof pads to 48)
    (80, "bytes_acked", "subflows_total"),    # 6.5
    (88, "subflows_total", "last_data_sent"),  # 6.8
    (96, "last_ack_recv", None),              # 6.10 and this kernel
])
def test_mptcp_info_from_older_kernels_leaves_missing_fields_none(length, present, absent):
    info = mi.parse_mptcp_info(SERVER_MPTCP_INFO[:length])
    assert info.length == length
    assert getattr(info, present) is not None
    if absent:
        assert getattr(info, absent) is None
    assert info.token == SERVER_TOKEN


def test_mptcp_info_from_newer_kernel_ignores_trailing_bytes():
    info = mi.parse_mptcp_info(SERVER_MPTCP_INFO + bytes(32))
    assert info.length == 128 and info.token == SERVER_TOKEN and info.last_ack_recv is not None


def test_mptcp_info_fallback_flag():
    data = bytearray(SERVER_MPTCP_INFO)
    struct.pack_into("=I", data, 8, mi.MPTCP_INFO_FLAG_FALLBACK)
    info = mi.parse_mptcp_info(bytes(data))
    assert info.fallback and not info.remote_key_received


def test_mptcp_info_as_dict_is_json_ready():
    d = mi.parse_mptcp_info(SERVER_MPTCP_INFO).as_dict()
    assert d["token"] == SERVER_TOKEN and d["fallback"] is False and d["length"] == 96


# ---- MPTCP_SUBFLOW_ADDRS -------------------------------------------------------------------------


def test_subflow_addrs_server_sees_both_client_addresses():
    num, addrs = mi.parse_subflow_addrs(SERVER_SUBFLOW_ADDRS)
    assert num == 2
    assert [a.local for a in addrs] == [("198.18.241.2", 6000)] * 2
    assert [a.remote for a in addrs] == [("198.18.241.1", 50566), ("198.18.242.1", 50213)]
    assert not any(a.disconnected for a in addrs)


def test_subflow_addrs_client_is_the_mirror_image():
    _, server = mi.parse_subflow_addrs(SERVER_SUBFLOW_ADDRS)
    _, client = mi.parse_subflow_addrs(CLIENT_SUBFLOW_ADDRS)
    assert [(a.remote, a.local) for a in client] == [(a.local, a.remote) for a in server]


def test_subflow_addrs_ipv6():
    num, addrs = mi.parse_subflow_addrs(SERVER_V6_SUBFLOW_ADDRS)
    assert num == 1
    assert addrs[0].local == ("2001:2:0:241::2", 6001)
    assert addrs[0].remote == ("2001:2:0:241::1", 56650)


def test_subflow_addrs_header_fields():
    size_subflow_data, num, size_kernel, size_user = mi.SUBFLOW_DATA_HEADER.unpack_from(
        SERVER_SUBFLOW_ADDRS)
    assert (size_subflow_data, num, size_kernel, size_user) == (16, 2, 256, 256)
    assert len(SERVER_SUBFLOW_ADDRS) == 16 + 2 * 256


def test_subflow_addrs_short_elements_decode_to_nothing():
    # A caller that asked for only sa_family per element: the kernel truncates each element.
    header = mi.SUBFLOW_DATA_HEADER.pack(16, 1, 256, 2)
    num, addrs = mi.parse_subflow_addrs(header + struct.pack("=H", socket.AF_INET))
    assert num == 1 and addrs == []


def test_subflow_data_too_short_is_an_error():
    with pytest.raises(ValueError):
        mi.parse_subflow_data(b"\x10\x00")


def test_disconnected_subflow():
    # What 6.18 lists for the first subflow once the connection is closing.
    entry = mi.SubflowAddrs(("0.0.0.0", 5001), ("198.18.241.2", 0))
    assert entry.disconnected


@pytest.mark.parametrize("raw, expected", [
    (struct.pack("=H", socket.AF_INET) + struct.pack("!H", 80) + socket.inet_aton("198.18.0.1"),
     ("198.18.0.1", 80)),
    (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 443, 0)
     + socket.inet_pton(socket.AF_INET6, "2001:2::7") + bytes(4), ("2001:2::7", 443)),
    (bytes(16), None),
    (b"", None),
])
def test_parse_sockaddr(raw, expected):
    assert mi.parse_sockaddr(raw) == expected


# ---- MPTCP_FULL_INFO -----------------------------------------------------------------------------


def test_full_info_matches_the_separate_readers():
    full = mi.parse_full_info(SERVER_FULL_INFO_HEADER, SERVER_FULL_INFO_SUBFLOWS, SERVER_FULL_INFO_TCP)
    _, addrs = mi.parse_subflow_addrs(SERVER_SUBFLOW_ADDRS)
    info = mi.parse_mptcp_info(SERVER_MPTCP_INFO)
    assert full.num_subflows == 2
    assert [s.id for s in full.subflows] == [1, 2]
    assert [s.addrs for s in full.subflows] == addrs
    assert full.info.token == info.token and full.info.write_seq == info.write_seq


def test_full_info_tcp_info_per_subflow():
    full = mi.parse_full_info(SERVER_FULL_INFO_HEADER, SERVER_FULL_INFO_SUBFLOWS, SERVER_FULL_INFO_TCP)
    first, join = full.subflows
    assert first.tcp.length == join.tcp.length == 280  # sizeof(struct tcp_info) on 6.18
    assert first.tcp.state == join.tcp.state == 1  # TCP_ESTABLISHED
    # Same numbers as the bytes_received: of the two subflows in SS_SERVER_TWO_SUBFLOWS.
    assert (first.tcp.bytes_received, join.tcp.bytes_received) == (263744, 46496)
    assert first.tcp.bytes_sent == 1000 and join.tcp.bytes_sent == 0


def test_full_info_with_arrays_shorter_than_the_subflows():
    full = mi.parse_full_info(SERVER_FULL_INFO_HEADER, SERVER_FULL_INFO_SUBFLOWS[:mi.SUBFLOW_INFO_SIZE],
                              SERVER_FULL_INFO_TCP[:280])
    assert full.num_subflows == 2 and len(full.subflows) == 1


# ---- ss -HMtni -----------------------------------------------------------------------------------


def test_ss_server_two_subflows():
    entries = ks.parse_ss(SS_SERVER_TWO_SUBFLOWS)
    assert [e["netid"] for e in entries] == ["tcp", "tcp", "mptcp"]
    (conn,) = ks.group_ss_subflows(entries)
    assert conn["token"] == SERVER_TOKEN and conn["remote_key"] and not conn["mptcp_fallback"]
    assert conn["subflows"] == 1 and conn["info"]["subflows_max"] == 2
    assert conn["info"]["write_seq"] == mi.parse_mptcp_info(SERVER_MPTCP_INFO).write_seq
    flags = sorted(s["subflow"]["flags"] for s in conn["subflow_sockets"])
    assert flags == ["Jec", "Mec"]  # J: peer sent MP_JOIN, M: peer sent MP_CAPABLE
    assert sorted(s["peer"] for s in conn["subflow_sockets"]) == [
        ("198.18.241.1", 50566), ("198.18.242.1", 50213)]


def test_ss_subflow_fields():
    join = ks.parse_ss(SS_SERVER_TWO_SUBFLOWS)[0]
    sub = join["subflow"]
    assert sub["token_local"] == SERVER_TOKEN and sub["token_remote"] == 0
    assert (sub["id_remote"], sub["id_local"]) == (1, 0)
    assert sub["seq"] == 0xB3884A995CE4E81A and sub["maplen"] == 0x74C8
    assert join["info"]["bytes_received"] == 46496
    assert join["info"]["send"] == "115840000bps" and join["info"]["rtt"] == "1/0.5"
    assert "bbr" in join["words"] and "app_limited" in join["words"]


def test_ss_client_side_strips_the_bound_device():
    entries = ks.parse_ss(SS_CLIENT_TWO_SUBFLOWS)
    (conn,) = ks.group_ss_subflows(entries)
    assert conn["token"] == CLIENT_TOKEN
    locals_ = sorted(s["local"] for s in conn["subflow_sockets"])
    assert locals_ == [("198.18.241.1", 50566), ("198.18.242.1", 50213)]  # was 198.18.242.1%cb
    join = next(s for s in conn["subflow_sockets"] if s["subflow"]["flags"] == "Jjec")
    assert join["subflow"]["token_remote"] == SERVER_TOKEN


def test_ss_client_fallback():
    entries = ks.parse_ss(SS_CLIENT_FALLBACK)
    (conn,) = ks.group_ss_subflows(entries)
    assert conn["mptcp_fallback"] and not conn["remote_key"]
    (sub,) = conn["subflow_sockets"]
    assert "M" not in sub["subflow"]["flags"]  # the SYN/ACK carried no MP_CAPABLE
    assert sub["subflow"]["flags"] == "mc"


def test_ss_plain_client_on_mptcp_listener_is_a_plain_tcp_socket():
    entries = ks.parse_ss(SS_SERVER_PLAIN_CLIENT)
    assert [e["netid"] for e in entries] == ["tcp"]
    assert entries[0]["subflow"] is None
    assert ks.group_ss_subflows(entries) == []


def test_ss_decimal_sequence_numbers_of_newer_iproute2():
    text = ("mptcp ESTAB 0 0 198.18.241.2:6000 198.18.241.1:50566\n"
            "\t remote_key token:50fc4c2b write_seq:100 snd_una:100 rcv_nxt:7\n")
    (entry,) = ks.parse_ss(text, seq_base=10)
    assert entry["info"]["write_seq"] == 100 and entry["token"] == SERVER_TOKEN


def test_ss_with_header_line():
    text = "Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n" + SS_CLIENT_FALLBACK
    assert len(ks.parse_ss(text)) == 2


@pytest.mark.parametrize("text, expected", [
    ("198.18.0.1:80", ("198.18.0.1", 80)),
    ("[2001:2::1]:443", ("2001:2::1", 443)),
    ("0.0.0.0:*", ("0.0.0.0", 0)),
    ("[::]:*", ("::", 0)),
    ("198.18.242.1%cb:50213", ("198.18.242.1", 50213)),
    ("[2001:2::1%veth0]:80", ("2001:2::1", 80)),
])
def test_parse_ss_endpoint(text, expected):
    assert ks.parse_ss_endpoint(text) == expected


# ---- MIB -----------------------------------------------------------------------------------------


def test_netstat_mptcp_counters():
    groups = ks.parse_netstat(PROC_NET_NETSTAT)
    assert {"TcpExt", "IpExt", "MPTcpExt"} <= set(groups)
    mptcp = groups["MPTcpExt"]
    # The server side of the two-subflow connection, while it was open.
    assert mptcp["MPCapableSYNRX"] >= 1 and mptcp["MPJoinAckRx"] >= 1
    for name in ("MPCapableFallbackACK", "DSSNotMatching", "InfiniteMapRx", "NoDSSInWindow"):
        assert mptcp[name] == 0


def test_netstat_lines_out_of_step():
    with pytest.raises(ValueError):
        ks.parse_netstat("TcpExt: A B\nIpExt: 1 2\n")


def test_counters_delta():
    assert ks.counters_delta({"A": 1, "B": 2}, {"A": 1, "B": 5, "C": 1}) == {"B": 3, "C": 1}


# ---- the lab's payload ---------------------------------------------------------------------------


def test_pattern_is_deterministic_and_cut_exactly():
    n = 3 * PATTERN_BLOCK + 123
    data = b"".join(pattern_blocks(n, seed=7))
    assert len(data) == n
    assert data == b"".join(pattern_blocks(n, seed=7))
    assert data != b"".join(pattern_blocks(n, seed=8))
    assert hashlib.sha256(data).hexdigest() == pattern_sha256(n, seed=7)


def test_pattern_prefixes_agree():
    long = b"".join(pattern_blocks(2 * PATTERN_BLOCK))
    assert b"".join(pattern_blocks(PATTERN_BLOCK + 5)) == long[:PATTERN_BLOCK + 5]


def test_pattern_empty():
    assert list(pattern_blocks(0)) == []
    assert pattern_sha256(0) == hashlib.sha256(b"").hexdigest()
