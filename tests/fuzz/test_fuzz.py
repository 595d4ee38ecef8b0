"""Every decoder of untrusted or on-disk bytes, fuzzed with hypothesis on a bounded budget.

Per target: random bytes, and mutations (flips, overwrites, insertions, deletions, cuts,
repeats) of valid encodings made by the code's own encoders; the JSON and YAML targets also get
structured documents built from the keys their parsers look for. Every input must end in the
target's typed error or a result: never another exception, never a hang (a 10 s alarm per
input). ``SECUREKV_FUZZ_EXAMPLES`` raises the budget for a longer run; atheris
(``atheris_run.py``) is the coverage-guided long run. Found crashes live on as regression
inputs in ``test_fuzz_regressions.py``.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from targets import TARGETS, Escaped, Target, check

EXAMPLES = int(os.environ.get("SECUREKV_FUZZ_EXAMPLES", "60"))
HANG_SECONDS = 10


def budget(examples: int = EXAMPLES) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _Hang(BaseException):  # not caught as "the decoder raised something"
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang()


def run(target: Target, data: bytes) -> None:
    """One input with a hang guard: an input that takes longer than HANG_SECONDS is a finding."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        check(target, data)
    except _Hang:
        raise Escaped(f"{target.name}: no answer within {HANG_SECONDS}s on {data[:200]!r} ({len(data)} bytes)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "repeat", "word"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "cut":
            del data[pos:]
        elif op == "repeat" and data:
            end = min(len(data), pos + draw(st.integers(1, 64)))
            data[pos:pos] = data[pos:end]
        elif op == "word" and len(data) >= pos + 8:
            value = draw(st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]))
            size = draw(st.sampled_from([2, 4, 8]))
            order = draw(st.sampled_from(["little", "big"]))
            data[pos:pos + size] = (value % (1 << (8 * size))).to_bytes(size, order)
    return bytes(data)


NAMES = sorted(TARGETS)


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_seeds_are_accepted(name: str) -> None:
    """The valid encodings decode without any error (the seeds are real inputs)."""
    target = TARGETS[name]
    for seed in target.seeds():
        target.run(seed)


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_random_bytes(name: str) -> None:
    target = TARGETS[name]

    @budget()
    @given(st.binary(max_size=4096))
    def fuzz(data: bytes) -> None:
        run(target, data)

    fuzz()


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_mutated_seeds(name: str) -> None:
    target = TARGETS[name]
    seeds = target.seeds()

    @budget(2 * EXAMPLES)
    @given(mutated(seeds))
    def fuzz(data: bytes) -> None:
        run(target, data)

    fuzz()


# -- structured documents for the text formats -----------------------------------------------------

def _json_values(keys: list[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=20), st.sampled_from(["8760h", "1y", "-1h", "1e400h", "0s", "ecdsa",
                                                               "rsa", "server auth", "cert sign", "true"]))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=8)), inner, max_size=5)),
        max_leaves=20)


CFSSL_KEYS = ["CN", "names", "hosts", "key", "algo", "size", "ca", "expiry", "pathlen", "C", "ST", "L", "O",
              "OU", "signing", "default", "profiles", "usages", "ca_constraint", "is_ca", "server", "peer"]


@pytest.mark.parametrize("name", ["cfssl-csr", "cfssl-config"])
def test_fuzz_cfssl_structured(name: str) -> None:
    target = TARGETS[name]

    @budget()
    @given(_json_values(CFSSL_KEYS))
    def fuzz(doc: Any) -> None:
        if name == "cfssl-config" and isinstance(doc, dict):
            doc = {"signing": doc}
        run(target, json.dumps(doc).encode())

    fuzz()


def _option_keys() -> list[str]:
    from securekv.config.options import OPTIONS

    return sorted({p for o in OPTIONS for p in o.yaml_path})


def test_fuzz_yaml_structured() -> None:
    target = TARGETS["yaml-config"]
    keys = _option_keys()

    @budget()
    @given(st.dictionaries(st.sampled_from(keys), _json_values(keys), max_size=8))
    def fuzz(doc: dict) -> None:
        run(target, yaml.safe_dump(doc).encode())

    fuzz()


GATEWAY_FIELDS = ["key", "range_end", "value", "lease", "limit", "revision", "sort_order", "sort_target",
                  "serializable", "compare", "success", "failure", "request_put", "request_range", "target",
                  "result", "create_request", "cancel_request", "progress_request", "start_revision", "filters",
                  "ID", "TTL", "watch_id", "prev_kv", "keys"]


def test_fuzz_gateway_structured() -> None:
    target = TARGETS["gateway-json"]

    @budget()
    @given(st.integers(0, 255), st.lists(_json_values(GATEWAY_FIELDS), min_size=1, max_size=3))
    def fuzz(kind: int, docs: list) -> None:
        run(target, bytes([kind]) + " ".join(json.dumps(d) for d in docs).encode())

    fuzz()


def test_fuzz_guard_reports_other_exceptions_and_hangs() -> None:
    """The harness itself: an unexpected exception and a hang are both findings."""
    from targets import Target

    bad = Target("bad", lambda d: d[10], (ValueError,), lambda: [], "")
    with pytest.raises(Escaped, match="IndexError"):
        run(bad, b"")

    def slow(_: bytes) -> None:
        import time

        time.sleep(HANG_SECONDS + 5)

    global HANG_SECONDS
    saved, HANG_SECONDS = HANG_SECONDS, 1
    try:
        with pytest.raises(Escaped, match="no answer within 1s"):
            run(Target("slow", slow, (), lambda: [], ""), b"x")
    finally:
        HANG_SECONDS = saved



def test_atheris_smoke(tmp_path) -> None:
    """The long-run harness works (one target for a few seconds here; every target for hours
    by hand, docs/fuzzing.md)."""
    name = "peer-message"
    pytest.importorskip("atheris")
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    repo = here.parents[1]
    work = tmp_path
    proc = subprocess.run([sys.executable, str(here / "atheris_run.py"), name, "-runs=300", "-max_total_time=10"],
                          capture_output=True, text=True, timeout=120, cwd=str(work),
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert (work / ".fuzz-corpus" / name).is_dir()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 300 runs" in proc.stderr, proc.stderr[-2000:]
