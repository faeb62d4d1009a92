"""Multipath (issue 8): `mptun up eth0 eth1` gives every connection a subflow on each interface, and
the connection lives on as long as one path works. The lab is issue 8's: path A 50 Mbit/s 20 ms RTT
(eth0, named first: the initial subflow's), path B 30 Mbit/s 80 ms RTT (eth1); the server is the
kernel's MPTCP. What is checked is what users see and what the server's kernel says: bytes intact
both ways (sha256), the server's subflows (ss -Mtni), the bytes each path carried (the router's
interface counters), the server's MPTCP MIB.

A forging peer (tests/netns/forger.py) stands in for the server on path B to answer a join with a
wrong HMAC, which the kernel never does; the kernel's own client is its yardstick here.
"""

import pytest

from mptun.lab.kstats import counters_delta
from mptun.lab.netns import run
from mptun.lab.peer import start_peer
from tests.netns.forger import start_forger
from tests.netns.mp_helpers import (MB, PATH_B, SERVER2, EchoConn, PathMeter, RouterCounters,
                                    assert_server_happy_multipath, capture, from_client, multipath_lab,
                                    server_subflows, tcp_segments, wait_for)
from tests.netns.mptun_helpers import MptunRunner, assert_server_happy, env, server_mib

pytestmark = pytest.mark.netns

PORT = 7000
SYN_ONLY = "tcp flags & (syn|ack) == syn"
BACKUP_IDLE_BYTES = 100_000      # what a backup path may carry meanwhile: handshakes, a few ACKs


@pytest.fixture
def mp_lab(make_lab, tmp_path):
    """make(*ifaces, b=PATH_B, extra=()) -> (lab, runner): the two-path lab with `mptun up <ifaces>`
    in the client; mptun is always taken down."""
    runners = []

    def make(*ifaces, b=PATH_B, extra=()):
        lab = multipath_lab(make_lab, b=b)
        r = MptunRunner(lab.client, str(tmp_path / f"run{len(runners)}"))
        runners.append(r)
        r.up(*ifaces, extra=tuple(extra))
        return lab, r

    yield make
    for r in runners:
        r.stop()


def two_subflows(lab) -> dict[int, dict]:
    """Wait until the server's kernel has one established subflow from each client interface to its
    main address; they are returned by path."""
    def probe():
        sfs = [s for s in server_subflows(lab, PORT) if s["local"][0] == lab.server_addr]
        by_path = {i: from_client(sfs, lab.client_addr(i)) for i in (0, 1)}
        return {i: s[0] for i, s in by_path.items()} if all(len(s) == 1 for s in by_path.values()) else None

    try:
        return wait_for("one subflow from each client interface at the server", probe)
    except AssertionError as e:
        raise AssertionError(f"{e}; the server's subflows: {server_subflows(lab, PORT)}") from None


def connection(r, port: int = PORT) -> dict:
    """mptun's status of its (one) connection to the server's port."""
    conns = [c for c in r.status()["connections"] if c["dst"].endswith(f":{port}")]
    assert len(conns) == 1, conns
    return conns[0]


def live_subflows(r) -> list[dict]:
    return [s for s in connection(r)["subflows"] if s["state"] != "closed"]


def assert_clean(r) -> dict:
    counters = r.status()["counters"]
    for bad in ("internal_errors", "malformed_options", "dss_conflicts", "unmapped_data", "segments_unmapped"):
        assert not counters.get(bad), counters
    return counters


def test_two_subflows_200mb_both_ways_each_path_its_share(mp_lab):
    lab, r = mp_lab("eth0", "eth1")
    before = server_mib(lab)
    n = 200 * MB
    with start_peer(lab.server, "echo", PORT) as peer:
        meter = PathMeter(lab)
        with EchoConn(lab, PORT) as c:
            c.start(n)
            sf = two_subflows(lab)
            # The initial subflow is A's (MP_CAPABLE, id 0); B's joined with an address ID of its own,
            # the one mptun says it gave path 1.
            assert "M" in sf[0]["flags"] and sf[0]["address_id"] == 0, sf
            assert "J" in sf[1]["flags"] and sf[1]["address_id"] not in (0, None), sf
            assert sf[1]["address_id"] in {s["address_id"] for s in live_subflows(r) if s["path"] == 1}
            c.finish(timeout=240)
        carried = meter.delta()
        rec = peer.wait_connections(1)[0]
    assert rec["mptcp"] and rec["error"] is None and rec["bytes_in"] == n, rec
    assert {s["remote"][0] for s in rec["subflows"]} == {lab.client_addr(0), lab.client_addr(1)}, rec["subflows"]
    # A 50 and B 30 Mbit/s: A should carry ~62 % each way. Tolerant: both a real share, A the larger.
    for way in ("up", "down"):
        a, b = carried[0][way], carried[1][way]
        assert a > b and min(a, b) > 0.2 * (a + b), f"{way}: A {a} B {b} bytes ({carried})"
    assert_server_happy(before, server_mib(lab))
    assert assert_clean(r).get("subflows_joined", 0) >= 1


