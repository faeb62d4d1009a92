"""Lab path specifications: parsing and validation, without building anything."""

import pytest

from mptun.lab import Lab, PathSpec
from mptun.lab.spec import Direction
from mptun.lab.topology import path_addrs


def test_bad_specs_are_refused_before_anything_is_built():
    with pytest.raises(ValueError):
        PathSpec.parse("rate=fast")
    with pytest.raises(ValueError):
        PathSpec.parse("loss=150")
    with pytest.raises(ValueError):
        PathSpec.parse("jitter=5ms")
    with pytest.raises(ValueError):
        Lab([])
    with pytest.raises(ValueError):
        Lab([PathSpec()], name="bad name!")


def test_path_spec_parsing():
    p = PathSpec.parse("rate=50mbit,delay=10ms,loss=0.5%,queue=100kb,up-rate=10")
    assert p.down == Direction(50, 10, 0.5, 100_000)
    assert p.up == Direction(10, 10, 0.5, 100_000)
    assert PathSpec.parse("rate=1gbit").up.rate_mbit == 1000


def test_queue_default_is_50ms_at_the_rate_and_at_least_64kb():
    assert Direction(rate_mbit=100).tbf_limit == 625_000
    assert Direction(rate_mbit=1).tbf_limit == 64 * 1024
    assert Direction(rate_mbit=1, queue_bytes=3000).tbf_limit == 3000


def test_addresses_stay_in_the_benchmarking_ranges():
    import ipaddress
    v4 = ipaddress.ip_network("198.18.0.0/15")
    v6 = ipaddress.ip_network("2001:2::/48")
    for i in range(16):
        a = path_addrs(i)
        assert ipaddress.ip_address(a["client4"]) in v4 and ipaddress.ip_address(a["router4"]) in v4
        assert ipaddress.ip_address(a["client6"]) in v6 and ipaddress.ip_address(a["router6"]) in v6
    with pytest.raises(ValueError):
        Lab([PathSpec()] * 17)
