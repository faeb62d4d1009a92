"""Rules and routes: pyroute2 requests built from plan operations, and their removal.

The builders are pure (an operation in, keyword arguments out). Removal sends the
same request the creation sent, so the kernel matches exactly the object mptun
made (same priority, selectors, table; same destination, type, scope, next hop).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Network

from pyroute2 import IPRoute

from mptun.netcfg.plan import AddRoute, AddRule

RTPROT_STATIC = 4
RT_SCOPE = {"universe": 0, "link": 253}


def rule_request(op: AddRule) -> dict:
    src = IPv4Network(op.src)
    req = dict(family=socket.AF_INET, priority=op.priority, table=op.table, action="FR_ACT_TO_TBL",
               src=str(src.network_address), src_len=src.prefixlen)
    if op.iif:
        req["iifname"] = op.iif
    if op.ipproto:
        req["ip_proto"] = op.ipproto
    if op.fwmask is not None:
        req["fwmark"] = op.fwmark
        req["fwmask"] = op.fwmask
    if op.suppress_prefixlen is not None:
        req["suppress_prefixlen"] = op.suppress_prefixlen
    return req


def route_request(op: AddRoute, index_of: Callable[[str], int]) -> dict:
    req = dict(family=socket.AF_INET, table=op.table, dst=op.dst, type=op.type, proto=RTPROT_STATIC,
               scope=RT_SCOPE[op.scope])
    if op.dev:
        req["oif"] = index_of(op.dev)
    if op.gateway:
        req["gateway"] = op.gateway
    if op.src:
        req["prefsrc"] = op.src
    if op.metric is not None:
        req["priority"] = op.metric
    metrics = {k: v for k, v in (("mtu", op.mtu), ("advmss", op.advmss)) if v}
    if metrics:
        req["metrics"] = metrics
    return req


def add_rule(ipr: IPRoute, op: AddRule) -> None:
    ipr.rule("add", **rule_request(op))


def del_rule(ipr: IPRoute, op: AddRule) -> None:
    ipr.rule("del", **rule_request(op))


def add_route(ipr: IPRoute, op: AddRoute, index_of: Callable[[str], int]) -> None:
    ipr.route("add", **route_request(op, index_of))


def del_route(ipr: IPRoute, op: AddRoute, index_of: Callable[[str], int]) -> None:
    ipr.route("del", **route_request(op, index_of))
