"""The pure (sans-IO) modules must not import I/O, concurrency, clocks or global randomness.

That is what lets the deterministic simulator drive the same code the server runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "securekv"

# Packages whose code must stay pure. Each entry is a folder (or module) under securekv/.
PURE = ["raft", "node", "mvcc", "lease", "watch", "auth", "apply", "testing", "errors.py", "rpctypes.py",
        "snapcrypt/format.py"]

FORBIDDEN_MODULES = {
    "trio", "grpc", "asyncio", "socket", "ssl", "threading", "multiprocessing", "subprocess",
    "concurrent", "selectors", "sqlite3", "os", "shutil", "pathlib", "io", "tempfile", "time",
    "random", "secrets", "signal", "fcntl", "mmap", "uuid",
}
FORBIDDEN_CALLS = {"open", "input", "print", "exec", "eval"}


def _pure_files() -> list[Path]:
    files: list[Path] = []
    for entry in PURE:
        path = PACKAGE / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(path.rglob("*.py")))
    return files


def _violations(source: str, label: str) -> list[str]:
    tree = ast.parse(source, filename=label)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{label}:{node.lineno} imports {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            found.append(f"{label}:{node.lineno} calls {node.func.id}()")
    return found


def test_pure_modules_exist() -> None:
    assert _pure_files(), "no pure modules found: the rule would check nothing"


@pytest.mark.parametrize("path", _pure_files(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_pure_module_has_no_io(path: Path) -> None:
    assert _violations(path.read_text(), str(path.relative_to(PACKAGE.parent))) == []


def test_rule_catches_violations() -> None:
    sample = "import trio\nfrom os import path\nimport grpc.aio\nopen('x')\nfrom . import sibling\n"
    assert _violations(sample, "sample.py") == [
        "sample.py:1 imports trio",
        "sample.py:2 imports os",
        "sample.py:3 imports grpc.aio",
        "sample.py:4 calls open()",
    ]


# Raft's Ready is handled in one place: the node core. Everything else (the server's loop, the
# simulator, the Raft tests' network) drives the core, so a seed exercises the server's step.
READY_CALLS = {"ready", "has_ready", "advance"}
READY_OWNERS = ("securekv/raft/", "securekv/node/core.py")


def _ready_calls(source: str, label: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename=label)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in READY_CALLS
                and not node.args and not node.keywords):
            found.append(f"{label}:{node.lineno} calls .{node.func.attr}()")
    return found


def test_only_the_node_core_handles_readies() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        label = str(path.relative_to(PACKAGE.parent))
        if not label.startswith(READY_OWNERS):
            found += _ready_calls(path.read_text(), label)
    assert found == []
    assert _ready_calls((PACKAGE / "node" / "core.py").read_text(), "core.py")  # the rule sees them
