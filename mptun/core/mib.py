"""The counters, by reason: every drop, fallback and reset mptun sees has a name and a meaning here.

REASONS is the one registry of counter names (as Linux's net/mptcp/mib.h): `mptun status` prints
the meanings, docs/architecture.md points here, and a test checks that every name the code counts
is listed. A Counters is a plain mapping name -> int; missing names read as 0.
"""

from __future__ import annotations

from collections import Counter

REASONS = {
    # connections
    "connections": "app connections intercepted",
    "mptcp_connections": "connections the peer accepted as MPTCP",
    "fallback_no_mp_capable": "fallbacks: the SYN/ACK had no MP_CAPABLE (plain TCP server, or options stripped)",
    "fallback_peer_version": "fallbacks: the peer's MP_CAPABLE was not version 1 or not HMAC-SHA256",
    "fallback_infinite_mapping": "fallbacks: the peer sent an infinite mapping",
    "refused": "connections refused by the peer (the app got a RST)",
    "connect_timeouts": "connections the peer never answered (the app timed out)",
    "connect_errors": "connections that failed upstream for another reason",
    "resets_from_peer": "connections the peer reset (RST on the subflow)",
    "fastclose_from_peer": "connections the peer closed with MP_FASTCLOSE",
    "resets_from_app": "connections the app reset (mptun sent MP_FASTCLOSE)",
    "app_gone": "connections whose app left before its leg was accepted (mptun sent MP_FASTCLOSE)",
    "unmapped_data": "connections reset because the peer sent bytes without a DSS mapping",
    # packets
    "malformed_packets": "packets from the TUN that are not well-formed IPv4 TCP (dropped)",
    "malformed_options": "packets from the peer with malformed TCP/MPTCP options (dropped)",
    "dss_checksum_failures": "DSS checksum failures (the connection is reset)",
    "dss_conflicts": "DSS mappings that contradicted an earlier one (ignored)",
    "data_ack_invalid": "DATA_ACKs for data never sent (ignored)",
    "unknown_flow": "packets of no known connection (dropped)",
    "no_option_room": "packets where the MPTCP options did not fit (dropped)",
    "send_errors": "packets the interface refused (dropped; TCP retransmits)",
    "tun_write_errors": "packets the TUN refused (dropped; TCP retransmits)",
    "segments_across_mappings": "outgoing segments spanning two mappings (dropped; retransmitted)",
    "retransmits_of_acked_data": "kernel retransmissions of bytes the peer had just acknowledged (dropped)",
    "segments_unmapped": "outgoing segments without a mapping (dropped; retransmitted)",
    "data_fin_sent": "DATA_FINs sent (bare, on a crafted ACK)",
    "data_fin_acks_sent": "crafted ACKs for the peer's DATA_FIN",
    "acks_of_unsent_data": "peer segments acknowledging bytes never sent (dropped, as the kernel would)",
    "dss_outside_window": "peer mappings or DATA_FINs on segments outside the receive window (ignored)",
    "dss_mapping_off_payload": "peer mappings not covering the payload they came with (ignored)",
    "peer_mappings_overflow": "peer mappings refused: too many held on one subflow",
    "window_probes_sent": "crafted ACKs probing the peer's closed data-level window (persist timer)",
    "syn_absorbed": "app SYN retransmissions absorbed while the upstream handshake ran",
    "rst_from_peer_packets": "RST segments from the peer passed to a subflow socket",
    "tcp_checksum_failures": "peer packets with a wrong TCP checksum (dropped before any option was read)",
    "subflow_eof_without_data_fin": "connections whose last subflow ended without a DATA_FIN",
    "data_fin_timeouts": "connections reset because the DATA_FIN was never acknowledged",
    "mp_fail_from_peer": "MP_FAIL options received",
    "internal_errors": "exceptions in the daemon's loop (a bug: see the log)",
    "fallback_unseen_synack": "connections whose SYN/ACK the datapath never saw (taken as plain TCP)",
    "accept_errors": "accept() failures on the listener or control socket (the fd limit; paused briefly)",
    "aborted_at_shutdown": "connections reset because mptun went down",
    "subflow_open_failures": "subflow sockets that could not be created, bound or connected",
    "no_free_ports": "subflows not opened: every port of the path's range was in use",
    # multipath
    "subflows_joined": "MP_JOIN subflows established (the peer acknowledged the third ACK)",
    "join_failures": "MP_JOIN subflows the peer refused or never answered (retried with backoff)",
    "join_hmac_failures": "MP_JOIN SYN/ACKs with a wrong HMAC (reset with MP_TCPRST, never joined)",
    "join_without_mp_join": "MP_JOIN SYN/ACKs without MP_JOIN (reset with MP_TCPRST, never joined)",
    "subflow_resets": "subflows the peer reset while others carried on",
    "subflows_closed_by_peer": "subflows the peer closed while others carried on",
    "subflows_path_down": "subflows closed because their interface went down or lost its address",
    "subflows_removed_by_peer": "subflows closed because the peer removed their address (REMOVE_ADDR)",
    "subflows_stalled": "subflows that made no progress for several RTTs while another did (data reinjected)",
    "subflows_recovered": "stalled subflows that made progress again (scheduled again)",
    "reinjected_bytes": "bytes sent again on another subflow (a subflow died or stalled)",
    "duplicate_data": "bytes received that were already held (reinjected or redundant copies; discarded)",
    "remove_addr_sent": "REMOVE_ADDR sent for the address of an interface that went away",
    "remove_addr_from_peer": "address IDs the peer removed (REMOVE_ADDR)",
    "add_addr_from_peer": "addresses the peer advertised (ADD_ADDR, HMAC verified)",
    "add_addr_hmac_failures": "ADD_ADDR options with a wrong HMAC (ignored)",
    "add_addr_ignored": "ADD_ADDR options for IPv6 addresses (ignored: subflows are IPv4)",
    "join_acks_resent": "MP_JOIN third ACKs sent again because the peer's fourth ACK did not come",
    "mp_prio_sent": "MP_PRIO sent because an interface's role changed",
    "tcprst_from_peer": "RSTs from the peer carrying MP_TCPRST",
    "app_drain_unknown": "app legs ended without knowing whether the app had read everything (sock_diag failed)",
    # subflow sockets and ICMP
    "unreachable": "connections whose destination the network called unreachable (the app got the same error)",
    "subflow_tuples_reused": "subflow 4-tuples connected again while the previous subflow's entry lingered",
    "subflow_tuples_busy": "subflow ports skipped: the kernel still held that 4-tuple (a closing socket, TIME_WAIT)",
    "subflow_close_timeouts": "finished subflows closed without the peer's FIN (the TIME_WAIT is ours)",
    "icmp_to_subflows": "ICMP errors for subflows rewritten and passed to their sockets",
    "icmp_frag_needed": "of those, fragmentation needed (the MTU told lowered by the option headroom)",
    "icmp_malformed": "ICMP errors captured for subflows that were malformed or truncated (dropped)",
    "icmp_unknown_flow": "ICMP errors about no known subflow (dropped)",
}

# Per-packet outcomes of the rewrite step (mptun._fast.rewrite statuses) are counted as
# "rewrite:<status name>"; they are listed by the compiled module, not here.
REWRITE_PREFIX = "rewrite:"


def meaning(name: str) -> str | None:
    """The one-line meaning of a counter name, or None for a name nobody registered."""
    if name.startswith(REWRITE_PREFIX):
        return f"packets the rewrite step refused ({name[len(REWRITE_PREFIX):]})"
    return REASONS.get(name)


class Counters(Counter):
    """name -> count; missing names read as 0."""

    def snapshot(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.items()) if v}
