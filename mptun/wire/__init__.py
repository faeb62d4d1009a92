"""Pure codecs over bytes, no state and no I/O: IPv4/IPv6/TCP headers and options (tcpip), MPTCP suboptions (mptcp).

Each type has parse(bytes) -> value, emit() -> bytes and buffer_len; bad bytes
raise one exception type with a reason (MalformedPacket, MalformedOption).
"""
