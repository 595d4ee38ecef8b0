"""A small seeded random-fault run over the test network (the full simulator is securekv.sim).

Random ticks, proposals, reads, partitions, crash-restarts, compactions, transfers and conf
changes, with message loss, duplication and reordering; after every step: at most one leader per
term and no two nodes applying different entries at one index; every so often: committed prefixes
agree; after healing: one leader and a new write applied on every voter within bounded ticks.
"""

from __future__ import annotations

import random

import pytest

from raft_testnet import Network
from securekv.raft import (
    ConfChange,
    ConfChangeType,
    EntryType,
    Message,
    ProposalDropped,
    Role,
)

KINDS = [ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE_NODE]


def check_committed_prefixes(net: Network, ids: list[int]) -> None:
    for a in ids:
        for b in ids:
            if a >= b:
                continue
            la, lb = net.raft(a).log, net.raft(b).log
            lo = max(la.first_index(), lb.first_index())
            hi = min(la.committed, lb.committed)
            if lo <= hi:
                assert la.slice(lo, hi + 1) == lb.slice(lo, hi + 1), (a, b, lo, hi)


def run(seed: int, steps: int) -> tuple[int, int]:
    rng = random.Random(seed)
    n = 3 if seed % 2 else 5
    ids = list(range(1, n + 1))
    net = Network(ids, seed=seed, pre_vote=rng.random() < 0.7, check_quorum=rng.random() < 0.7,
                  max_inflight_msgs=rng.choice([1, 4, 256]),
                  max_size_per_msg=rng.choice([0, 100, 1 << 20]))
    queue: list[Message] = []
    leader_of_term: dict[int, int] = {}
    applied_at: dict[int, tuple[int, bytes]] = {}
    counter = 0
    for step in range(steps):
        r = rng.random()
        nid = rng.choice(ids)
        node = net.nodes[nid]
        try:
            if r < 0.3:
                node.tick()
            elif r < 0.4:
                counter += 1
                node.propose(b"v%d" % counter)
            elif r < 0.42:
                node.read_index(b"r%d" % step)
            elif r < 0.43:
                net.heal()
                group = rng.sample(ids, rng.randint(1, n - 1))
                net.partition(group, [i for i in ids if i not in group])
            elif r < 0.45:
                net.heal()
            elif r < 0.46:
                net.restart(nid)
            elif r < 0.465 and net.role(nid) is Role.LEADER:
                node.transfer_leader(rng.choice(ids))
            elif r < 0.47 and net.role(nid) is Role.LEADER:
                node.propose_conf_change(ConfChange(rng.choice(KINDS), rng.choice(ids)))
            elif r < 0.48 and node.raft.log.applied > net.storage[nid].first_index():
                net.compact(nid)
        except ProposalDropped:
            pass
        for i in ids:
            if net.nodes[i].has_ready():
                queue.extend(net.handle_ready(i))
        rng.shuffle(queue)
        k = rng.randint(0, len(queue))
        deliver, queue = queue[:k], queue[k:]
        for m in deliver:
            if rng.random() < 0.05:
                continue  # lost
            if rng.random() < 0.05:
                queue.append(m)  # duplicated
            net.deliver([m])
        for i in ids:
            rf = net.raft(i)
            if rf.state is Role.LEADER:
                assert leader_of_term.setdefault(rf.term, i) == i, f"two leaders in term {rf.term}"
            for e in net.applied[i]:
                if e.term == 0 and e.type is EntryType.NORMAL:
                    continue  # rebuilt from a snapshot
                assert applied_at.setdefault(e.index, (e.term, e.data)) == (e.term, e.data), (
                    f"seed {seed} step {step}: node {i} applied a different entry at {e.index}")
        if step % 100 == 0:
            check_committed_prefixes(net, ids)
    check_committed_prefixes(net, ids)

    # Liveness once faults heal.
    net.heal()
    net.deliver(queue)
    net.drain()
    lead = 0
    for _ in range(400):
        net.tick()
        ls = [x for x in net.leaders() if x in net.raft(x).trk.voters]
        if len(ls) == 1 and all(net.leader_of(v) == ls[0] for v in net.raft(ls[0]).trk.voters):
            lead = ls[0]
            break
    assert lead, f"seed {seed}: no stable leader after healing"
    for _ in range(50):
        try:
            net.nodes[lead].propose(b"final")
            break
        except ProposalDropped:  # e.g. a leadership transfer still running
            net.tick()
    net.drain()
    voters = net.raft(lead).trk.voters
    for _ in range(100):
        if all(net.applied_data(v)[-1:] == [b"final"] for v in voters):
            break
        net.tick()
    assert all(net.applied_data(v)[-1:] == [b"final"] for v in voters), f"seed {seed}"
    return len(leader_of_term), len(applied_at)


@pytest.mark.parametrize("seed", range(20))
def test_random_faults_keep_safety_and_liveness(seed: int) -> None:
    elections, applied = run(seed, 2000)
    assert elections >= 1 and applied > 10
