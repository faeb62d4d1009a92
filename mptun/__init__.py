"""mptun: Multipath TCP (RFC 8684) for every unmodified application on a Linux host."""

__version__ = "0.1.0"
