"""The app-side NAT ("system stack", as sing-box and clash do it): not MPTCP, so not in core.

An app's TCP connection is terminated by the host kernel through NAT: its packets are rewritten to
a local listener, the listener's answers rewritten back to look like its destination.
"""

from mptun.nat.appleg import AppLeg, AppLegTable

__all__ = ["AppLeg", "AppLegTable"]
