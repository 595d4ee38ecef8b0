"""The committed generated code matches the .proto files, and the wire names match etcd's."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_OUT = ROOT / "securekv" / "proto"


def _descriptor(path: Path) -> bytes:
    """The serialized FileDescriptorProto a ``_pb2`` module registers: what the .proto says."""
    match = re.search(r"AddSerializedFile\((b'(?:[^'\\]|\\.)*')\)", path.read_text())
    assert match, f"{path}: no AddSerializedFile call"
    return ast.literal_eval(match.group(1))


def _method_table(path: Path) -> list[str]:
    """Method paths and (de)serializers a ``_pb2_grpc`` module wires up, in order."""
    return re.findall(r"'(/[\w.]+/\w+)'|\b(?:request|response)_(?:de)?serializer=([\w.]+)", path.read_text())


def _lower_bound(distribution: str) -> tuple[int, ...]:
    """pyproject.toml's ``>=`` bound, read as tools/genproto.py reads it to stamp the modules."""
    spec = importlib.util.spec_from_file_location("genproto", ROOT / "tools" / "genproto.py")
    assert spec is not None and spec.loader is not None
    genproto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(genproto)
    return tuple(int(part) for part in genproto.declared_lower_bound(distribution).split("."))


def test_generated_code_is_current(tmp_path: Path) -> None:
    """The committed modules say what the .proto files say.

    Compared by content (descriptor bytes, method table), not by text: a newer grpcio-tools
    release changes version stamps and layout, and a user's fresh install gets the newest one.
    """
    assert importlib.util.find_spec("grpc_tools") is not None
    subprocess.run([sys.executable, str(ROOT / "tools" / "genproto.py"), str(tmp_path)], check=True, capture_output=True)
    generated = sorted((tmp_path / "securekv" / "proto").glob("*.py"))
    assert generated
    for path in generated:
        committed = PROTO_OUT / path.name
        if path.name.endswith("_pb2_grpc.py"):
            assert _method_table(committed) == _method_table(path), f"{committed} is stale: run tools/genproto.py"
        else:
            assert _descriptor(committed) == _descriptor(path), f"{committed} is stale: run tools/genproto.py"
    committed_names = {p.name for p in PROTO_OUT.glob("*_pb2*.py")}
    assert committed_names == {p.name for p in generated}


def test_generated_code_needs_no_newer_runtime_than_declared() -> None:
    """The modules' import-time version guards accept the lower bounds pyproject.toml declares."""
    grpc_floor = _lower_bound("grpcio")
    protobuf_floor = _lower_bound("protobuf")
    for path in sorted(PROTO_OUT.glob("*_pb2_grpc.py")):
        stamp = re.search(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", path.read_text(), re.MULTILINE)
        assert stamp, f"{path}: no GRPC_GENERATED_VERSION"
        assert tuple(int(p) for p in stamp.group(1).split(".")) == grpc_floor, path
    for path in sorted(PROTO_OUT.glob("*_pb2.py")):
        check = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", path.read_text())
        assert check, f"{path}: no protobuf runtime check"
        gencode = tuple(int(part) for part in check.groups())
        assert gencode[0] == protobuf_floor[0] and gencode <= protobuf_floor, (path, gencode, protobuf_floor)


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
