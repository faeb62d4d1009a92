"""The states of a connection and its modes, and which aborts the peer started (those need no MP_FASTCLOSE)."""

from enum import StrEnum


class ConnState(StrEnum):
    CONNECTING = "connecting"      # app SYN held, the initial subflow handshaking
    ESTABLISHED = "established"
    CLOSING = "closing"            # a DATA_FIN (or FIN in fallback) sent or received
    CLOSED = "closed"              # both directions done; NAT entries linger for the last ACKs
    ABORTED = "aborted"


class Mode(StrEnum):
    MPTCP = "mptcp"
    FALLBACK = "fallback"          # RFC 8684 3.7: plain TCP through the initial subflow


# Aborts the peer started: it needs no MP_FASTCLOSE from us. Every other abort sends one.
PEER_ABORTS = frozenset({"fastclose_from_peer", "resets_from_peer"})
