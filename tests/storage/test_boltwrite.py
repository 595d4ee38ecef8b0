"""The one-shot bbolt writer, read back by our reader and by the real bbolt inside etcdctl.

``etcdctl snapshot status`` opens the file with bbolt, runs bbolt's consistency check and
hashes every bucket name, key and value: its hash equal to one computed from the *input*
proves bbolt read back exactly what was written. ``etcdctl snapshot restore`` then opens the
file read-write (bbolt allocating pages and rewriting the tree on top of ours).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from securekv.client import boltread
from securekv.proto import kv_pb2
from securekv.storage.boltwrite import (BRANCH_PAGE, LEAF_PAGE, PAGE_HEADER, PAGE_SIZE, BoltWriteError,
                                        write_bolt)

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"

Buckets = list[tuple[bytes, list[tuple[bytes, bytes]]]]


def rev_key(main: int, sub: int = 0) -> bytes:
    return struct.pack(">Q1sQ", main, b"_", sub)


def write(path: Path, buckets: Buckets) -> bytes:
    with open(path, "wb") as fh:
        write_bolt(fh, buckets)
    return path.read_bytes()


def expected_status(buckets: Buckets, size: int) -> dict:
    """What etcdctl must report, computed from the input alone (not from the file)."""
    crc, total, revision = 0, 0, 0
    for name, items in buckets:
        crc = boltread.crc32c(name, crc)
        for k, v in items:
            crc = boltread.crc32c(v, boltread.crc32c(k, crc))
            total += 1
            if name == b"key":
                revision = struct.unpack_from(">q", k)[0]
    return {"hash": crc, "revision": revision, "totalKey": total, "totalSize": size}


def etcdctl_status(path: Path) -> dict:
    out = subprocess.run([ETCDCTL, "snapshot", "status", str(path), "-w", "json"], capture_output=True,
                         text=True, timeout=60, env={"ETCDCTL_API": "3"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def items_of(bolt: boltread.BoltFile) -> Buckets:
    got = []
    for _f, name, value in bolt.bucket_items(bolt.root):
        root = struct.unpack_from("<Q", value)[0]
        got.append((name, [(k, v) for _f2, k, v in bolt.bucket_items(root, value)]))
    return got


def bucket_roots(bolt: boltread.BoltFile) -> dict[bytes, int]:
    return {name: struct.unpack_from("<Q", value)[0] for _f, name, value in bolt.bucket_items(bolt.root)}


def page(data: bytes, pgid: int) -> tuple[int, int, int, int]:
    return PAGE_HEADER.unpack_from(data, pgid * PAGE_SIZE)


def depth(data: bytes, pgid: int) -> int:
    """Levels from this page down to the leaves (following the first child)."""
    levels = 1
    while page(data, pgid)[1] & BRANCH_PAGE:
        pgid = struct.unpack_from("<Q", data, pgid * PAGE_SIZE + PAGE_HEADER.size + 8)[0]
        levels += 1
    return levels


def test_small_buckets_inline_and_paged(tmp_path: Path) -> None:
    buckets: Buckets = [
        (b"alarm", []),  # empty bucket
        (b"inline", [(b"k", b"v" * 991)]),  # 16 + 16 + 1 + 991 = 1024: exactly bbolt's inline limit
        (b"paged", [(b"k", b"v" * 992)]),  # one byte more: a page of its own
        (b"utf8\xc3\xa9", [(b"\x00", b""), (b"\xff" * 20, "é".encode())]),
    ]
    data = write(tmp_path / "small.db", buckets)
    assert len(data) % PAGE_SIZE == 0
    bolt = boltread.BoltFile(data)
    assert bolt.check() == [] and items_of(bolt) == buckets
    roots = bucket_roots(bolt)
    assert roots[b"alarm"] == roots[b"inline"] == roots[b"utf8\xc3\xa9"] == 0 and roots[b"paged"] > 2
    assert page(data, 2)[1] == 0x10 and page(data, 2)[2] == 0  # an empty freelist
    want = expected_status(buckets, len(data))
    assert etcdctl_status(tmp_path / "small.db") == want
    assert boltread.snapshot_status(tmp_path / "small.db") == boltread.DBStatus(
        want["hash"], want["revision"], want["totalKey"], want["totalSize"])


def test_no_buckets(tmp_path: Path) -> None:
    data = write(tmp_path / "empty.db", [])
    assert len(data) == 4 * PAGE_SIZE and boltread.BoltFile(data).check() == []
    assert etcdctl_status(tmp_path / "empty.db") == {"hash": 0, "revision": 0, "totalKey": 0, "totalSize": 16384}


def test_thousands_of_keys_branches_and_overflow(tmp_path: Path) -> None:
    """6000 revisions (three tree levels), values of 5-40 KiB and one of 1 MiB (overflow pages),
    etcd-shaped so that `snapshot restore` can load it as an etcd backend."""
    rng = random.Random(7)
    revs = []
    for main in range(2, 6002):
        size = 5000 + rng.randrange(35000) if main % 97 == 0 else rng.randrange(20, 120)
        if main == 3000:
            size = 1 << 20
        kv = kv_pb2.KeyValue(key=b"k/%06d" % main, create_revision=main, mod_revision=main, version=1,
                             value=rng.randbytes(size))
        revs.append((rev_key(main), kv.SerializeToString()))
    buckets: Buckets = [
        (b"cluster", [(b"clusterVersion", b"3.4.0")]),
        (b"key", revs),
        (b"meta", [(b"consistent_index", struct.pack(">Q", 6000))]),
    ]
    path = tmp_path / "big.db"
    data = write(path, buckets)
    bolt = boltread.BoltFile(data)
    assert bolt.check() == []
    key_root = bucket_roots(bolt)[b"key"]
    assert page(data, key_root)[1] == BRANCH_PAGE and depth(data, key_root) == 3
    headers = [page(data, p) for p in range(3, bolt.pgid)]
    leaves = [h for h in headers if h[1] == LEAF_PAGE]
    assert max(h[3] for h in leaves) == (1 << 20) // PAGE_SIZE  # the 1 MiB value spans 257 pages
    assert sum(1 for h in leaves if h[3]) >= 60
    assert items_of(bolt) == buckets
    want = expected_status(buckets, len(data))
    assert want["revision"] == 6001 and want["totalKey"] == 6002
    assert etcdctl_status(path) == want
    assert boltread.snapshot_status(path).hash == want["hash"]
    # Deterministic: the same input gives the same bytes.
    assert write(tmp_path / "again.db", buckets) == data

    # bbolt read-write: restore loads it as etcd's backend and commits on top of our pages.
    snap = tmp_path / "big.snap"
    snap.write_bytes(data + hashlib.sha256(data).digest())
    out = subprocess.run([ETCDCTL, "snapshot", "restore", str(snap), "--data-dir", str(tmp_path / "restored"),
                          "--name", "r", "--initial-cluster", "r=http://127.0.0.1:1",
                          "--initial-advertise-peer-urls", "http://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=120, env={"ETCDCTL_API": "3"})
    assert out.returncode == 0, out.stderr
    restored = etcdctl_status(tmp_path / "restored" / "member" / "snap" / "db")
    assert restored["revision"] == 6001 and restored["totalKey"] >= 6002


def test_both_meta_pages(tmp_path: Path) -> None:
    buckets: Buckets = [(b"key", [(rev_key(2), b"x")])]
    data = bytearray(write(tmp_path / "m.db", buckets))
    txids = [struct.unpack_from("<Q", data, off + PAGE_HEADER.size + 48)[0] for off in (0, PAGE_SIZE)]
    assert txids == [2, 1]
    good = etcdctl_status(tmp_path / "m.db")
    data[PAGE_HEADER.size + 20] ^= 1  # meta 0 damaged: bbolt falls back to meta 1
    (tmp_path / "m0.db").write_bytes(data)
    assert etcdctl_status(tmp_path / "m0.db") == good
    assert boltread.snapshot_status(tmp_path / "m0.db").hash == good["hash"]
    data[PAGE_SIZE + PAGE_HEADER.size + 20] ^= 1  # both damaged
    (tmp_path / "m01.db").write_bytes(data)
    with pytest.raises(boltread.BoltError, match="^checksum error$"):
        boltread.snapshot_status(tmp_path / "m01.db")


@pytest.mark.parametrize("buckets, message", [
    ([(b"b", []), (b"a", [])], "bucket name b'a' is not after b'b'"),
    ([(b"a", []), (b"a", [])], "is not after"),
    ([(b"", [])], "bucket name is empty"),
    ([(b"a", [(b"2", b""), (b"1", b"")])], "key in bucket b'a' b'1' is not after b'2'"),
    ([(b"a", [(b"1", b""), (b"1", b"")])], "is not after"),
    ([(b"a", [(b"", b"v")])], "is empty"),
    ([(b"a", [(b"k" * 32769, b"v")])], "32769 bytes"),
    ([(b"a", [("text", b"v")])], "must be bytes, not str"),
    ([(b"a", [(b"k", None)])], "must be bytes, not NoneType"),
])
def test_bad_input_is_refused(buckets: Buckets, message: str) -> None:
    with pytest.raises(BoltWriteError, match=message.replace("(", r"\(").replace("[", r"\[")):
        write_bolt(io.BytesIO(), buckets)


def test_reader_refuses_damage_cleanly(tmp_path: Path) -> None:
    """Truncated, cut and garbled files give a BoltError (bbolt itself panics on several)."""
    data = write(tmp_path / "ok.db", [(b"key", [(rev_key(m), b"v" * 300) for m in range(2, 400)])])
    cases = {
        "empty": b"", "tiny": data[:100], "two-pages": data[:8192 - 1], "cut": data[: len(data) // 2],
    }
    root = boltread.BoltFile(data).root
    garbled = bytearray(data)
    struct.pack_into("<H", garbled, root * PAGE_SIZE + 8, 0x20)  # root page of an unknown type
    cases["garbled"] = bytes(garbled)
    looped = bytearray(data)
    key_root = bucket_roots(boltread.BoltFile(data))[b"key"]
    struct.pack_into("<Q", looped, key_root * PAGE_SIZE + PAGE_HEADER.size + 8, key_root)  # branch -> itself
    cases["loop"] = bytes(looped)
    long = bytearray(data)
    struct.pack_into("<I", long, key_root * PAGE_SIZE + 12, 0xFFFFFFFF)  # overflow far past the end
    cases["overflow"] = bytes(long)
    for name, blob in cases.items():
        p = tmp_path / f"{name}.db"
        p.write_bytes(blob)
        with pytest.raises(boltread.BoltError) as exc:
            boltread.snapshot_status(p)
        assert str(exc.value), name
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-m", "securekv", "ctl", "snapshot", "status", str(tmp_path / "loop.db")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.startswith("Error: snapshot file integrity check failed.")
