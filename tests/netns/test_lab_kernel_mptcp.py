"""The lab is a faithful place to test MPTCP: the kernel's own MPTCP on both ends uses both paths.

If this fails, no mptun test in the lab means anything: the network itself
would be what breaks multipath.
"""

import hashlib

import pytest

from mptun.lab import PathSpec
from mptun.lab.netns import run
from mptun.lab.peer import connect_in_netns, pattern_sha256, run_client, start_peer

pytestmark = pytest.mark.netns

NBYTES = 24_000_000


def _lab(make_lab):
    lab = make_lab([PathSpec.symmetric(rate_mbit=60, delay_ms=5), PathSpec.symmetric(rate_mbit=60, delay_ms=5)],
                   source_routing=True)
    lab.enable_kernel_mptcp()
    return lab


def _check_server_saw_two_subflows(lab, record):
    assert record["mptcp"] is True, record
    remotes = {sf["remote"][0] for sf in record["subflows"]}
    assert remotes == {lab.client_addr(0), lab.client_addr(1)}, record["subflows"]


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_kernel_mptcp_uses_both_paths(make_lab, direction):
    lab = _lab(make_lab)
    before = [lab.path_counters(i) for i in range(2)]
    mode = "source" if direction == "download" else "sink"
    with start_peer(lab.server, mode, 5001, nbytes=NBYTES if mode == "source" else None) as peer:
        result = run_client(lab.client, lab.server_addr, 5001, mode=mode, nbytes=NBYTES, timeout=120)
        record = peer.wait_connections(1, timeout=60)[0]
    assert result.ok, result.error
    if direction == "download":
        assert result.bytes_in == NBYTES and result.sha256_in == pattern_sha256(NBYTES)
    else:
        assert record["bytes_in"] == NBYTES and record["sha256_in"] == pattern_sha256(NBYTES)
    _check_server_saw_two_subflows(lab, record)
    key = "down_bytes" if direction == "download" else "up_bytes"
    carried = [lab.path_counters(i)[key] - before[i][key] for i in range(2)]
    # Two equal paths: each carries a real share of the data, not just a handshake.
    assert all(c > NBYTES * 0.15 for c in carried), carried


def test_kernel_mptcp_survives_a_path_going_down(make_lab):
    lab = _lab(make_lab)
    nbytes = 40_000_000

    with start_peer(lab.server, "source", 5002, nbytes=nbytes) as peer:
        sock = connect_in_netns(lab.client, lab.server_addr, 5002, timeout=60)
        digest, got, failed = hashlib.sha256(), 0, False
        with sock:
            while chunk := sock.recv(1 << 20):
                digest.update(chunk)
                got += len(chunk)
                if not failed and got > nbytes // 4:
                    run(lab.links[0], ["ip", "link", "set", "toc", "down"])
                    failed = True
        record = peer.wait_connections(1, timeout=60)[0]
    assert failed and got == nbytes and digest.hexdigest() == pattern_sha256(nbytes)
    _check_server_saw_two_subflows(lab, record)
