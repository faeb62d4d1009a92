"""Fixtures of the netns tier: labs with names unique to this test run, always torn down."""

import os
import re
import secrets

import pytest

from mptun.lab import Lab, teardown
from mptun.lab.netns import list_namespaces, run
from mptun.lab.peer import write_pattern_file
from tests.conftest import require_commands, require_root

# Every lab of this run is named mpt-t<RUN>-<n>, so a final sweep finds leftovers.
RUN_ID = secrets.token_hex(2)
_counter = iter(range(1_000_000))


def lab_name() -> str:
    return f"mpt-t{RUN_ID}-{next(_counter)}"


ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "artifacts")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _save_state(lab, test_name: str) -> str:
    """What the kernels saw when a test failed: sockets, MPTCP counters, qdiscs, loss counters."""
    folder = os.path.join(ARTIFACTS, re.sub(r"[^\w.-]+", "_", test_name))
    os.makedirs(folder, exist_ok=True)
    commands = {
        "ss": ["ss", "-tniaM"], "mptcp-endpoints": ["ip", "mptcp", "endpoint", "show"],
        "nstat": ["nstat", "-az"], "addr": ["ip", "addr"], "route": ["ip", "route", "show", "table", "all"],
        "rule": ["ip", "rule"], "tc": ["tc", "-s", "qdisc"], "nft": ["nft", "list", "ruleset"],
    }
    for ns in (lab.client, lab.router, lab.server, *lab.links):
        with open(os.path.join(folder, f"{ns}.txt"), "w") as f:
            for title, argv in commands.items():
                out = run(ns, argv, check=False)
                f.write(f"### {title}\n{out.stdout}{out.stderr}\n")
    return folder


@pytest.fixture
def make_lab(request):
    """make_lab(paths, **kw) -> a running Lab, removed after the test whatever happens.

    When the test fails, the state of every namespace is saved under artifacts/<test>/ first.
    """
    require_root()
    require_commands("ip", "tc", "nft", "ethtool")
    labs = []

    def make(paths, **kw):
        lab = Lab(paths, name=lab_name(), **kw)
        labs.append(lab)
        return lab.up()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for lab in labs:
        if rep is not None and rep.failed and lab.state.namespaces:
            try:
                print(f"lab state saved in {_save_state(lab, request.node.name)}")
            except Exception as e:  # saving evidence must not hide the failure
                print(f"could not save lab state: {e}")
        lab.down()


@pytest.fixture
def served_file(tmp_path):
    """served_file(nbytes, name="file.bin") -> (directory, sha256): a pattern file in tmp_path/www,
    the directory an http peer serves."""
    directory = tmp_path / "www"

    def serve(nbytes: int, name: str = "file.bin") -> tuple[str, str]:
        directory.mkdir(exist_ok=True)
        return str(directory), write_pattern_file(str(directory / name), nbytes)

    return serve


@pytest.fixture(scope="session", autouse=True)
def sweep_leftover_labs():
    yield
    if os.geteuid() != 0:
        return
    leftovers = {n.rsplit("-", 1)[0] for n in list_namespaces(prefix=f"mpt-t{RUN_ID}-")}
    for name in leftovers:
        teardown(name)
