"""Errors raised by the Raft core. All derive from :class:`securekv.errors.SecureKVError`."""

from __future__ import annotations

import enum

from securekv.errors import SecureKVError, UsageError


class RaftError(SecureKVError):
    """Base of the Raft core's errors."""


class DropReason(enum.Enum):
    """Why a proposal, conf change or ReadIndex request was refused: callers branch on this,
    never on the message text."""

    NO_LEADER = "no leader"
    TRANSFERRING = "leadership transfer in progress"
    CONF_CHANGE_PENDING = "a conf change is already pending"
    TOO_MANY_UNCOMMITTED = "uncommitted entries exceed max_uncommitted_entries_size"
    BAD_CONF_CHANGE = "bad conf change"
    REMOVED = "this node was removed from the cluster"


class ProposalDropped(RaftError):
    """A proposal, conf change or ReadIndex request could not be accepted (no leader, leader
    transfer in progress, a conf change already pending, too many uncommitted bytes...).

    The request had no effect; the caller may retry later, possibly on another node.
    ``reason`` says why (a :class:`DropReason`); the message is for people.
    """

    def __init__(self, reason: DropReason, detail: str = "", *, read: bool = False) -> None:
        what = "raft read index dropped" if read else "raft proposal dropped"
        text = f"{what}: {reason.value}" + (f": {detail}" if detail else "")
        super().__init__(text)
        self.reason = reason


class StepLocalMessage(RaftError, UsageError):
    """A local-only message type (HUP, BEAT, ...) was passed to ``RawNode.step``."""


class StorageError(RaftError):
    """Base of the errors a :class:`securekv.raft.storage.Storage` raises by contract."""


class CompactedError(StorageError):
    """The requested index is older than the storage's first index (compacted away)."""

    def __init__(self, message: str = "requested index is unavailable due to compaction") -> None:
        super().__init__(message)


class UnavailableError(StorageError):
    """The requested index is newer than the storage's last index."""

    def __init__(self, message: str = "requested entry at index is unavailable") -> None:
        super().__init__(message)


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the current one was offered to the storage."""

    def __init__(self, message: str = "requested index is older than the existing snapshot") -> None:
        super().__init__(message)


class SnapshotTemporarilyUnavailable(StorageError):
    """The storage cannot produce a snapshot right now; the leader retries later."""

    def __init__(self, message: str = "snapshot is temporarily unavailable") -> None:
        super().__init__(message)
