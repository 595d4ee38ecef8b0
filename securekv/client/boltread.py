"""Read-only walk of a bbolt file: what ``etcdctl snapshot status`` reports.

etcd snapshots are bbolt databases (plus a trailing SHA-256). ``snapshot status`` needs no
server: it opens the file as bbolt does (meta 0 gives the page size, the valid meta with the
higher txid wins), runs bbolt's consistency check (``Tx.Check``: every page below the
high-water mark reachable exactly once or free, branch/leaf types), then walks every
top-level bucket in key order computing a CRC-32C over bucket names, keys and values, the
number of keys, the main revision of the last key in bucket ``key`` and the file's logical
size (high-water page id x page size). Layout facts are bbolt's on-disk format.

Unlike bbolt (which panics there), a damaged page layout (an element or page past the end of
the file, a reference cycle) is reported as a BoltError, never a crash. The file is mapped,
not read, so a large snapshot costs no memory.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Iterator

import attrs

MAGIC = 0xED0CDAED
VERSION = 2
OS_PAGE_SIZE = 4096  # what bbolt falls back to when meta 0 is unreadable
PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
META = struct.Struct("<IIII QQ QQQ Q")  # magic, version, pageSize, flags, root{root, seq}, freelist, pgid, txid, checksum
BRANCH_ELEM = struct.Struct("<IIQ")  # pos, ksize, pgid
LEAF_ELEM = struct.Struct("<IIII")  # flags, pos, ksize, vsize
PGID = struct.Struct("<Q")
BRANCH, LEAF, METAF, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF = 0x01
NO_FREELIST = 0xFFFFFFFFFFFFFFFF  # meta.freelist when bbolt runs with NoFreelistSync (etcd on Linux)


class BoltError(Exception):
    pass


@attrs.frozen
class DBStatus:
    hash: int
    revision: int
    total_key: int
    total_size: int


@attrs.frozen
class Meta:
    page_size: int
    root: int
    freelist: int
    pgid: int
    txid: int


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _meta_at(data: bytes, offset: int) -> Meta | BoltError:
    raw = bytes(data[offset + PAGE_HEADER.size: offset + PAGE_HEADER.size + META.size])
    if len(raw) < META.size:
        return BoltError("invalid database")
    magic, version, page_size, _flags, root, _seq, freelist, pgid, txid, checksum = META.unpack(raw)
    if magic != MAGIC:
        return BoltError("invalid database")
    if version != VERSION:
        return BoltError("version mismatch")
    if checksum and checksum != _fnv64a(raw[:-8]):
        return BoltError("checksum error")
    return Meta(page_size, root, freelist, pgid, txid)


class BoltFile:
    """A bbolt file held as bytes or a read-only mmap."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        if len(data) < 0x1000:
            raise BoltError("invalid database")
        first = _meta_at(data, 0)
        page_size = first.page_size if isinstance(first, Meta) else OS_PAGE_SIZE
        if page_size < 512 or page_size > 1 << 16 or page_size & (page_size - 1):
            raise BoltError("invalid database")
        if len(data) < 2 * page_size:
            raise BoltError("file size too small")
        metas = [_meta_at(data, 0), _meta_at(data, page_size)]
        valid = [m for m in metas if isinstance(m, Meta)]
        if not valid:
            raise metas[0]  # type: ignore[misc]
        meta = max(valid, key=lambda m: m.txid)  # bbolt: the higher txid if valid, else the other
        self.meta = meta
        self.page_size, self.root, self.pgid = page_size, meta.root, meta.pgid

    # -- pages -------------------------------------------------------------------------------
    def _header(self, pgid: int) -> tuple[int, int, int, int]:
        off = pgid * self.page_size
        if pgid >= len(self.data) // self.page_size or off + PAGE_HEADER.size > len(self.data):
            raise BoltError(f"page {pgid}: out of range")
        return PAGE_HEADER.unpack_from(self.data, off)

    def _elements(self, buf: bytes | mmap.mmap, page_off: int, what: str) -> Iterator[tuple[int, bytes, bytes]]:
        """(flags or child pgid, key, value) of a leaf or branch page, bounds-checked."""
        _id, flags, count, _ov = PAGE_HEADER.unpack_from(buf, page_off)
        base = page_off + PAGE_HEADER.size
        end = len(buf)
        if base + count * LEAF_ELEM.size > end:
            raise BoltError(f"{what}: elements past the end of the file")
        for i in range(count):
            eoff = base + i * LEAF_ELEM.size
            if flags & LEAF:
                eflags, pos, ksize, vsize = LEAF_ELEM.unpack_from(buf, eoff)
            else:
                pos, ksize, eflags = BRANCH_ELEM.unpack_from(buf, eoff)
                vsize = 0
            start = eoff + pos
            if start + ksize + vsize > end:
                raise BoltError(f"{what}: element {i} past the end of the file")
            yield eflags, bytes(buf[start: start + ksize]), bytes(buf[start + ksize: start + ksize + vsize])

    def _walk(self, buf: bytes | mmap.mmap, page_off: int, what: str, seen: set[int]) -> Iterator[tuple[int, bytes, bytes]]:
        """(flags, key, value) of every leaf element under the page at ``page_off`` in ``buf``."""
        stack = [(buf, page_off, what)]
        while stack:
            b, off, name = stack.pop()
            _id, flags, _count, _ov = PAGE_HEADER.unpack_from(b, off)
            if flags & LEAF:
                yield from self._elements(b, off, name)
            elif flags & BRANCH:
                children = []
                for child, _k, _v in self._elements(b, off, name):
                    if child in seen:
                        raise BoltError(f"page {child}: multiple references")
                    seen.add(child)
                    self._header(child)
                    children.append((self.data, child * self.page_size, f"page {child}"))
                stack.extend(reversed(children))
            else:
                raise BoltError(f"invalid page type: {off // self.page_size}: {flags:x}")

    def bucket_items(self, root: int, value: bytes | None = None) -> Iterator[tuple[int, bytes, bytes]]:
        if root == 0:  # inline bucket: its page follows the 16-byte bucket header
            if value is None or len(value) < 16 + PAGE_HEADER.size:
                return
            yield from self._walk(value, 16, "inline bucket", set())
            return
        self._header(root)
        yield from self._walk(self.data, root * self.page_size, f"page {root}", {root})

    # -- bbolt's Tx.Check ----------------------------------------------------------------------
    def _freed(self) -> tuple[set[int], list[str]]:
        errors: list[str] = []
        freed: set[int] = set()
        if self.meta.freelist == NO_FREELIST:
            return freed, errors
        _id, flags, count, _ov = self._header(self.meta.freelist)
        if not flags & FREELIST:
            raise BoltError(f"invalid freelist page: {self.meta.freelist}, page type is {flags:x}")
        off = self.meta.freelist * self.page_size + PAGE_HEADER.size
        first = 0
        if count == 0xFFFF:
            count, first = PGID.unpack_from(self.data, off)[0], 1
        if off + (first + count) * PGID.size > len(self.data):
            raise BoltError(f"page {self.meta.freelist}: freelist past the end of the file")
        for i in range(first, first + count):
            pid = PGID.unpack_from(self.data, off + i * PGID.size)[0]
            if pid in freed:
                errors.append(f"page {pid}: already freed")
            freed.add(pid)
        return freed, errors

    def check(self) -> list[str]:
        """bbolt's consistency check: the list of problems (empty when the file is sound)."""
        freed, errors = self._freed()
        reachable: set[int] = {0, 1}
        pages = len(self.data) // self.page_size
        if self.meta.freelist != NO_FREELIST:
            _id, _f, _c, overflow = self._header(self.meta.freelist)
            reachable.update(range(self.meta.freelist, min(self.meta.freelist + overflow + 1, pages)))
        visited: set[int] = set()
        roots = [self.root]
        while roots:
            pending = [roots.pop()]
            while pending:
                pgid = pending.pop()
                if pgid in visited:
                    errors.append(f"page {pgid}: multiple references")
                    continue
                visited.add(pgid)
                pid, flags, _count, overflow = self._header(pgid)
                if pgid + overflow >= pages:
                    errors.append(f"page {pgid}: overflow past the end of the file")
                    continue
                if pid > self.pgid:
                    errors.append(f"page {pid}: out of bounds: {self.pgid}")
                for i in range(overflow + 1):
                    if pid + i in reachable:
                        errors.append(f"page {pid + i}: multiple references")
                    reachable.add(pid + i)
                if pid in freed:
                    errors.append(f"page {pid}: reachable freed")
                elif not flags & (BRANCH | LEAF):
                    errors.append(f"page {pid}: invalid type: {_type(flags)}")
                    continue
                what = f"page {pgid}"
                for eflags, _k, v in self._elements(self.data, pgid * self.page_size, what):
                    if flags & BRANCH:
                        pending.append(eflags)
                    elif eflags & BUCKET_LEAF and len(v) >= 8 and PGID.unpack_from(v, 0)[0]:
                        roots.append(PGID.unpack_from(v, 0)[0])
                    elif eflags & BUCKET_LEAF:
                        errors.extend(self._check_inline(v))
        if self.meta.freelist == NO_FREELIST:  # bbolt rebuilds the free list from what is unreachable
            freed = set(range(2, self.pgid)) - reachable
        errors.extend(f"page {i}: unreachable unfreed" for i in range(self.pgid)
                      if i not in reachable and i not in freed)
        return errors

    def _check_inline(self, value: bytes) -> list[str]:
        """Sub-buckets of an inline bucket (etcd has none; bbolt allows them)."""
        roots = [PGID.unpack_from(v, 0)[0] for f, _k, v in self.bucket_items(0, value)
                 if f & BUCKET_LEAF and len(v) >= 8 and PGID.unpack_from(v, 0)[0]]
        return [f"page {r}: nested bucket in an inline bucket" for r in roots]

    # -- etcdctl snapshot status ------------------------------------------------------------------
    def status(self) -> DBStatus:
        problems = self.check()
        if problems:
            raise BoltError(f"snapshot file integrity check failed. {len(problems)} errors found.\n"
                            + "\n".join(problems))
        crc = 0
        total = 0
        revision = 0
        for flags, name, value in self.bucket_items(self.root):
            if not flags & BUCKET_LEAF or len(value) < 16:
                raise BoltError(f"cannot get hash of bucket {name.decode('utf-8', 'replace')}")
            crc = crc32c(name, crc)
            broot = PGID.unpack_from(value, 0)[0]
            for f, k, v in self.bucket_items(broot, value):
                if f & BUCKET_LEAF:
                    v = b""  # bbolt's ForEach gives a nil value for a nested bucket
                crc = crc32c(v, crc32c(k, crc))
                if name == b"key" and len(k) >= 8:
                    revision = struct.unpack_from(">q", k, 0)[0]
                total += 1
        return DBStatus(hash=crc, revision=revision, total_key=total, total_size=self.pgid * self.page_size)


def _type(flags: int) -> str:
    for bit, name in ((BRANCH, "branch"), (LEAF, "leaf"), (METAF, "meta"), (FREELIST, "freelist")):
        if flags & bit:
            return name
    return f"unknown<{flags:02x}>"


def snapshot_status(path: str | Path) -> DBStatus:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise BoltError(f"write {path}: bad file descriptor")  # bbolt tries to initialise it
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                return BoltFile(data).status()
            except (struct.error, ValueError, OverflowError) as exc:
                raise BoltError(f"invalid database ({exc})") from None
