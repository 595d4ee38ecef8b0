"""In-memory MVCC keyspace with etcd 3.4's semantics (pure: no I/O). See docs/mvcc.md."""

from .keys import FROM_KEY, in_range, prefix_end
from .kv import KVOutcome, is_txn_readonly
from .quota import DEFAULT_QUOTA_BYTES, effective_quota, request_cost
from .store import Change, KVWriteBatch, MVCCStore, Rec, RevisionRow, WriteTxn
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
    "KVOutcome",
    "KVWriteBatch",
    "MVCCStore",
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
