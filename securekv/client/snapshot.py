"""Snapshot save: stream Maintenance.Snapshot into a file, verify, then rename into place.

The file is written as ``.<name>.part-<pid>`` (0600) next to the target, fsynced, checked
(etcdctl's ``size % 512 == 32`` rule plus the trailing SHA-256 over everything before it),
renamed and the directory fsynced — a failure never leaves a partial file at ``path``. The
digest stays at the end of the file, as etcdctl keeps it (``snapshot restore`` checks it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import grpc

from securekv.client.errors import SnapshotError, from_rpc_error
from securekv.fsutil import fsync_dir
from securekv.proto import rpc_pb2

DIGEST_LEN = 32


def save_snapshot(stub, path: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None,
                  timeout: float | None = None) -> int:
    target = Path(path)
    tmp = target.parent / f".{target.name}.part-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    ok = False
    try:
        digest = hashlib.sha256()
        pending = b""  # the last DIGEST_LEN bytes seen: they may be the trailing checksum
        received = 0
        total = 0
        try:
            for resp in stub.Snapshot(rpc_pb2.SnapshotRequest(), timeout=timeout, wait_for_ready=True):
                blob = resp.blob
                if not total:
                    total = len(blob) + resp.remaining_bytes
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
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
