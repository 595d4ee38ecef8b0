"""Snapshot save: stream Maintenance.Snapshot into a file, verify, then rename into place.

The file is written as ``.<name>.part-<random>`` (0600, ``O_EXCL|O_NOFOLLOW``:
``fsutil.create_temp``) next to the target, fsynced, checked (etcdctl's ``size % 512 == 32``
rule plus the trailing SHA-256 over everything before it), renamed and the directory fsynced —
a failure never leaves a partial file at ``path``. The digest stays at the end of the file, as
etcdctl keeps it (``snapshot restore`` checks it).

With ``encryption`` the same stream is sealed on the fly (``securekv.snapcrypt.format``) and
never touches the disk in clear: the first message announces the size (etcd's
``remaining_bytes``), which the header needs; cluster, member and revision come from the
response header (securekv fills it) or, for a server that leaves it empty (etcd 3.4), from a
Status call made just before, whose revision is then marked as a lower bound.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable

import attrs
import grpc

from securekv.client.errors import SnapshotError, from_rpc_error
from securekv.errors import UsageError
from securekv.fsutil import create_temp
from securekv.fsutil import fsync_dir
from securekv.proto import rpc_pb2

DIGEST_LEN = 32


@attrs.frozen
class Encryption:
    """How ``save_snapshot`` seals the file (see securekv.snapcrypt.format)."""

    source: object  # snapcrypt.format.KeySource
    cipher: int = 1  # CIPHER_AES_256_GCM
    random: Callable[[int], bytes] = os.urandom
    clock: Callable[[], float] = time.time


class _Sealer:
    """Turns the plaintext stream into the encrypted file's bytes."""

    def __init__(self, enc: Encryption, status: rpc_pb2.StatusResponse | None) -> None:
        self.enc = enc
        self.status = status
        self.encryptor = None

    def start(self, first: rpc_pb2.SnapshotResponse) -> bytes:
        from securekv.snapcrypt.format import SnapshotMeta, seal_header

        hdr = first.header
        fallback = self.status.header if self.status is not None else rpc_pb2.ResponseHeader()
        exact = hdr.revision > 0
        meta = SnapshotMeta(
            plaintext_size=len(first.blob) + first.remaining_bytes + DIGEST_LEN,
            revision=hdr.revision if exact else fallback.revision,
            cluster_id=hdr.cluster_id or fallback.cluster_id,
            member_id=hdr.member_id or fallback.member_id,
            created=int(self.enc.clock()),
            revision_is_lower_bound=not exact,
        )
        self.encryptor = seal_header(meta, self.enc.source, self.enc.random, cipher=self.enc.cipher)
        return self.encryptor.header_bytes

    def update(self, data: bytes) -> bytes:
        try:
            return self.encryptor.update(data)
        except UsageError:
            raise SnapshotError("the snapshot stream is longer than the server announced") from None

    def finalize(self) -> bytes:
        try:
            return self.encryptor.finalize()
        except UsageError:
            raise SnapshotError("the snapshot stream is shorter than the server announced") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def save_snapshot(stub, path: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None,
                  timeout: float | None = None, encryption: Encryption | None = None) -> int:
    """Returns the number of snapshot (plaintext) bytes received."""
    target = Path(path)
    status = None
    if encryption is not None:
        try:
            status = stub.Status(rpc_pb2.StatusRequest(), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
    fd, tmp = create_temp(target.parent, f".{target.name}.part-")
    ok = False
    try:
        sealer = _Sealer(encryption, status) if encryption is not None else None
        digest = hashlib.sha256()
        pending = b""  # the last DIGEST_LEN bytes seen: they may be the trailing checksum
        received = 0
        total = 0
        try:
            for resp in stub.Snapshot(rpc_pb2.SnapshotRequest(), timeout=timeout, wait_for_ready=True):
                blob = resp.blob
                if sealer is not None and received == 0:
                    _write_all(fd, sealer.start(resp))
                if not total:
                    total = len(blob) + resp.remaining_bytes
                _write_all(fd, sealer.update(blob) if sealer is not None else blob)
                received += len(blob)
                data = pending + blob
                if len(data) > DIGEST_LEN:
                    digest.update(data[:-DIGEST_LEN])
                    pending = data[-DIGEST_LEN:]
                else:
                    pending = data
                if progress is not None:
                    progress(received, max(total, received))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        if received % 512 != DIGEST_LEN:
            raise SnapshotError(f"sha256 checksum not found [bytes: {received}]")
        if digest.digest() != pending:
            raise SnapshotError("sha256 checksum mismatch: snapshot data is corrupt")
        if sealer is not None:
            _write_all(fd, sealer.finalize())
        os.fsync(fd)
        ok = True
    finally:
        os.close(fd)
        if not ok:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    try:
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return received
