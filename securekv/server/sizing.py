"""The cluster-size guard: quorum arithmetic for an even or oversized voter count (pure).

Why: etcd's operations guide recommends an odd number of voters, at most 7. An even count
adds a machine (and a vote every write waits for) without tolerating one more failure; more
than 7 voters make every commit wait for more members and raise the chance of a slow one.
Operators add members one at a time, so the guard speaks at bootstrap (`serve` warns) and at
`member add`/`member promote` (`securekv ctl` refuses without --force).
"""

from __future__ import annotations

MAX_VOTERS = 7


def quorum(voters: int) -> int:
    return voters // 2 + 1


def tolerates(voters: int) -> int:
    return voters - quorum(voters)


def advice(voters: int, *, growing: bool = False) -> str | None:
    """None for a sound voter count; otherwise the arithmetic, in one paragraph.

    ``growing``: the count after adding one voter to a running cluster. Going from one voter
    to two is the way back to three after ``--force-new-cluster`` (etcd's strict
    reconfiguration check special-cases it too), so it passes.
    """
    if voters <= 1 or (growing and voters == 2):
        return None
    head = (f"{voters} voting members need {quorum(voters)} for a quorum and tolerate "
            f"{tolerates(voters)} failure{'s' if tolerates(voters) != 1 else ''}")
    if voters > MAX_VOTERS:
        return (f"{head}; more than {MAX_VOTERS} voters make every write wait for more members and add "
                f"no needed fault tolerance (etcd recommends 3, 5 or 7; add learners for read capacity)")
    if voters % 2 == 0:
        fewer = voters - 1
        return (f"{head}, the same as {fewer} voters (which need {quorum(fewer)}): an even member count "
                f"adds a vote every write waits for without tolerating one more failure (use an odd count: "
                f"{fewer} or {voters + 1})")
    return None


__all__ = ["MAX_VOTERS", "advice", "quorum", "tolerates"]
