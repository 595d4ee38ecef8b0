"""Read-only walk of a bbolt file: what ``etcdctl snapshot status`` reports.

etcd snapshots are bbolt databases (plus a trailing SHA-256). ``snapshot status`` needs no
server: it opens the file, walks every top-level bucket in key order and computes a
CRC-32C over bucket names, keys and values, the number of keys, the main revision of the
last key in bucket ``key`` and the file's logical size (last page id × page size).
Layout facts (page header, meta, leaf/branch elements) are bbolt's on-disk format.
bbolt's full free-page consistency check is not repeated here.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import attrs

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
META = struct.Struct("<IIII QQ QQQ Q")  # magic, version, pageSize, flags, root{root, seq}, freelist, pgid, txid, checksum
BRANCH_ELEM = struct.Struct("<IIQ")  # pos, ksize, pgid
LEAF_ELEM = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BRANCH, LEAF, METAF = 0x01, 0x02, 0x04
BUCKET_LEAF = 0x01


class BoltError(Exception):
    pass


@attrs.frozen
class DBStatus:
    hash: int
    revision: int
    total_key: int
    total_size: int


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


class BoltFile:
    def __init__(self, data: bytes) -> None:
        self.data = data
        metas = []
        errors = []
        for offset in (0, None):
            if offset is None:
                if not metas:
                    break
                offset = metas[0][0]
            try:
                metas.append(self._meta(offset))
            except BoltError as exc:
                errors.append(exc)
            if offset == 0 and not metas:
                # Page size unknown: bbolt falls back to the OS page size for meta 1.
                try:
                    metas.append(self._meta(4096))
                except BoltError:
                    raise errors[0] from None
                break
        if not metas:
            raise errors[0]
        best = max(metas, key=lambda m: m[6])
        self.page_size, self.root, self.pgid = best[0], best[4], best[5]

    def _meta(self, offset: int) -> tuple:
        raw = self.data[offset + PAGE_HEADER.size: offset + PAGE_HEADER.size + META.size]
        if len(raw) < META.size:
            raise BoltError("invalid database")
        magic, version, page_size, _flags, root, _seq, _free, pgid, txid, checksum = META.unpack(raw)
        if magic != MAGIC:
            raise BoltError("invalid database")
        if version != VERSION:
            raise BoltError("version mismatch")
        if checksum and checksum != _fnv64a(raw[:-8]):
            raise BoltError("checksum error")
        if offset and offset != page_size:
            raise BoltError("invalid database")
        return (page_size, version, magic, _flags, root, pgid, txid)

    def _page(self, pgid: int) -> int:
        off = pgid * self.page_size
        if off + PAGE_HEADER.size > len(self.data):
            raise BoltError(f"page {pgid}: out of range")
        return off

    def _walk(self, buf: bytes, page_off: int) -> Iterator[tuple[int, bytes, bytes]]:
        """(flags, key, value) of every leaf element under the page at ``page_off`` in ``buf``."""
        _id, flags, count, _ov = PAGE_HEADER.unpack_from(buf, page_off)
        base = page_off + PAGE_HEADER.size
        if flags & LEAF:
            for i in range(count):
                eoff = base + i * LEAF_ELEM.size
                eflags, pos, ksize, vsize = LEAF_ELEM.unpack_from(buf, eoff)
                k = bytes(buf[eoff + pos: eoff + pos + ksize])
                v = bytes(buf[eoff + pos + ksize: eoff + pos + ksize + vsize])
                yield eflags, k, v
        elif flags & BRANCH:
            for i in range(count):
                eoff = base + i * BRANCH_ELEM.size
                _pos, _ksize, child = BRANCH_ELEM.unpack_from(buf, eoff)
                yield from self._walk(self.data, self._page(child))
        else:
            raise BoltError(f"invalid page type: {page_off // self.page_size}: {flags:x}")

    def bucket_items(self, root: int, value: bytes | None = None) -> Iterator[tuple[int, bytes, bytes]]:
        if root == 0:  # inline bucket: its page follows the 16-byte bucket header
            if value is None:
                return
            yield from self._walk(value, 16)
            return
        yield from self._walk(self.data, self._page(root))

    def status(self) -> DBStatus:
        crc = 0
        total = 0
        revision = 0
        for flags, name, value in self.bucket_items(self.root):
            if not flags & BUCKET_LEAF:
                raise BoltError(f"cannot get hash of bucket {name.decode('utf-8', 'replace')}")
            crc = crc32c(name, crc)
            broot = struct.unpack_from("<Q", value, 0)[0]
            for _f, k, v in self.bucket_items(broot, value):
                crc = crc32c(v, crc32c(k, crc))
                if name == b"key" and len(k) >= 8:
                    revision = struct.unpack_from(">q", k, 0)[0]
                total += 1
        return DBStatus(hash=crc, revision=revision, total_key=total, total_size=self.pgid * self.page_size)


def snapshot_status(path: str | Path) -> DBStatus:
    data = Path(path).read_bytes()
    return BoltFile(data).status()
