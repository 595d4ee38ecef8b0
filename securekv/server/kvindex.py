"""Build the MVCC store from the backend at start, and persist its key-index checkpoints.

Start-up reads the last complete index checkpoint (securekv/mvcc/checkpoint.py) and replays
only the rows written after it began, so its cost follows the number of keys, not the length
of the history. Without a usable checkpoint (a data dir from before checkpoints, a restored
etcd snapshot, a damaged chunk) it rebuilds the index from every row once, and the first
checkpoint follows soon after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import attrs

from securekv.mvcc import MVCCStore
from securekv.mvcc.checkpoint import (BUCKET, DROPPED_BUCKET, HEAD_KEY, CheckpointHead, IndexCheckpointer,
                                      ItemChanges, chunk_key, decode_keys, parse_chunk_key, parse_dropped_key)
from securekv.mvcc.keyindex import ChunkError
from securekv.storage import Backend, WriteBatch
from securekv.storage.backend import BackendReader

log = logging.getLogger(__name__)

#: At shutdown, checkpoint when a restart would replay at least this many revisions ...
FINAL_CHECKPOINT_MIN = 1_000
#: ... or fewer, but at least one per this many keys the checkpoint would have to write.
FINAL_CHECKPOINT_KEYS_PER_REVISION = 50


@attrs.frozen
class Loaded:
    store: MVCCStore
    checkpointer: IndexCheckpointer
    seconds: float
    from_checkpoint: bool


def _compact_revision(backend: Backend) -> int:
    compact = backend.get_meta("compact_revision")
    return int(compact) if isinstance(compact, int) else -1


def load_store(backend: Backend, reader: BackendReader, *, value_cache_bytes: int) -> Loaded:
    """The store over ``reader``, its index from the last checkpoint plus the rows after it."""
    started = time.monotonic()
    compact = _compact_revision(backend)
    head = CheckpointHead.decode(dict(_items(backend, BUCKET, only=HEAD_KEY)).get(HEAD_KEY))
    chunk_keys = [k for k in _keys(backend, BUCKET) if k != HEAD_KEY]
    if head is not None:
        wanted = {chunk_key(head.gen, i) for i in range(head.chunks)}
        if not wanted <= set(chunk_keys):
            log.warning("key index checkpoint %d is incomplete: rebuilding the index from every row", head.gen)
            head = None
    stray = [k for k in chunk_keys if head is None or _stray(k, head)]
    dropped = []
    for key, blob in _items(backend, DROPPED_BUCKET):
        rev = parse_dropped_key(key)
        if rev is not None:
            dropped.append((rev, decode_keys(blob)))
    store = None
    if head is not None:
        try:
            store = MVCCStore.load(
                reader, chunks=_chunks(backend, head), start_revision=head.start, checkpoint_compact=head.compact,
                dropped=dropped, tail=backend.iter_revisions(min_main=head.start + 1), compact_revision=compact,
                value_cache_bytes=value_cache_bytes)
        except ChunkError as exc:
            log.warning("key index checkpoint %d is damaged (%s): rebuilding the index from every row", head.gen, exc)
            stray = chunk_keys
            head = None
    from_checkpoint = store is not None
    if store is None:
        store = MVCCStore.restore(backend.iter_revisions(), compact_revision=compact, records=reader,
                                  value_cache_bytes=value_cache_bytes)
        store.dropped_records.extend(rev for rev, _ in dropped)
    checkpointer = IndexCheckpointer(store, head, stray)
    seconds = time.monotonic() - started
    stats = store.stats()
    log.info("key index loaded in %.2fs (%s): %d keys, %d revisions, revision %d", seconds,
             "checkpoint + tail" if from_checkpoint else "rebuilt from every row", stats.keys, stats.revisions,
             store.current_revision)
    return Loaded(store, checkpointer, seconds, from_checkpoint)


def _stray(key: bytes, head: CheckpointHead) -> bool:
    parsed = parse_chunk_key(key)
    return parsed is None or parsed[0] != head.gen or parsed[1] >= head.chunks


def _keys(backend: Backend, bucket: str) -> list[bytes]:
    return [bytes(k) for (k,) in backend.conn.execute("SELECT key FROM item WHERE bucket=? ORDER BY key",
                                                      (bucket,)).fetchall()]


def _items(backend: Backend, bucket: str, only: bytes | None = None) -> list[tuple[bytes, bytes]]:
    if only is not None:
        rows = backend.conn.execute("SELECT key, value FROM item WHERE bucket=? AND key=?", (bucket, only)).fetchall()
    else:
        rows = backend.conn.execute("SELECT key, value FROM item WHERE bucket=? ORDER BY key", (bucket,)).fetchall()
    return [(bytes(k), bytes(v)) for k, v in rows]


def _chunks(backend: Backend, head: CheckpointHead) -> Iterator[bytes]:
    for seq in range(head.chunks):
        row = backend.conn.execute("SELECT value FROM item WHERE bucket=? AND key=?",
                                   (BUCKET, chunk_key(head.gen, seq))).fetchone()
        if row is None:
            raise ChunkError(f"chunk {seq} is missing")
        yield bytes(row[0])


def item_batch(changes: ItemChanges) -> WriteBatch:
    return WriteBatch(item_puts=list(changes.puts), item_deletes=list(changes.deletes))


def add_items(batch: WriteBatch, changes: ItemChanges) -> None:
    batch.item_puts.extend(changes.puts)
    batch.item_deletes.extend(changes.deletes)


def final_checkpoint(backend: Backend, checkpointer: IndexCheckpointer) -> bool:
    """At shutdown, with every applied row committed: checkpoint the whole index so the next
    start replays nothing. Skipped when little would be replayed anyway."""
    behind = checkpointer.revisions_behind()
    worth = behind >= FINAL_CHECKPOINT_MIN or (
        behind > 0 and behind * FINAL_CHECKPOINT_KEYS_PER_REVISION >= checkpointer.store.index_keys)
    if not worth:
        return False
    started = time.monotonic()
    backend.commit(item_batch(checkpointer.full()))
    log.info("key index checkpoint at revision %d written in %.2fs", checkpointer.store.current_revision,
             time.monotonic() - started)
    return True


__all__ = ["FINAL_CHECKPOINT_MIN", "Loaded", "add_items", "final_checkpoint", "item_batch", "load_store"]
