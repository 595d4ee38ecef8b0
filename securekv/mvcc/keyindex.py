"""The store's in-memory key index: one compact entry per key, and its persisted (chunk) form.

An entry describes every stored revision of one key: *where* each record lives in the backend
(main, sub), whether it is a tombstone, whether it carries a lease, and its value length (for
the quota's size accounting). Values themselves are never here.

Two encodings, chosen by what is cheapest in CPython:

* ``int`` — a key with exactly one stored record: a live put at sub-revision 0, created at
  that revision, version 1 (what a bulk load produces). ``main | vlen << 64``: one 40-byte
  int per key instead of a container.
* ``array('q')`` — everything else::

      [created0, version0, gstart, r1, s1, r2, s2, ...]
      r = main << 2 | leased << 1 | tombstone      s = value_length << 32 | sub

  Records ascend by main revision. A tombstone ends a *generation* (one life of the key);
  ``gstart`` is the index of the first record of the last generation. ``created0`` and
  ``version0`` describe the first record (compaction may have cut the start of its
  generation); every later generation starts at version 1, created at its first record.
  16 bytes per record, like etcd's in-memory ``revision{main, sub}``.

The latest live record's lease ID lives in the store's ``leases`` map (the ``leased`` bit only
says that an older record had one, to be read from the backend if ever needed).

Chunk format (little-endian), written by :func:`encode_chunk` for a run of keys in key order::

    header "<4sIIIQ": b"KIX1", keys, array entries, leases, words
    key lengths u32[keys] | key bytes | kinds u8[keys] (0 int, 1 array)
    int entries: mains i64[n_int] | value lengths i64[n_int]
    array entries: lengths u32[arrays] | words i64[words]
    leases: key positions u32[leases] | lease IDs i64[leases]

Columnar so that decoding a million keys is a handful of C-level array copies plus one slice
per key.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable

Entry = int | array

MASK64 = (1 << 64) - 1
SHIFT = 64
HDR = 3
TOMB = 1
LEASED = 2
SUBMASK = (1 << 32) - 1

_HEAD = struct.Struct("<4sIIIQ")
_MAGIC = b"KIX1"
_SWAP = sys.byteorder != "little"


class ChunkError(ValueError):
    """A persisted index chunk is damaged (the caller rebuilds the index from the rows)."""


def rword(main: int, leased: bool, tomb: bool) -> int:
    return main << 2 | (LEASED if leased else 0) | (TOMB if tomb else 0)


def sword(vlen: int, sub: int) -> int:
    return vlen << 32 | sub


def last_main(e: Entry) -> int:
    if type(e) is int:
        return e & MASK64
    return e[-2] >> 2


def last_ref(e: Entry) -> tuple[int, int]:
    """(main, sub) of the entry's last record."""
    if type(e) is int:
        return e & MASK64, 0
    return e[-2] >> 2, e[-1] & SUBMASK


def count(e: Entry) -> int:
    """Records in the entry."""
    return 1 if type(e) is int else (len(e) - HDR) >> 1


def find(e: array, rev: int) -> int:
    """Index of the last record with main <= rev, or -1."""
    n = (len(e) - HDR) >> 1
    if e[-2] >> 2 <= rev:
        return n - 1
    target = rev << 2 | 3
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if e[HDR + 2 * mid] <= target:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def gen_start(e: array, i: int) -> int:
    """Index of the first record of the generation holding record ``i``."""
    g = e[2]
    if i >= g:
        return g
    j = i - 1
    while j >= 0 and not e[HDR + 2 * j] & TOMB:
        j -= 1
    return j + 1


def meta(e: array, i: int) -> tuple[int, int]:
    """(create revision, version) of the live record ``i``."""
    g = gen_start(e, i)
    if g == 0:
        return e[0], e[1] + i
    return e[HDR + 2 * g] >> 2, 1 + i - g


