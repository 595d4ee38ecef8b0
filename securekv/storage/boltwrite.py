"""One-shot bbolt writer: lays out a fresh, compact bbolt file from sorted buckets.

etcd snapshots are bbolt databases, so exporting one means writing bbolt's on-disk format
(the layout facts come from bbolt 1.3: page header, meta, leaf/branch elements, freelist).
Nothing here is bbolt's code: instead of a copy-on-write B+tree grown by transactions, the
tree is bulk-loaded bottom-up in one pass, which is what a snapshot needs:

- pages 0 and 1 are the two meta pages (fnv-64a checksums; meta 0 has the higher txid, as
  bbolt's own ``Tx.WriteTo`` makes them), page 2 is an empty freelist: every other page is
  reachable, so bbolt's consistency check finds nothing unreachable or double-freed;
- leaf pages are filled up to one page; an element that does not fit in a page gets a page
  of its own that spans ``overflow`` extra pages (big values);
- branch levels are built as leaves are written (one open page per level), so memory stays
  bounded by the tree height, not the number of keys;
- a bucket whose single leaf would be at most a quarter page is stored inline in its parent
  (bbolt's own rule), so small buckets cost no page, as in a real etcd snapshot.

Pages are written in increasing id order; only the meta pages are written last (by seeking
back to offset 0), when the root page and the page count are known.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterable

import attrs

PAGE_SIZE = 4096  # bbolt's default on Linux/amd64 and what etcd snapshots use
MAGIC = 0xED0CDAED
VERSION = 2
MAX_KEY_SIZE = 32768  # bbolt's MaxKeySize
MAX_VALUE_SIZE = (1 << 31) - 2  # bbolt's MaxValueSize

PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
META_BODY = struct.Struct("<IIII QQ QQQ")  # magic, version, pageSize, flags, root{root, seq}, freelist, pgid, txid
CHECKSUM = struct.Struct("<Q")
LEAF_ELEM = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BRANCH_ELEM = struct.Struct("<IIQ")  # pos, ksize, pgid
BUCKET_HEADER = struct.Struct("<QQ")  # root pgid (0 = inline), sequence

BRANCH_PAGE, LEAF_PAGE, META_PAGE, FREELIST_PAGE = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF = 0x01  # leaf element flag: the value is a bucket header
MAX_COUNT = 0xFFFF  # page.count is a uint16

FREELIST_PGID = 2
FIRST_DATA_PGID = 3
TXID = 2  # meta 0 carries TXID, meta 1 TXID - 1 (page id = txid % 2, as bbolt writes them)


class BoltWriteError(ValueError):
    """The input cannot be laid out as bbolt would accept it (order, size, type)."""


@attrs.frozen
class BoltSummary:
    """What was written: ``size`` is bbolt's ``Tx.Size()`` (high-water page id x page size)."""

    pages: int
    size: int
    buckets: int
    keys: int
    root: int


