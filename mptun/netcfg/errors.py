"""The one exception netcfg raises for failures a user can cause or fix.

Its message is a single line meant to be printed as is (`mptun: <message>`).
"""


class NetcfgError(RuntimeError):
    """A configuration step cannot be done; str(e) is one line for the user."""

    def __init__(self, message: str):
        assert "\n" not in message, message
        super().__init__(message)
