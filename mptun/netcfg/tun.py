"""Opening the TUN device: IFF_TUN|IFF_NO_PI|IFF_VNET_HDR, not persistent, offloads set.

The device lives exactly as long as the returned fd (and its duplicates): when the
daemon dies, the kernel removes the TUN, its addresses and its routes, and the
host's traffic goes direct again (fail-open). The fd is non-blocking and close-on-exec.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass

from mptun.netcfg.errors import NetcfgError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
TUNGETVNETHDRSZ = 0x800454D7
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000   # fail if the device exists: never attach to someone else's TUN
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
_IFREQ = "16sH22x"


@dataclass
class TunDevice:
    """An open TUN. Each read returns vnet_hdr_size bytes of struct virtio_net_hdr,
    then one IPv4 packet (a GSO super-packet up to ~64 KB with offload); each write
    takes the same."""

    fd: int
    name: str
    ifindex: int
    vnet_hdr_size: int
    offload: int

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def closed(self) -> bool:
        return self.fd < 0


def open_tun(name: str, flags: int, vnet_hdr_size: int, offload: int) -> TunDevice:
    """Create TUN `name` in this thread's network namespace and configure its fd."""
    assert len(name.encode()) < 16
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NetcfgError(f"{TUN_PATH} does not exist: load the tun module (modprobe tun)") from None
    try:
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack(_IFREQ, name.encode(), flags))
        except OSError as e:
            if e.errno == 16 and flags & IFF_TUN_EXCL:  # EBUSY
                raise NetcfgError(f"a device named {name} exists already; choose another TUN name") from None
            raise
        if flags & IFF_VNET_HDR:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_size))
        # Set explicitly, never inherited: a persistent TUN keeps old offload settings.
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
        got = fcntl.ioctl(fd, TUNGETIFF, struct.pack(_IFREQ, b"", 0))
        actual = struct.unpack(_IFREQ, got)[0].rstrip(b"\0").decode()
        assert actual == name, (actual, name)
        # Not /sys/class/net: sysfs shows the namespace it was mounted in.
        ifindex = socket.if_nametoindex(name)
    except BaseException:
        os.close(fd)
        raise
    return TunDevice(fd=fd, name=name, ifindex=ifindex, vnet_hdr_size=vnet_hdr_size, offload=offload)
