"""The network configuration edge of mptun: `up` applies it, `down` undoes it exactly.

up(NetConfig([...])) discovers the interfaces, builds a plan (pure), performs it
while journaling every undo, and returns the open TUN; down(tun_name) undoes the
journal, also after the daemon was killed. docs/netcfg.md explains the layout.
"""

from mptun.netcfg.apply import Applied, down, is_up, up
from mptun.netcfg.config import Layout, NetConfig
from mptun.netcfg.errors import NetcfgError
from mptun.netcfg.interfaces import Host, Interface, discover, resolve_gateway_mac
from mptun.netcfg.journal import JOURNAL_DIR, journal_path
from mptun.netcfg.plan import Plan, build_plan
from mptun.netcfg.tun import TunDevice

__all__ = ["Applied", "Host", "Interface", "JOURNAL_DIR", "Layout", "NetConfig", "NetcfgError", "Plan",
           "TunDevice", "build_plan", "discover", "down", "is_up", "journal_path", "resolve_gateway_mac", "up"]
