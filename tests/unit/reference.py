"""Independent, deliberately slow reference arithmetic that the tests check the datapath against."""


def ref_sum(data: bytes) -> int:
    """Folded ones-complement sum, computed the slow obvious way (RFC 1071 section 4.1)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF
