"""PathIO: one path interface as the edge uses it: its addresses, link-layer header and AF_PACKET socket.

Subflow packets leave through the path's packet socket whole (with PACKET_VNET_HDR the kernel
segments super-packets and copies mptun's options into every segment: docs/datapath.md, offload).
Watching links and addresses over netlink (for the path manager) comes here too.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

SOL_PACKET = 263
PACKET_VNET_HDR = 15


@dataclass
class PathIO:
    index: int
    ifname: str
    ifindex: int
    addr: bytes          # the interface's address: subflow source on the wire
    sub_addr: bytes      # where the subflow sockets of this path are bound (on the TUN)
    eth: bytes           # gateway MAC + own MAC (12 bytes), b"" without a link layer
    sock: socket.socket | None = None

    def open(self, vnet: bool) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # protocol 0: receives nothing
        try:
            if vnet:
                s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            s.bind((self.ifname, 0))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.sock = s

    def send(self, data) -> bool:
        """One frame out of the interface; False if the kernel refused it (TCP retransmits)."""
        try:
            self.sock.send(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
