"""The committed generated code matches the .proto files, and the wire names match etcd's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    assert importlib.util.find_spec("grpc_tools") is not None
    subprocess.run([sys.executable, str(ROOT / "tools" / "genproto.py"), str(tmp_path)], check=True, capture_output=True)
    generated = sorted((tmp_path / "securekv" / "proto").glob("*.py"))
    assert generated
    for path in generated:
        committed = ROOT / "securekv" / "proto" / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run tools/genproto.py"
    committed_names = {p.name for p in (ROOT / "securekv" / "proto").glob("*_pb2*.py")}
    assert committed_names == {p.name for p in generated}


def test_full_method_names_match_etcd() -> None:
    from securekv.proto import rpc_pb2, v3election_pb2, v3lock_pb2

    def methods(module, service):
        desc = module.DESCRIPTOR.services_by_name[service]
        return {f"/{desc.full_name}/{m.name}" for m in desc.methods}

    assert "/etcdserverpb.KV/Range" in methods(rpc_pb2, "KV")
    assert "/etcdserverpb.Watch/Watch" in methods(rpc_pb2, "Watch")
    assert "/etcdserverpb.Lease/LeaseKeepAlive" in methods(rpc_pb2, "Lease")
    assert methods(rpc_pb2, "Maintenance") >= {"/etcdserverpb.Maintenance/Snapshot", "/etcdserverpb.Maintenance/MoveLeader"}
    assert methods(v3lock_pb2, "Lock") == {"/v3lockpb.Lock/Lock", "/v3lockpb.Lock/Unlock"}
    assert "/v3electionpb.Election/Observe" in methods(v3election_pb2, "Election")


def test_field_numbers_that_clients_depend_on() -> None:
    from securekv.proto import rpc_pb2

    watch_response = rpc_pb2.WatchResponse.DESCRIPTOR
    assert watch_response.fields_by_name["events"].number == 11
    compare = rpc_pb2.Compare.DESCRIPTOR
    assert compare.fields_by_name["range_end"].number == 64
    grant_role = rpc_pb2.AuthUserGrantRoleRequest.DESCRIPTOR
    assert grant_role.fields_by_name["user"].number == 1
    # A message encoded by field number decodes as etcd would send it.
    raw = bytes([0x0A, 0x01, ord("k"), 0x12, 0x01, ord("v")])  # key=1 "k", value=2 "v"
    put = rpc_pb2.PutRequest.FromString(raw)
    assert (put.key, put.value) == (b"k", b"v")
