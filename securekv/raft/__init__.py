"""Sans-IO Raft consensus core (the shape of etcd-io/raft). See docs/raft.md."""

from __future__ import annotations

from .config import Config, Rng
from .errors import (
    CompactedError,
    DropReason,
    ProposalDropped,
    RaftError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailable,
    StepLocalMessage,
    StorageError,
    UnavailableError,
)
from .rawnode import BasicStatus, ProgressView, RawNode, Status
from .storage import MemoryStorage, Storage, bootstrap_entries
from .types import (
    EMPTY_HARD_STATE,
    EMPTY_SNAPSHOT,
    LOCAL_MESSAGES,
    NONE,
    RESPONSE_MESSAGES,
    SEND_BEFORE_PERSIST,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)

__all__ = [
    "BasicStatus", "CompactedError", "Config", "DropReason", "ConfChange", "ConfChangeType", "ConfState", "EMPTY_HARD_STATE",
    "EMPTY_SNAPSHOT", "Entry", "EntryType", "HardState", "LOCAL_MESSAGES", "MemoryStorage",
    "Message", "MessageType", "NONE", "ProgressView", "ProposalDropped", "RESPONSE_MESSAGES",
    "RaftError", "RawNode", "ReadState", "Ready", "Rng", "Role", "SEND_BEFORE_PERSIST",
    "Snapshot",
    "SnapshotMetadata", "SnapshotOutOfDateError", "SnapshotTemporarilyUnavailable", "SoftState",
    "Status", "StepLocalMessage", "Storage", "StorageError", "UnavailableError", "bootstrap_entries",
]
