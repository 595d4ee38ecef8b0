"""One error hierarchy, split by whose fault it is (the h11 convention).

* :class:`UsageError` — the caller (operator or local code) asked for something invalid.
* :class:`PeerError` — a remote party (client, peer member) sent bad input.
* :class:`CorruptionError` — on-disk state is damaged; fatal, never silently repaired.
"""

from __future__ import annotations


class SecureKVError(Exception):
    """Base of every error securekv raises on purpose."""


class UsageError(SecureKVError):
    """Invalid request or configuration from the local operator or calling code."""


class PeerError(SecureKVError):
    """Invalid input received from a remote client or member."""


class CorruptionError(SecureKVError):
    """Persistent state failed an integrity check; the process must not continue on it."""


class DiskFullError(SecureKVError):
    """The file system holding the data is full (ENOSPC, EDQUOT, SQLITE_FULL).

    Nothing written before is damaged and nothing acknowledged is lost; the write that failed
    was never acknowledged. A member stops (as etcd does) and recovers when restarted after
    space was freed.
    """
