"""The edge of mptun that touches the system: the per-packet datapath over the TUN and the packet sockets.

mptun.core decides; this package reads and writes packets and calls into the compiled
rewrite helpers. The daemon (mptun.daemon) owns the event loop and the sockets.
"""
