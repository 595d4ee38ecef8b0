"""Coverage-guided fuzzing of one target with atheris (libFuzzer) — the long run.

    PYTHONPATH=. python tests/fuzz/atheris_run.py wal-segment -max_total_time=600 [corpus_dir]
    PYTHONPATH=. python tests/fuzz/atheris_run.py --list

Without a corpus directory the corpus is ./.fuzz-corpus/TARGET (git-ignored), seeded with the
target's valid encodings and grown by every run; scratch files go to ./.fuzz-corpus/scratch
(libFuzzer leaves the process through exit(), past Python's atexit). A finding stops the run and leaves ``crash-<sha1>`` in the working directory: add its bytes to
``test_fuzz_regressions.py``, fix the decoder, run again. The usual libFuzzer flags apply
(``-max_total_time``, ``-runs``, ``-jobs``, ``-dict``, ``-max_len``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["securekv"]):
    import securekv.api.gateway  # noqa: F401
    import securekv.client.boltread  # noqa: F401
    import securekv.config.load  # noqa: F401
    import securekv.peer.codec  # noqa: F401
    import securekv.pki.cfssl  # noqa: F401
    import securekv.server.etcdimport  # noqa: F401
    import securekv.storage.records  # noqa: F401
    import securekv.storage.wal  # noqa: F401

import targets  # noqa: E402
from targets import TARGETS, check  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        names = "\n".join(f"  {n:14} {t.reads}" for n, t in sorted(TARGETS.items()))
        print(f"usage: atheris_run.py TARGET [libFuzzer flags] [corpus_dir]\ntargets:\n{names}")
        sys.exit(0 if "--list" in argv else 2)
    target = TARGETS[argv[1]]
    rest = argv[2:]
    # libFuzzer leaves the process with exit(), past Python's atexit: everything this run writes
    # lives under ./.fuzz-corpus/ (git-ignored), where the corpus also grows from run to run.
    base = Path(".fuzz-corpus")
    targets.set_scratch(base / "scratch")
    if not [a for a in rest if not a.startswith("-")]:
        corpus = base / target.name
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(target.seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
        rest.append(str(corpus))

    def one_input(data: bytes) -> None:
        check(target, data)  # raises Escaped on a finding: atheris reports it and stops

    atheris.Setup([argv[0], *rest], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
