"""The Raft core and the checkers are pure: an import allowlist, and a run with every global
clock and global RNG booby-trapped.

``tests/test_import_rules.py`` forbids known I/O modules project-wide; this is stricter for the
consensus core: anything not on the list (``datetime``, ``logging``, ``sys``...) is refused, and a
whole simulated run proves no hidden clock or global randomness is reached at run time.
"""

from __future__ import annotations

import ast
import os
import random
import time
from pathlib import Path

import pytest

from securekv.raft import Config, MemoryStorage, RawNode
from securekv.sim.runner import params_for, run_seed

ROOT = Path(__file__).resolve().parents[2] / "securekv"
ALLOWED = {"__future__", "attrs", "collections", "collections.abc", "enum", "struct", "typing",
           "securekv.errors",
           "securekv.testing"}  # the checkers' own package: every file in it is held to this list too
PURE_FILES = sorted((ROOT / "raft").glob("*.py")) + sorted((ROOT / "testing").glob("*.py"))
#: The node core (securekv/node) sits on the Raft core and the server's pure parts: the same
#: rule, plus the modules it drives (requests are protobuf, errors are etcd's).
NODE_ALLOWED = ALLOWED | {"json", "securekv.raft", "securekv.raft.errors", "securekv.proto", "securekv.rpctypes"}
NODE_FILES = sorted((ROOT / "node").glob("*.py"))
#: Builtins whose results differ between runs or processes.
NONDETERMINISTIC_CALLS = {"hash", "id", "open", "print", "input", "vars", "globals"}


def _imports_and_calls(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    imports: set[str] = set()
    calls: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imports.add(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.add(node.func.id)
    return imports, calls


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module_imports_only_the_allowlist(path: Path) -> None:
    imports, calls = _imports_and_calls(path)
    assert imports <= ALLOWED, imports - ALLOWED
    assert not calls & NONDETERMINISTIC_CALLS


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_node_core_imports_only_the_allowlist(path: Path) -> None:
    imports, calls = _imports_and_calls(path)
    assert imports <= NODE_ALLOWED, imports - NODE_ALLOWED
    assert not calls & NONDETERMINISTIC_CALLS


def _trap(name: str):  # type: ignore[no-untyped-def]
    def boom(*_a: object, **_k: object) -> object:
        raise AssertionError(f"the pure core reached {name}")
    return boom


@pytest.fixture
def no_global_clock_or_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("random", "randrange", "randint", "choice", "choices", "shuffle", "sample",
                 "getrandbits", "uniform"):
        monkeypatch.setattr(random, name, _trap(f"random.{name}"))
    for name in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "sleep"):
        monkeypatch.setattr(time, name, _trap(f"time.{name}"))
    monkeypatch.setattr(os, "urandom", _trap("os.urandom"))


def test_a_whole_simulated_run_needs_no_global_clock_or_rng(no_global_clock_or_rng: None) -> None:
    """Faults, crashes, snapshots, conf changes, transfers: all of it on injected RNGs only."""
    result = run_seed(11, params_for(3, ticks=300))
    assert result.violation is None
    assert result.commits > 20 and result.elections >= 2


class CountingRng:
    """An injected Rng that records every draw (the core must use nothing else)."""

    def __init__(self) -> None:
        self.draws: list[tuple[int, int]] = []

    def randrange(self, start: int, stop: int) -> int:
        self.draws.append((start, stop))
        return start + len(self.draws) % (stop - start)


def test_election_jitter_comes_from_the_injected_rng(no_global_clock_or_rng: None) -> None:
    rng = CountingRng()
    st = MemoryStorage.with_peers([1])
    node = RawNode(Config(id=1, storage=st, rng=rng, election_tick=10))
    before = len(rng.draws)
    for _ in range(40):
        node.tick()
        if node.has_ready():
            rd = node.ready()
            st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            node.advance()
    assert node.raft.lead == 1  # a single voter elected itself after a randomized timeout
    assert len(rng.draws) > before and set(rng.draws) == {(0, 10)}