def fnv64a(data: bytes) -> int:
    """The FNV-1a 64-bit hash bbolt uses for meta page checksums."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def meta_page(page_id: int, root: int, pgid: int, txid: int, page_size: int = PAGE_SIZE) -> bytes:
    """One meta page (padded to a page), checksum included."""
    body = META_BODY.pack(MAGIC, VERSION, page_size, 0, root, 0, FREELIST_PGID, pgid, txid)
    raw = PAGE_HEADER.pack(page_id, META_PAGE, 0, 0) + body + CHECKSUM.pack(fnv64a(body))
    return raw + b"\0" * (page_size - len(raw))


def _elements(items: list[tuple[int, bytes, bytes]], leaf: bool) -> bytes:
    """Element array followed by the key/value data; ``pos`` is relative to each element."""
    n = len(items)
    elem_size = LEAF_ELEM.size if leaf else BRANCH_ELEM.size
    elems: list[bytes] = []
    data: list[bytes] = []
    offset = 0  # bytes of data before this item's
    for i, (flags_or_pgid, key, value) in enumerate(items):
        pos = (n - i) * elem_size + offset
        if leaf:
            elems.append(LEAF_ELEM.pack(flags_or_pgid, pos, len(key), len(value)))
            data.append(key)
            data.append(value)
            offset += len(key) + len(value)
        else:
            elems.append(BRANCH_ELEM.pack(pos, len(key), flags_or_pgid))
            data.append(key)
            offset += len(key)
    return b"".join(elems) + b"".join(data)


class _Pages:
    """Appends pages at increasing ids to ``out`` (positioned at page FIRST_DATA_PGID)."""

    def __init__(self, out: BinaryIO, page_size: int) -> None:
        self.out = out
        self.page_size = page_size
        self.next = FIRST_DATA_PGID

    def write(self, flags: int, count: int, body: bytes) -> int:
        size = PAGE_HEADER.size + len(body)
        span = -(-size // self.page_size)
        pgid = self.next
        self.out.write(PAGE_HEADER.pack(pgid, flags, count, span - 1))
        self.out.write(body)
        self.out.write(b"\0" * (span * self.page_size - size))
        self.next += span
        return pgid


class _Tree:
    """Bulk-loads one bucket's B+tree: leaves in key order, branch levels on the way up."""

    def __init__(self, pages: _Pages) -> None:
        self.pages = pages
        self.limit = pages.page_size
        self.leaf: list[tuple[int, bytes, bytes]] = []
        self.leaf_size = PAGE_HEADER.size
        self.levels: list[list[tuple[int, bytes, bytes]]] = []  # (child pgid, first key, b"")
        self.level_sizes: list[int] = []

    def add(self, flags: int, key: bytes, value: bytes) -> None:
        size = LEAF_ELEM.size + len(key) + len(value)
        if self.leaf and (self.leaf_size + size > self.limit or len(self.leaf) == MAX_COUNT):
            self._flush_leaf()
        self.leaf.append((flags, key, value))
        self.leaf_size += size

    def _flush_leaf(self) -> None:
        pgid = self.pages.write(LEAF_PAGE, len(self.leaf), _elements(self.leaf, leaf=True))
        first = self.leaf[0][1] if self.leaf else b""
        self.leaf, self.leaf_size = [], PAGE_HEADER.size
        self._push(0, first, pgid)

    def _push(self, level: int, key: bytes, pgid: int) -> None:
        if level == len(self.levels):
            self.levels.append([])
            self.level_sizes.append(PAGE_HEADER.size)
        size = BRANCH_ELEM.size + len(key)
        entries = self.levels[level]
        if entries and (self.level_sizes[level] + size > self.limit or len(entries) == MAX_COUNT):
            self._flush_branch(level)
        self.levels[level].append((pgid, key, b""))
        self.level_sizes[level] += size

    def _flush_branch(self, level: int) -> None:
        entries = self.levels[level]
        pgid = self.pages.write(BRANCH_PAGE, len(entries), _elements(entries, leaf=False))
        self.levels[level], self.level_sizes[level] = [], PAGE_HEADER.size
        self._push(level + 1, entries[0][1], pgid)

    def finish(self) -> int:
        """Write what is still open and return the root page id."""
        if self.leaf or not self.levels:
            self._flush_leaf()
        level = 0
        while not (level == len(self.levels) - 1 and len(self.levels[level]) == 1):
            self._flush_branch(level)
            level += 1
        return self.levels[level][0][0]


