"""Shared fixtures: implementation twins, root/netns gating."""

import os
import shutil

import pytest

from mptun import impl


@pytest.fixture(scope="session", params=impl.KINDS)
def impl_kind(request):
    """Runs a test once on the compiled datapath and once on its pure-Python twin."""
    return request.param


def require_root():
    """Skip, with the reason printed, where the netns tier cannot run; CI runs as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN) for network namespaces; CI runs as root")


def require_commands(*names):
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")