@pytest.mark.parametrize("how", ["link", "address"])
@pytest.mark.parametrize("path", [0, 1], ids=["initial-A", "join-B"])
def test_path_dies_mid_transfer_and_comes_back(mp_lab, path, how):
    """Path A (the initial subflow's) or B (a join's) loses its link or its address mid-transfer: the
    transfer goes on over the other path with no reset; mptun tells the server (REMOVE_ADDR), and
    when the path is back a new subflow joins on it and carries data again."""
    lab, r = mp_lab("eth0", "eth1")
    addr = lab.client_addr(path)
    fail, restore = {"link": (lambda: lab.set_client_link(path, False), lambda: lab.set_client_link(path, True)),
                     "address": (lambda: lab.set_client_address(path, False),
                                 lambda: lab.set_client_address(path, True))}[how]
    before = server_mib(lab)
    n = 48 * MB
    with start_peer(lab.server, "echo", PORT) as peer:
        with EchoConn(lab, PORT) as c:
            c.start(n)
            old_port = two_subflows(lab)[path]["remote"][1]
            c.wait_received(n * 15 // 100)
            fail()
            wait_for(f"the server's kernel drops the subflow from {addr} (REMOVE_ADDR)",
                     lambda: not from_client(server_subflows(lab, PORT), addr), timeout=5)
            c.wait_received(n * 30 // 100)
            restore()
            wait_for(f"a new subflow from {addr} at the server",
                     lambda: [s for s in from_client(server_subflows(lab, PORT), addr) if s["remote"][1] != old_port])
            meter = PathMeter(lab)
            c.finish()
        carried = meter.delta()[path]
        rec = peer.wait_connections(1)[0]
    assert rec["mptcp"] and rec["error"] is None and rec["bytes_in"] == n, rec
    # The returned path carries data again, both ways (a 5 % floor of the transfer: it had ~70 % left).
    assert min(carried.values()) > 0.05 * n, f"path {path} carried {carried} after it came back"
    after = server_mib(lab)
    assert counters_delta(before, after).get("RmAddr", 0) >= 1, counters_delta(before, after)
    assert_server_happy_multipath(before, after)
    assert assert_clean(r).get("subflows_joined", 0) >= 2


def test_backup_path_idles_until_the_regular_one_fails(mp_lab):
    lab, r = mp_lab("eth0", "eth1:backup")
    before = server_mib(lab)
    n = 24 * MB
    with start_peer(lab.server, "echo", PORT) as peer:
        meter = PathMeter(lab)
        with EchoConn(lab, PORT) as c:
            c.start(n)
            sf = two_subflows(lab)
            assert sf[1]["backup"] and not sf[0]["backup"], f"the server's view of the roles: {sf}"
            c.wait_received(n * 40 // 100)
            idle = meter.delta()[1]
            assert max(idle.values()) < BACKUP_IDLE_BYTES, f"the backup path carried {idle} while A worked"
            lab.set_client_link(0, False)
            meter.reset()
            c.finish()
        took_over = meter.delta()[1]
        rec = peer.wait_connections(1)[0]
    assert rec["mptcp"] and rec["error"] is None and rec["bytes_in"] == n, rec
    # Once A is gone, B carries the rest (60 % of the transfer, less what was in flight).
    assert min(took_over.values()) > 0.5 * n, f"the backup path carried only {took_over} after A failed"
    assert_server_happy_multipath(before, server_mib(lab))
    assert_clean(r)


def test_set_changes_roles_on_a_live_connection(mp_lab):
    """`mptun set IFACE backup|regular` while up: MP_PRIO reaches the server (its subflow's backup
    flag follows), and the path that became backup stops carrying data."""
    lab, r = mp_lab("eth0", "eth1")
    before = server_mib(lab)

    def roles():
        sf = {i: from_client(server_subflows(lab, PORT), lab.client_addr(i)) for i in (0, 1)}
        return {i: s[0]["backup"] for i, s in sf.items() if s}

    def exchange(c, nbytes):
        meter = PathMeter(lab)
        c.start(nbytes)
        c.finish()
        return meter.delta()

    with start_peer(lab.server, "echo", PORT):
        with EchoConn(lab, PORT) as c:
            c.start(4 * MB)
            two_subflows(lab)
            c.finish()
            assert roles() == {0: False, 1: False}
            for iface, role, expect, idle_path in (("eth1", "backup", {0: False, 1: True}, 1),
                                                   ("eth1", "regular", {0: False, 1: False}, None),
                                                   ("eth0", "backup", {0: True, 1: False}, 0)):
                r.cmd("set", iface, role, check=True)
                wait_for(f"the server sees {iface} as {role} (MP_PRIO)", lambda: roles() == expect and roles(),
                         timeout=5)
                carried = exchange(c, 12 * MB)
                for i in (0, 1):
                    if i == idle_path:
                        assert max(carried[i].values()) < BACKUP_IDLE_BYTES, f"backup path {i}: {carried}"
                    else:
                        assert min(carried[i].values()) > 0.15 * 12 * MB, f"regular path {i}: {carried}"
    after = server_mib(lab)
    assert counters_delta(before, after).get("MPPrioRx", 0) >= 3, counters_delta(before, after)
    assert_server_happy(before, after)
    assert_clean(r)


def forged_join_story(forger) -> dict[int, dict]:
    """Per client port the forger answered: what the client sent back on that subflow."""
    story = {e["sport"]: {"rst": None, "third_ack": False, "payload": 0} for e in forger.events("synack")}
    for e in forger.events("segment"):
        s = story.get(e["sport"])
        if s is None:
            continue
        s["third_ack"] |= e["join_third_ack"]
        s["payload"] += e["payload"]
        if "R" in e["flags"] and s["rst"] is None:
            s["rst"] = e
    return story


def wait_forged_joins_reset(forger, who: str) -> dict[int, dict]:
    """Until the forger answered a join and every subflow it answered was reset; their stories."""
    def probe():
        story = forged_join_story(forger)
        return story if story and all(s["rst"] for s in story.values()) else None

    try:
        return wait_for(f"{who}'s join on path B answered by the forger, then reset", probe)
    except AssertionError as e:
        raise AssertionError(f"{e}; what the client sent on the forged subflows: {forged_join_story(forger)}") from None


def check_forged_synack_arrived(segments, client_addr):
    """The client's interface saw the forger's SYN/ACK: MP_JOIN, option length 16 (a truncated HMAC)."""
    forged = [s for s in segments if s["dst"] == client_addr and s["flags"] == "SA"]
    assert forged and all(any(b[0] >> 4 == 1 and len(b) == 14 for b in s["mptcp"]) for s in forged), segments


def test_a_join_with_a_wrong_hmac_never_becomes_a_subflow(mp_lab, tmp_path):
    """The forger answers mptun's join on path B in the server's place (the server never sees it):
    mptun must count the wrong HMAC, reset that subflow with MP_TCPRST and never send its third ACK
    or data on it, while the connection goes on over A."""
    lab, r = mp_lab("eth0", "eth1")
    before = server_mib(lab)
    n = 20 * MB
    with start_peer(lab.server, "echo", PORT) as peer, start_forger(lab, 1, PORT, env()) as forger, \
            capture(lab.client, "eth1", f"tcp port {PORT}", str(tmp_path / "eth1.pcap")) as pcap:
        with EchoConn(lab, PORT) as c:
            c.start(n)
            wait_forged_joins_reset(forger, "mptun")
            c.finish()
            counters = r.status()["counters"]
            sf = live_subflows(r)
        rec = peer.wait_connections(1)[0]
        story = forged_join_story(forger)
    assert rec["error"] is None and rec["bytes_in"] == n, rec
    for port, s in story.items():
        assert s["rst"] and s["rst"]["mp_tcprst"], f"subflow {port}: no RST with MP_TCPRST: {s}"
        assert not s["third_ack"] and s["payload"] == 0, f"subflow {port} went on after a wrong HMAC: {s}"
    assert not [s for s in sf if s["path"] == 1 and s["state"] == "established"], sf
    assert 1 <= counters.get("join_hmac_failures", 0) <= len(forger.events("synack")), counters
    check_forged_synack_arrived(tcp_segments(pcap), lab.client_addr(1))
    assert_server_happy(before, server_mib(lab))


def test_the_forger_is_caught_by_the_kernels_own_client(make_lab, tmp_path):
    """Yardstick of the forger: the kernel's MPTCP client, joining on path B, counts a wrong HMAC
    and resets with MP_TCPRST; the test above expects the same of mptun."""
    from mptun.lab.kstats import mptcp_counters

    lab = multipath_lab(make_lab, source_routing=True)
    lab.enable_kernel_mptcp()
    before = mptcp_counters(lab.client)
    with start_peer(lab.server, "echo", PORT), start_forger(lab, 1, PORT, env()) as forger, \
            capture(lab.client, "eth1", f"tcp port {PORT}", str(tmp_path / "eth1.pcap")) as pcap:
        with EchoConn(lab, PORT, mptcp=True) as c:
            c.start(2 * MB)
            story = wait_forged_joins_reset(forger, "the kernel")
            c.finish()
    assert all(s["rst"]["mp_tcprst"] and not s["third_ack"] for s in story.values()), story
    assert counters_delta(before, mptcp_counters(lab.client)).get("MPJoinSynAckHMacFailure") == len(story)
    check_forged_synack_arrived(tcp_segments(pcap), lab.client_addr(1))


def test_server_announced_address_gets_subflows_until_removed(mp_lab):
    """The server announces a second address (ADD_ADDR): mptun opens subflows to it from each
    interface; the server withdraws it (REMOVE_ADDR): they close and are not reopened."""
    lab, r = mp_lab("eth0", "eth1")
    run(lab.server, ["ip", "addr", "add", f"{SERVER2}/24", "dev", "eth0"])
    run(lab.server, ["ip", "mptcp", "endpoint", "add", SERVER2, "id", "5", "dev", "eth0", "signal"])
    syns = RouterCounters(lab, "to_server2", {"joins": f"ip daddr {SERVER2} {SYN_ONLY}"})
    before = server_mib(lab)
    n = 30 * MB

    def to_server2():
        return [s for s in server_subflows(lab, PORT) if s["local"][0] == SERVER2]

    with start_peer(lab.server, "echo", PORT) as peer:
        with EchoConn(lab, PORT) as c:
            c.start(n)
            two_subflows(lab)
            wait_for(f"subflows to {SERVER2} from both client interfaces at the server",
                     lambda: {s["remote"][0] for s in to_server2()} == {lab.client_addr(0), lab.client_addr(1)})
            c.wait_received(n * 40 // 100)
            run(lab.server, ["ip", "mptcp", "endpoint", "del", "id", "5"])
            wait_for(f"the subflows to {SERVER2} gone at the server", lambda: not to_server2(), timeout=5)
            wait_for("mptun closes them too", lambda: len(live_subflows(r)) == 2 or None, timeout=5)
            joins_at_removal = syns.read()["joins"]
            c.finish()
            assert syns.read()["joins"] == joins_at_removal, "mptun joined a withdrawn address again"
            assert len(live_subflows(r)) == 2, live_subflows(r)
        rec = peer.wait_connections(1)[0]
    assert rec["error"] is None and rec["bytes_in"] == n, rec
    moved = counters_delta(before, server_mib(lab))
    assert moved.get("AddAddrTx", 0) >= 1 and moved.get("RmAddrTx", 0) >= 1, moved
    assert moved.get("EchoAdd", 0) >= 1, f"mptun never echoed the ADD_ADDR: {moved}"
    assert_server_happy_multipath(before, server_mib(lab))
    assert_clean(r)


@pytest.mark.parametrize("scheduler", ["lowrtt", "roundrobin", "redundant", "blest"])
def test_one_percent_loss_on_path_b_is_intact(mp_lab, scheduler):
    lab, r = mp_lab("eth0", "eth1", b=PATH_B + ",loss=1%", extra=("--scheduler", scheduler))
    before = server_mib(lab)
    n = 12 * MB
    with start_peer(lab.server, "echo", PORT) as peer:
        with EchoConn(lab, PORT) as c:
            c.start(n)
            two_subflows(lab)
            c.finish()
        rec = peer.wait_connections(1)[0]
    assert rec["error"] is None and rec["bytes_in"] == n, rec
    assert sum(lab.loss_counters().values()) > 0, lab.loss_counters()
    after = server_mib(lab)
    if scheduler == "redundant":
        # Every chunk went on both subflows: the server's kernel threw the second copies away.
        assert counters_delta(before, after).get("DuplicateData", 0) > 0, counters_delta(before, after)
    assert_server_happy(before, after)
    assert_clean(r)


def test_plain_tcp_server_falls_back_without_joins(mp_lab):
    lab, r = mp_lab("eth0", "eth1")
    syns = RouterCounters(lab, "plain_syns", {f"p{i}": f'iifname "p{i}" {SYN_ONLY}' for i in (0, 1)})
    with start_peer(lab.server, "echo", PORT, plain=True) as peer:
        with EchoConn(lab, PORT) as c:
            c.start(8 * MB)
            c.finish()
        rec = peer.wait_connections(1)[0]
    assert rec["mptcp"] is False and rec["error"] is None and rec["bytes_in"] == 8 * MB, rec
    assert connection(r)["mode"] == "fallback"
    # One connection, plain TCP, on path A; nobody tried to join it on B.
    assert syns.read() == {"p0": 1, "p1": 0}
    assert r.status()["counters"]["fallback_no_mp_capable"] == 1
