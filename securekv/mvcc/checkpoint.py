"""When and what to persist of the store's key index, so that start-up does not replay history.

The backend's ``item`` table holds (bucket ``kvindex``)::

    b"head"                      -> CheckpointHead: generation, start revision, compact revision
                                    at the start, number of chunks (the last complete checkpoint)
    >QQ (generation, sequence)   -> one chunk (keyindex.encode_chunk) of keys in ascending order

and (bucket ``kvindex_dropped``) ``>q compact revision -> keys`` for every compaction that
removed a key's whole history up to its revision (``KVWriteBatch.index_dropped``).

A checkpoint is written in chunks while the member keeps applying writes, so each chunk shows
its keys at a slightly different moment, all at or after the start revision. Start-up loads the
chunks and replays every row after the start revision; the replay skips what an entry already
holds and recognises rows whose history was compacted away (``MVCCStore.load``). The head is
written together with the last chunk and only then replaces the previous checkpoint, whose
chunks are deleted in the same transaction: a crash mid-checkpoint leaves the previous one in
force.

Everything here is pure: the server sends the returned item changes through its ordinary
backend commit queue, behind the rows they describe.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import attrs

from .store import MVCCStore

BUCKET = "kvindex"
DROPPED_BUCKET = "kvindex_dropped"
HEAD_KEY = b"head"
#: Fewest revisions between two checkpoints. A larger index waits longer (``due``): a
#: checkpoint costs about its size, so the interval grows with it and the checkpoints cost a
#: bounded number of bytes per write (``BYTES_PER_REVISION``), while a crash replays at most one
#: interval of rows.
MIN_INTERVAL = 10_000
BYTES_PER_REVISION = 64
#: Keys, and about bytes, per chunk: one chunk is serialised per step, so this bounds one
#: step's work (~10 ms) and one sqlite row.
CHUNK_KEYS = 5_000
CHUNK_BYTES = 2 << 20

_HEAD = struct.Struct(">QqqQ")
_CHUNK = struct.Struct(">QQ")
_DROPPED = struct.Struct(">q")
_LEN = struct.Struct("<I")


@attrs.frozen
class CheckpointHead:
    gen: int
    start: int
    compact: int
    chunks: int

    def encode(self) -> bytes:
        return _HEAD.pack(self.gen, self.start, self.compact, self.chunks)

    @classmethod
    def decode(cls, data: bytes | None) -> CheckpointHead | None:
        if data is None or len(data) != _HEAD.size:
            return None
        return cls(*_HEAD.unpack(data))


def chunk_key(gen: int, seq: int) -> bytes:
    return _CHUNK.pack(gen, seq)


def parse_chunk_key(key: bytes) -> tuple[int, int] | None:
    return _CHUNK.unpack(key) if len(key) == _CHUNK.size else None  # type: ignore[return-value]


def dropped_key(rev: int) -> bytes:
    return _DROPPED.pack(rev)


def parse_dropped_key(key: bytes) -> int | None:
    return _DROPPED.unpack(key)[0] if len(key) == _DROPPED.size else None


def encode_keys(keys: Iterable[bytes]) -> bytes:
    out = bytearray()
    for k in keys:
        out += _LEN.pack(len(k))
        out += k
    return bytes(out)


def decode_keys(blob: bytes) -> list[bytes]:
    keys = []
    pos = 0
    while pos < len(blob):
        (n,) = _LEN.unpack_from(blob, pos)
        pos += _LEN.size
        keys.append(bytes(blob[pos : pos + n]))
        pos += n
    return keys


Item = tuple[str, bytes, bytes]
ItemKey = tuple[str, bytes]


@attrs.frozen
class ItemChanges:
    """Item rows to write and delete in one backend transaction."""

    puts: tuple[Item, ...] = ()
    deletes: tuple[ItemKey, ...] = ()
    complete: bool = False  # this transaction finishes a checkpoint


class IndexCheckpointer:
    """Decides when the index is checkpointed and produces the rows, chunk by chunk.

    ``head``: the last complete checkpoint found at start (None: none). ``stray``: chunk keys
    found in the backend that belong to no complete checkpoint (an interrupted one); they are
    deleted when the next checkpoint completes.
    """

    def __init__(self, store: MVCCStore, head: CheckpointHead | None = None, stray: Iterable[bytes] = (), *,
                 min_interval: int = MIN_INTERVAL, chunk_keys: int = CHUNK_KEYS) -> None:
        self.store = store
        self.head = head
        self._stray = list(stray)
        self.min_interval = min_interval
        self.chunk_keys = chunk_keys
        self._gen = head.gen + 1 if head is not None else 1
        self._writing = False
        self._start = self._compact = 0
        self._seq = 0
        self._cursor: bytes | None = None
        self.completed = 0  # checkpoints finished by this process (metrics/tests)

    @property
    def writing(self) -> bool:
        return self._writing

    def revisions_behind(self) -> int:
        """Revisions a start-up would replay after the last complete checkpoint."""
        return self.store.current_revision - (self.head.start if self.head is not None else 0)

    def interval(self) -> int:
        """Revisions between checkpoints: at least ``min_interval``, half the keys, and the
        index's persisted size (about 40 bytes a key, 16 a further record) over
        ``BYTES_PER_REVISION``."""
        store = self.store
        size = store.index_keys * 40 + max(0, store.index_records - store.index_keys) * 16
        return max(self.min_interval, store.index_keys // 2, size // BYTES_PER_REVISION)

    def due(self) -> bool:
        """A checkpoint is in progress, or an interval passed since the last one began."""
        if self._writing:
            return True
        return self.revisions_behind() >= self.interval()

    def step(self) -> ItemChanges:
        """The next chunk (starting a checkpoint if none is in progress)."""
        store = self.store
        if not self._writing:
            self._writing = True
            self._start = store.current_revision
            self._compact = store.compact_revision
            self._seq = 0
            self._cursor = None
        blob, self._cursor = store.index_chunk(self._cursor, self.chunk_keys, CHUNK_BYTES)
        puts: list[Item] = [(BUCKET, chunk_key(self._gen, self._seq), blob)]
        self._seq += 1
        if self._cursor is not None:
            return ItemChanges(puts=tuple(puts))
        return self._finish(puts)

    def full(self) -> ItemChanges:
        """A whole checkpoint at once (at shutdown, when nothing else runs)."""
        self._writing = False
        puts: list[Item] = []
        while True:
            changes = self.step()
            puts.extend(changes.puts)
            if changes.complete:
                return ItemChanges(puts=tuple(puts), deletes=changes.deletes, complete=True)

    def _finish(self, puts: list[Item]) -> ItemChanges:
        head = CheckpointHead(self._gen, self._start, self._compact, self._seq)
        puts.append((BUCKET, HEAD_KEY, head.encode()))
        deletes: list[ItemKey] = [(BUCKET, k) for k in self._stray]
        old = self.head
        if old is not None and old.gen != head.gen:
            deletes.extend((BUCKET, chunk_key(old.gen, i)) for i in range(old.chunks))
        keep = []
        for rev in self.store.dropped_records:
            if rev <= head.start:
                deletes.append((DROPPED_BUCKET, dropped_key(rev)))
            else:
                keep.append(rev)
        self.store.dropped_records[:] = keep
        self._stray = []
        self.head = head
        self._gen += 1
        self._writing = False
        self.completed += 1
        return ItemChanges(puts=tuple(puts), deletes=tuple(deletes), complete=True)


__all__ = ["BUCKET", "BYTES_PER_REVISION", "CHUNK_BYTES", "CHUNK_KEYS", "CheckpointHead", "DROPPED_BUCKET", "HEAD_KEY", "IndexCheckpointer",
           "ItemChanges", "MIN_INTERVAL", "chunk_key", "decode_keys", "dropped_key", "encode_keys",
           "parse_chunk_key", "parse_dropped_key"]
