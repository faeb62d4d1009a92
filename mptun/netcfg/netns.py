"""Run a block of code inside a named network namespace, on the calling thread only.

`entered(name)` switches this thread's network namespace with setns(2) and
switches back on exit; sockets, netlink handles, TUN fds and /proc/sys/net
files opened inside belong to that namespace for their whole life. It never
creates a namespace (pyroute2's setns does when the name is unknown).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

from mptun.netcfg.errors import NetcfgError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def current_inode() -> int:
    """Identity of this thread's network namespace (stable while it exists)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Within the block, this thread is in namespace `name` (None: stay where it is)."""
    if name is None:
        yield
        return
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetcfgError(f"no network namespace named {name!r}") from None
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            # Failing to go back would leave the caller configuring the wrong
            # namespace from here on: that is not recoverable, so let it raise.
            _setns(saved)
    finally:
        os.close(target)
        os.close(saved)
