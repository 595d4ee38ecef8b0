"""etcd's key-range conventions, in one place."""

from __future__ import annotations

#: ``range_end`` meaning "every key >= key" (etcd's ``mkGteRange``).
FROM_KEY = b"\x00"


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's getPrefix).

    The last byte below 0xff is incremented and the rest dropped; an all-0xff (or empty) prefix
    has no upper bound and gives ``b"\\0"``.
    """
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return FROM_KEY


def in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    """Whether ``k`` is selected by (key, range_end) in etcd's request convention."""
    if not range_end:
        return k == key
    if range_end == FROM_KEY:
        return k >= key
    return key <= k < range_end
