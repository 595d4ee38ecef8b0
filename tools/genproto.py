"""Regenerate securekv/proto/*_pb2*.py from the .proto files with grpcio-tools.

Run from anywhere: ``python3 tools/genproto.py [OUTDIR]``. The generated modules are committed
so that installing securekv needs no protoc; tests/test_proto.py checks they are current.

The gRPC plugin stamps each ``*_pb2_grpc.py`` with ``GRPC_GENERATED_VERSION``, the version of
grpcio-tools that ran, and the module refuses to import under an older grpcio. That guard would
then follow whichever grpcio-tools release a developer happened to have, not what securekv
declares, so it is rewritten to the grpcio lower bound in pyproject.toml: the code must work
with that release, and the lower-bounds test run proves it does.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from grpc_tools import protoc
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "securekv" / "proto"
GRPC_STAMP = re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.MULTILINE)


def declared_lower_bound(distribution: str) -> str:
    """The ``>=`` bound pyproject.toml declares for a runtime dependency."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    for spec in dependencies:
        match = re.fullmatch(rf"{re.escape(distribution)}\s*>=\s*([0-9.]+)", spec.strip())
        if match:
            return match.group(1)
    raise LookupError(f"pyproject.toml declares no '{distribution}>=' dependency")


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with_services = [p for p in protos if "\nservice " in p.read_text()]
    for flag, files in (("--python_out", protos), ("--grpc_python_out", with_services)):
        args = ["protoc", f"-I{ROOT}", f"-I{include}", f"{flag}={out_dir}"]
        code = protoc.main(args + [str(p.relative_to(ROOT)) for p in files])
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
    grpc_floor = declared_lower_bound("grpcio")
    for path in (out_dir / "securekv" / "proto").glob("*_pb2_grpc.py"):
        text, count = GRPC_STAMP.subn(f"GRPC_GENERATED_VERSION = '{grpc_floor}'", path.read_text())
        if count != 1:
            raise SystemExit(f"{path}: expected one GRPC_GENERATED_VERSION line, found {count}")
        path.write_text(text)
    return sorted((out_dir / "securekv" / "proto").glob("*_pb2*.py"))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path)