class _Bucket:
    """Collects one bucket's items: inline while small (bbolt's quarter-page rule), else a tree."""

    def __init__(self, pages: _Pages) -> None:
        self.pages = pages
        self.inline: list[tuple[int, bytes, bytes]] | None = []
        self.size = PAGE_HEADER.size
        self.tree: _Tree | None = None

    def add(self, key: bytes, value: bytes) -> None:
        if self.inline is not None:
            self.inline.append((0, key, value))
            self.size += LEAF_ELEM.size + len(key) + len(value)
            if self.size <= self.pages.page_size // 4:
                return
            self.tree = _Tree(self.pages)
            for item in self.inline:
                self.tree.add(*item)
            self.inline = None
            return
        assert self.tree is not None
        self.tree.add(0, key, value)

    def value(self) -> bytes:
        """The bucket's value in its parent: header (+ the inline leaf page)."""
        if self.inline is not None:
            page = PAGE_HEADER.pack(0, LEAF_PAGE, len(self.inline), 0) + _elements(self.inline, leaf=True)
            return BUCKET_HEADER.pack(0, 0) + page
        assert self.tree is not None
        return BUCKET_HEADER.pack(self.tree.finish(), 0)


def _as_bytes(what: str, value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise BoltWriteError(f"{what} must be bytes, not {type(value).__name__}")


def _check_key(what: str, key: bytes, prev: bytes | None) -> None:
    if not key:
        raise BoltWriteError(f"{what} is empty (bbolt: key required)")
    if len(key) > MAX_KEY_SIZE:
        raise BoltWriteError(f"{what} is {len(key)} bytes (bbolt's limit is {MAX_KEY_SIZE})")
    if prev is not None and key <= prev:
        raise BoltWriteError(f"{what} {key[:64]!r} is not after {prev[:64]!r}: input must be sorted, no duplicates")


def write_bolt(out: BinaryIO, buckets: Iterable[tuple[bytes, Iterable[tuple[bytes, bytes]]]],
               page_size: int = PAGE_SIZE) -> BoltSummary:
    """Write a bbolt file to ``out`` (binary, seekable, at offset 0) holding ``buckets``.

    ``buckets`` yields ``(name, items)`` in ascending name order; ``items`` yields
    ``(key, value)`` in ascending key order (bytewise, as bbolt orders them). Both are
    consumed lazily, one bucket at a time. Raises BoltWriteError on unsorted, duplicate,
    empty or oversized keys (the file is then incomplete: the caller discards it).
    """
    if page_size < 1024 or page_size & (page_size - 1):
        raise BoltWriteError(f"page size {page_size} is not a power of two >= 1024")
    zero = b"\0" * page_size
    out.write(zero)  # meta 0 and meta 1: written last
    out.write(zero)
    out.write(PAGE_HEADER.pack(FREELIST_PGID, FREELIST_PAGE, 0, 0) + zero[PAGE_HEADER.size:])
    pages = _Pages(out, page_size)
    root_items: list[tuple[bytes, bytes]] = []
    prev_name: bytes | None = None
    keys = 0
    for name, items in buckets:
        name = _as_bytes("bucket name", name)
        _check_key("bucket name", name, prev_name)
        prev_name = name
        bucket = _Bucket(pages)
        prev_key: bytes | None = None
        for key, value in items:
            key = _as_bytes(f"key in bucket {name!r}", key)
            value = _as_bytes(f"value in bucket {name!r}", value)
            _check_key(f"key in bucket {name!r}", key, prev_key)
            if len(value) > MAX_VALUE_SIZE:
                raise BoltWriteError(f"value of {key[:64]!r} in bucket {name!r} is too large ({len(value)} bytes)")
            prev_key = key
            bucket.add(key, value)
            keys += 1
        root_items.append((name, bucket.value()))
    root = _Tree(pages)
    for name, value in root_items:
        root.add(BUCKET_LEAF, name, value)
    root_pgid = root.finish()
    total = pages.next
    out.seek(0)
    out.write(meta_page(0, root_pgid, total, TXID, page_size))
    out.write(meta_page(1, root_pgid, total, TXID - 1, page_size))
    out.seek(total * page_size)
    return BoltSummary(pages=total, size=total * page_size, buckets=len(root_items), keys=keys, root=root_pgid)


__all__ = ["BoltSummary", "BoltWriteError", "PAGE_SIZE", "fnv64a", "write_bolt"]
