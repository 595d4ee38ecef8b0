"""Regenerate securekv/proto/*_pb2*.py from the .proto files with grpcio-tools.

Run from anywhere: ``python3 tools/genproto.py [OUTDIR]``. The generated modules are committed
so that installing securekv needs no protoc; tests/test_proto.py checks they are current.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "securekv" / "proto"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with_services = [p for p in protos if "\nservice " in p.read_text()]
    for flag, files in (("--python_out", protos), ("--grpc_python_out", with_services)):
        args = ["protoc", f"-I{ROOT}", f"-I{include}", f"{flag}={out_dir}"]
        code = protoc.main(args + [str(p.relative_to(ROOT)) for p in files])
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
    return sorted((out_dir / "securekv" / "proto").glob("*_pb2*.py"))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path)
