"""Fixtures of the netns tier: labs with names unique to this test run, always torn down."""

import os
import secrets

import pytest

from mptun.lab import Lab, teardown
from mptun.lab.netns import list_namespaces
from tests.conftest import require_commands, require_root

# Every lab of this run is named mpt-t<RUN>-<n>, so a final sweep finds leftovers.
RUN_ID = secrets.token_hex(2)
_counter = iter(range(1_000_000))


def lab_name() -> str:
    return f"mpt-t{RUN_ID}-{next(_counter)}"


@pytest.fixture
def make_lab():
    """make_lab(paths, **kw) -> a running Lab, removed after the test whatever happens."""
    require_root()
    require_commands("ip", "tc", "nft", "ethtool")
    labs = []

    def make(paths, **kw):
        lab = Lab(paths, name=lab_name(), **kw)
        labs.append(lab)
        return lab.up()

    yield make
    for lab in labs:
        lab.down()


@pytest.fixture(scope="session", autouse=True)
def sweep_leftover_labs():
    yield
    if os.geteuid() != 0:
        return
    leftovers = {n.rsplit("-", 1)[0] for n in list_namespaces(prefix=f"mpt-t{RUN_ID}-")}
    for name in leftovers:
        teardown(name)
