"""Issue 12 (bounded resources): Snapshot RPCs on a small disk. At most two run at a time (each
keeps a copy of the store in the data dir while it streams), more are refused at once, and none
starts when it would leave the file system short of free space — so ten concurrent snapshots
cannot fill the disk and stop the member. The data dir is a tmpfs mounted by the test."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from server_harness import Certs

SIZE_MB = 256


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the data dir needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m,mode=0700", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def channel(m, certs: Certs) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(certs.ca.read_bytes(), certs.client_key.read_bytes(),
                                         certs.client_cert.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{m.port}", creds)


def test_ten_concurrent_snapshots_do_not_fill_a_small_disk(small_disk: Path, make_member, certs: Certs) -> None:
    from securekv.proto import rpc_pb2, rpc_pb2_grpc
    from securekv.server.etcdserver import MAX_CONCURRENT_SNAPSHOTS, snapshot_free_reserve

    m = make_member(name="disk/data")
    try:
        with channel(m, certs) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(12):  # ~12 MB of data
                kv.Put(rpc_pb2.PutRequest(key=f"big{i}".encode(), value=os.urandom(1 << 20)), timeout=30)
            maint = rpc_pb2_grpc.MaintenanceStub(ch)
            streams, refused = [], []
            for _ in range(10):  # ten at once; each keeps its stream open after the first chunk
                it = maint.Snapshot(rpc_pb2.SnapshotRequest(), timeout=60)
                try:
                    first = next(it)
                    streams.append((it, first))
                except grpc.RpcError as exc:
                    refused.append((exc.code(), exc.details()))
                    it.cancel()
            assert len(streams) == MAX_CONCURRENT_SNAPSHOTS, refused
            assert refused == [(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "etcdserver: too many snapshots in progress, retry later")] * 8
            member_dir = small_disk / "data" / "member"
            assert len(list(member_dir.glob(".snapshot-*.db"))) == MAX_CONCURRENT_SNAPSHOTS
            reserve = snapshot_free_reserve(shutil.disk_usage(small_disk).total)
            assert shutil.disk_usage(small_disk).free > reserve
            for it, first in streams:  # the admitted ones complete
                total = len(first.blob) + sum(len(r.blob) for r in it)
                assert total > 12 << 20
            assert list(member_dir.glob(".snapshot-*")) == []  # temp files gone, slots free again
            again = maint.Snapshot(rpc_pb2.SnapshotRequest(), timeout=60)
            assert sum(len(r.blob) for r in again) > 12 << 20

            # Free space short: a filler leaves less than the reserve; the snapshot is refused
            # before it writes anything, and the member keeps serving writes.
            filler = small_disk / "filler"
            free = shutil.disk_usage(small_disk).free
            with open(filler, "wb") as fh:
                fh.truncate(0)
                fh.write(b"\0" * max(0, free - reserve - (4 << 20)))
            with pytest.raises(grpc.RpcError) as info:
                list(maint.Snapshot(rpc_pb2.SnapshotRequest(), timeout=60))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.details() == "etcdserver: not enough free disk space for a snapshot"
            assert list(member_dir.glob(".snapshot-*")) == []
            kv.Put(rpc_pb2.PutRequest(key=b"still", value=b"writable"), timeout=30)
            filler.unlink()
            assert sum(len(r.blob) for r in maint.Snapshot(rpc_pb2.SnapshotRequest(), timeout=60)) > 12 << 20
        assert "refusing a snapshot" in m.output()
    finally:
        m.kill()
