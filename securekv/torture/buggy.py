"""A deliberately broken securekv build, so the fault suite can prove its checks bite.

    python -m securekv.torture.buggy serializable-as-linearizable serve <securekv serve flags>

``serializable-as-linearizable`` makes every member answer linearizable reads (Range and
read-only Txn) from its local store without a ReadIndex round — the classic stale-read bug
(etcd had it before 3.0's ReadIndex; Jepsen found it in several stores). A follower or a
deposed leader then serves values older than writes already acknowledged elsewhere.

Why a separate entry point and not a switch in the server: `securekv serve` has no way to turn
this on — no flag, no environment variable — so it cannot be enabled by accident in
production. Only this module, which nothing but ``python -m securekv.torture --inject-bug``
runs, patches the one method, and it refuses to run if that method is gone (after a refactor
the self-test must fail loudly, never silently test a correct build).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

BANNER = "!!! securekv.torture.buggy: DELIBERATELY BROKEN BUILD ({bug}) — test use only !!!"


def _serializable_as_linearizable() -> None:
    from securekv.server.etcdserver import EtcdServer

    original: Callable[[Any, bool], bool] | None = getattr(EtcdServer, "needs_read_index", None)
    if original is None:
        raise SystemExit("securekv.torture.buggy: EtcdServer.needs_read_index is gone; "
                         "update the injected bug to the server's new read path")

    def needs_read_index(self: Any, serializable: bool) -> bool:
        original(self, serializable)  # keep its side effects (a learner refuses the read)
        return False  # THE BUG: never ask the leader; answer from the local store

    EtcdServer.needs_read_index = needs_read_index  # type: ignore[method-assign]


BUGS: dict[str, Callable[[], None]] = {"serializable-as-linearizable": _serializable_as_linearizable}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in BUGS:
        raise SystemExit(f"usage: python -m securekv.torture.buggy {{{','.join(BUGS)}}} serve [flags...]")
    bug, rest = argv[0], argv[1:]
    BUGS[bug]()
    print(BANNER.format(bug=bug), file=sys.stderr, flush=True)
    from securekv.cli.main import main as securekv_main

    securekv_main(args=rest, prog_name="securekv")


if __name__ == "__main__":
    main(sys.argv[1:])
