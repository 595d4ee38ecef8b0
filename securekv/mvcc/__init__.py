"""MVCC keyspace with etcd 3.4's semantics: an in-memory index over records read through an
injected RecordReader (pure: no I/O). See docs/mvcc.md."""

from .keys import FROM_KEY, in_range, prefix_end
from .kv import KVOutcome, is_txn_readonly
from .quota import DEFAULT_QUOTA_BYTES, effective_quota, request_cost
from .records import MemoryRecords, RecordReader, RevPairs
from .store import Change, IndexStats, KVWriteBatch, MVCCStore, Rec, RevisionRow, WriteTxn
from .validate import (
    DEFAULT_MAX_TXN_OPS,
    validate_compaction,
    validate_delete_range,
    validate_put,
    validate_range,
    validate_txn,
)

__all__ = [
    "DEFAULT_MAX_TXN_OPS",
    "DEFAULT_QUOTA_BYTES",
    "FROM_KEY",
    "Change",
    "IndexStats",
    "KVOutcome",
    "KVWriteBatch",
    "MVCCStore",
    "MemoryRecords",
    "RecordReader",
    "RevPairs",
    "Rec",
    "RevisionRow",
    "WriteTxn",
    "effective_quota",
    "in_range",
    "is_txn_readonly",
    "prefix_end",
    "request_cost",
    "validate_compaction",
    "validate_delete_range",
    "validate_put",
    "validate_range",
    "validate_txn",
]
