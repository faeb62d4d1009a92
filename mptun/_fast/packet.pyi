"""Type stub of the compiled mptun._fast.packet (src/fastpath/packet.pyx); same API as mptun.pure.packet.

tests/unit/test_build.py checks that it names exactly the module's public API.
"""

from typing import Any

from typing_extensions import Buffer

PACKET_REASON_NAMES: tuple[str, ...]

def parse_packet(data: Buffer) -> dict[str, Any]: ...
