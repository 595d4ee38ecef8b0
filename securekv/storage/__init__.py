"""On-disk state of a member: write-ahead log, sqlite backend, data-dir lock (I/O adapters)."""

from .backend import Backend, BackendReader, Lease, Revision, WriteBatch
from .lock import DirLock, lock_data_dir
from .records import HardState, Metadata, SnapshotMarker, WalEntry
from .wal import WAL, ReadResult

__all__ = [
    "WAL", "ReadResult", "WalEntry", "HardState", "SnapshotMarker", "Metadata",
    "Backend", "BackendReader", "WriteBatch", "Revision", "Lease", "DirLock", "lock_data_dir",
]
