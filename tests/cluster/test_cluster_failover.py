"""kill -9 of the leader during a bounded stream of acknowledged writes: a new leader is elected,
no acknowledged write is lost, and the old leader restarts and catches up — from the log, and
(with a small --snapshot-count and more than etcd's 5,000 retained entries written while it is
down) from a snapshot after the log was compacted."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from cluster_harness import Cluster, etcdctl, grpc_put_many, poll

WRITES = 120
KILL_AFTER = 20
BULK = 5300  # > etcd's 5,000 entries kept behind a snapshot + --snapshot-count


def _kv(node, prefix: str, serializable: bool = False) -> dict[str, str]:
    args = ["get", prefix, "--prefix", "-w", "json"]
    if serializable:
        args.append("--consistency=s")
    data = json.loads(node.ctl(*args, timeout=60).stdout)
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
            for kv in data.get("kvs", [])}


def _count(node, prefix: str) -> int:
    data = json.loads(node.ctl("get", prefix, "--prefix", "--limit", "1", "--consistency=s", "-w", "json").stdout)
    return int(data.get("count", 0))


@pytest.mark.parametrize("catch_up", ["log", "snapshot"])
def test_cluster_leader_kill9_during_writes(kind: str, make_cluster, catch_up: str) -> None:
    c: Cluster = make_cluster(kind, snapshot_count=100 if catch_up == "snapshot" else 100000)
    endpoints = c.endpoints()
    old = c.leader()
    old_id = old.member_id()
    acked: list[int] = []
    enough = threading.Event()
    stop = threading.Event()

    def writer() -> None:
        for i in range(WRITES):
            if stop.is_set():
                return
            res = etcdctl(endpoints, c.pki, "put", f"w/{i:04d}", f"v{i}", check=False, command_timeout="5s")
            if res.returncode == 0 and res.stdout.strip() == "OK":
                acked.append(i)
            if len(acked) >= KILL_AFTER:
                enough.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert enough.wait(120), f"only {len(acked)} writes acknowledged before the kill"
        old.kill()  # SIGKILL, mid-stream
        killed_at = len(acked)
        survivors = [n for n in c.nodes.values() if n is not old]
        new = c.leader(survivors)
        assert new.member_id() != old_id
        thread.join(300)
        assert not thread.is_alive(), "the write stream did not finish"
    finally:
        stop.set()
        thread.join(30)
    assert len(acked) > killed_at, "no write was acknowledged after the leader died"

    if catch_up == "snapshot":
        keys = [b"bulk/%05d" % i for i in range(BULK)]
        assert grpc_put_many(new, c.pki, keys, b"x" * 16) == BULK

    old.restart()
    old.wait_healthy(90)
    c.wait_converged(timeout=120)

    expected = {f"w/{i:04d}": f"v{i}" for i in acked}
    for node in c.nodes.values():
        got = _kv(node, "w/", serializable=True)
        missing = {k for k in expected if got.get(k) != expected[k]}
        assert not missing, f"{node.name} lost acknowledged writes: {sorted(missing)[:10]}"
        assert set(got) <= {f"w/{i:04d}" for i in range(WRITES)}
    assert _kv(new, "w/") == _kv(old, "w/", serializable=True)
    if catch_up == "snapshot":
        assert _count(old, "bulk/") == BULK
    # The restarted member is a follower of the new leader, and the cluster commits again.
    assert int(old.status().get("leader", 0)) != 0
    assert old.ctl("put", "after-restart", "ok").stdout.strip() == "OK"
    assert poll(lambda: all(n.get("after-restart").stdout.strip() == "ok" for n in c.nodes.values()), 30,
                "after-restart on every member")
