"""Encrypted snapshot files on disk: recognise, write atomically, decrypt privately, report.

The rule for plaintext is that it only ever lands in a file nobody else can open: decryption
goes into a temp file that is created 0600 and unlinked at once (no name, nothing left after a
crash), so a refused restore leaves no trace and ``snapshot status`` can map the plaintext
(bbolt needs random access) without a copy in memory.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import mmap
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import attrs

from securekv.fsutil import create_temp, fsync_dir
from securekv.snapcrypt.format import (
    HEADER_LEN,
    MAGIC,
    Header,
    KeySource,
    SnapshotMeta,
    SnapshotTampered,
    decrypt_stream,
    encrypt_stream,
    parse_header,
)

DIGEST_LEN = 32  # etcd's trailing SHA-256
BLOCK = 1 << 20


class Kind(enum.Enum):
    ENCRYPTED = "encrypted"
    PLAIN = "plain"  # a bbolt file: page 0 starts with page id 0
    UNKNOWN = "unknown"


def detect(path: str | os.PathLike[str]) -> Kind:
    """What the file looks like from its first 8 bytes (OSError if it cannot be read)."""
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC))
    if head == MAGIC:
        return Kind.ENCRYPTED
    if head == bytes(len(MAGIC)):
        return Kind.PLAIN
    return Kind.UNKNOWN


def read_file_header(path: str | os.PathLike[str]) -> Header:
    """The header, plus a size check against it (a cut file is refused without a key)."""
    with open(path, "rb") as fh:
        header = parse_header(fh.read(HEADER_LEN))
        size = os.fstat(fh.fileno()).st_size
    if size < header.encrypted_size:
        raise SnapshotTampered(f"the file is truncated: {size} of {header.encrypted_size} bytes")
    if size > header.encrypted_size:
        raise SnapshotTampered(f"the file is longer than its header says ({size} bytes, expected "
                               f"{header.encrypted_size}): unexpected data after the last chunk")
    return header


# -- writing -----------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A new 0600 file that appears at ``path`` only if the block completes: written as
    ``.NAME.part-<random>`` (O_EXCL|O_NOFOLLOW), fsynced, renamed, the directory fsynced; removed
    on error."""
    target = Path(path)
    fd, tmp = create_temp(target.parent, f".{target.name}.part-")
    try:
        with os.fdopen(fd, "wb", buffering=BLOCK) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


class _PlainSnapshot:
    """A bbolt file read as ``snapshot save`` would have written it: the file, zero-padded to a
    multiple of 512, then the SHA-256 of all that (etcd's trailer)."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.body = size + (-size) % 512
        self.size = size
        self.size_with_digest = self.body + DIGEST_LEN
        self.pos = 0
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.size_with_digest
        if self.pos < self.size:
            data = self.fh.read(min(n, self.size - self.pos))
            if not data:
                raise OSError(f"snapshot file ended after {self.pos} of {self.size} bytes")
        elif self.pos < self.body:
            data = bytes(min(n, self.body - self.pos))
        elif self.pos == self.body:
            data = self.digest.digest()
            self.pos += len(data)
            return data
        else:
            return b""
        self.digest.update(data)
        self.pos += len(data)
        return data


def encrypt_bolt_file(bolt_path: str | os.PathLike[str], target: str | os.PathLike[str], meta: SnapshotMeta,
                      source: KeySource, random: Callable[[int], bytes] = os.urandom,
                      progress: Callable[[int], None] | None = None) -> Header:
    """Encrypt a bbolt snapshot file (as ``snapshot save`` would store it: padding + SHA-256) into
    ``target`` atomically. ``meta.plaintext_size`` is computed here."""
    with open(bolt_path, "rb") as fh:
        plain = _PlainSnapshot(fh, os.fstat(fh.fileno()).st_size)
        meta = attrs.evolve(meta, plaintext_size=plain.size_with_digest)
        with atomic_output(target) as out:
            return encrypt_stream(plain, out, meta, source, random, progress=progress)


# -- reading -----------------------------------------------------------------------------------
def nearest_dir(path: str | os.PathLike[str]) -> str:
    """The directory that holds ``path``, or its nearest existing ancestor."""
    d = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.isdir(d):
        d = os.path.dirname(d)
    return d


def private_temp(directory: str) -> BinaryIO:
    """A read-write temp file in ``directory`` that has no name (unlinked at once), mode 0600."""
    return tempfile.TemporaryFile(dir=directory, prefix=".securekv-decrypt-")


def decrypt_to_private_file(path: str | os.PathLike[str], source: KeySource, directory: str,
                            progress: Callable[[int, int], None] | None = None,
                            digest: bool = True) -> tuple[BinaryIO, Header, bytes]:
    """Decrypt and authenticate every chunk of ``path`` into a nameless temp file in
    ``directory``; returns it (at offset 0), the header and the plaintext's SHA-256 (b"" without
    ``digest``). On any failure the temp file is closed (and so gone) before the error
    propagates."""
    header = read_file_header(path)
    out = private_temp(directory)
    try:
        with open(path, "rb") as src:
            total = header.plaintext_size
            _, sha = decrypt_stream(src, out, source,
                                    (lambda done: progress(done, total)) if progress is not None else None, digest)
        out.flush()
        out.seek(0)
        return out, header, sha
    except BaseException:
        out.close()
        raise


@attrs.frozen
class EncryptedStatus:
    """``snapshot status`` of an encrypted file; the etcd fields only when a key opened it."""

    header: Header
    file_size: int
    hash: int | None = None  # etcd's CRC-32C content hash of the bbolt file
    revision: int | None = None  # etcd's: of the last key in the decrypted file (exact)
    total_key: int | None = None
    total_size: int | None = None  # bbolt's logical size
    sha256: bytes | None = None  # of the whole plaintext (bbolt + padding + etcd's trailer)

    @property
    def verified(self) -> bool:
        return self.sha256 is not None


def status(path: str | os.PathLike[str], source: KeySource | None) -> EncryptedStatus:
    """From the header alone without a key; with one, every chunk authenticated and the
    decrypted bbolt file checked and counted as ``etcdctl snapshot status`` does."""
    from securekv.client.boltread import BoltError, BoltFile

    header = read_file_header(path)
    file_size = header.encrypted_size
    if source is None:
        return EncryptedStatus(header, file_size)
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.access(directory, os.W_OK):
        directory = tempfile.gettempdir()
    plain, header, sha = decrypt_to_private_file(path, source, directory)
    with plain:
        if header.plaintext_size == 0:
            raise BoltError("invalid database (the snapshot is empty)")
        # bbolt ignores the trailing padding and SHA-256, as etcdctl's status does.
        with mmap.mmap(plain.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                st = BoltFile(data).status()
            except (struct.error, ValueError, OverflowError) as exc:
                raise BoltError(f"invalid database ({exc})") from None
    return EncryptedStatus(header, file_size, st.hash, st.revision, st.total_key, st.total_size, sha)


__all__ = ["EncryptedStatus", "Kind", "atomic_output", "decrypt_to_private_file", "detect", "encrypt_bolt_file",
           "nearest_dir", "read_file_header", "status"]
