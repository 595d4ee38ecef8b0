"""Member and cluster IDs by etcd's formula, so they match what etcd would compute."""

from __future__ import annotations

import hashlib
import struct
from typing import Iterable


def member_id(peer_urls: Iterable[str], cluster_token: str, now_seconds: int | None = None) -> int:
    """First 8 bytes (big-endian) of sha1(sorted peer URLs + token [+ unix seconds])."""
    data = "".join(sorted(peer_urls)).encode() + cluster_token.encode()
    if now_seconds is not None:
        data += str(now_seconds).encode()
    return struct.unpack(">Q", hashlib.sha1(data).digest()[:8])[0]


def cluster_id(member_ids: Iterable[int]) -> int:
    """First 8 bytes of sha1 over the sorted member IDs, each as 8 big-endian bytes."""
    data = b"".join(struct.pack(">Q", m) for m in sorted(member_ids))
    return struct.unpack(">Q", hashlib.sha1(data).digest()[:8])[0]