def value_bytes(e: Entry) -> int:
    """Sum of the value lengths of every record in the entry."""
    if type(e) is int:
        return e >> SHIFT
    return sum(s >> 32 for s in e[HDR + 1 :: 2])


def encode_chunk(items: Iterable[tuple[bytes, Entry, int]]) -> bytes:
    """Serialise (key, entry, latest lease) triples given in ascending key order."""
    keylens = array("I")
    keys = bytearray()
    kinds = bytearray()
    mains = array("q")
    vlens = array("q")
    alens = array("I")
    words = array("q")
    lease_pos = array("I")
    lease_ids = array("q")
    for n, (key, e, lease) in enumerate(items):
        keylens.append(len(key))
        keys += key
        if type(e) is int:
            kinds.append(0)
            mains.append(e & MASK64)
            vlens.append(e >> SHIFT)
        else:
            kinds.append(1)
            alens.append(len(e))
            words.extend(e)
        if lease:
            lease_pos.append(n)
            lease_ids.append(lease)
    parts = [_HEAD.pack(_MAGIC, len(keylens), len(alens), len(lease_ids), len(words))]
    for a in (keylens,):
        parts.append(_le(a))
    parts.append(bytes(keys))
    parts.append(bytes(kinds))
    for a in (mains, vlens, alens, words, lease_pos, lease_ids):
        parts.append(_le(a))
    return b"".join(parts)


def _le(a: array) -> bytes:
    if _SWAP:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def decode_chunk(blob: bytes) -> tuple[list[bytes], list[Entry], dict[bytes, int]]:
    """(keys, entries, {key: lease}) of one chunk; ChunkError if it does not parse."""
    try:
        magic, n, n_arr, n_lease, n_words = _HEAD.unpack_from(blob, 0)
    except struct.error:
        raise ChunkError("index chunk too short") from None
    if magic != _MAGIC:
        raise ChunkError("index chunk has a bad magic number")
    mv = memoryview(blob)
    off = _HEAD.size

    def take(typecode: str, count_: int) -> array:
        nonlocal off
        a = array(typecode)
        size = a.itemsize * count_
        if off + size > len(blob):
            raise ChunkError("index chunk truncated")
        a.frombytes(mv[off : off + size])
        if _SWAP:
            a.byteswap()
        off += size
        return a

    keylens = take("I", n)
    total = sum(keylens)
    if off + total + n > len(blob):
        raise ChunkError("index chunk truncated")
    kb = bytes(mv[off : off + total])
    off += total
    kinds = bytes(mv[off : off + n])
    off += n
    n_int = n - n_arr
    mains = take("q", n_int)
    vlens = take("q", n_int)
    alens = take("I", n_arr)
    words = take("q", n_words)
    lease_pos = take("I", n_lease)
    lease_ids = take("q", n_lease)
    if off != len(blob) or sum(alens) != n_words:
        raise ChunkError("index chunk has trailing or missing bytes")
    if n and keylens[0] * n == total and min(keylens) == max(keylens):
        width = keylens[0]
        keys = [kb[i : i + width] for i in range(0, total, width)]
    else:
        keys = []
        pos = 0
        for ln in keylens:
            keys.append(kb[pos : pos + ln])
            pos += ln
    ints = [m | (v << SHIFT) if v else m for m, v in zip(mains, vlens)]
    if not n_arr:
        entries: list[Entry] = ints  # type: ignore[assignment]
    else:
        entries = []
        ii = ai = wpos = 0
        for kind in kinds:
            if kind:
                ln = alens[ai]
                ai += 1
                entries.append(words[wpos : wpos + ln])
                wpos += ln
            else:
                entries.append(ints[ii])
                ii += 1
    leases = {keys[p]: lid for p, lid in zip(lease_pos, lease_ids)}
    return keys, entries, leases


__all__ = ["ChunkError", "Entry", "decode_chunk", "encode_chunk"]
