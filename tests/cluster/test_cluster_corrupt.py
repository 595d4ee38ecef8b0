"""Corruption checks (etcd's --experimental-initial-corrupt-check and
--experimental-corrupt-check-time): a member whose backend diverged is caught by comparing
hashkv with its peers at the same revision."""

from __future__ import annotations

import sqlite3

from cluster_harness import Cluster, poll


def _corrupt(node) -> None:
    """Change one stored value behind the member's back (what a lying disk would do)."""
    db = sqlite3.connect(node.data_dir / "member" / "db.sqlite")
    try:
        main, sub, value = db.execute("SELECT main, sub, value FROM revision ORDER BY main DESC LIMIT 1").fetchone()
        db.execute("UPDATE revision SET value = ? WHERE main = ? AND sub = ?",
                   (value.replace(b"clean", b"dirty"), main, sub))
        db.commit()
    finally:
        db.close()


def test_corrupt_member_refuses_to_serve_and_leader_raises_alarm(make_cluster) -> None:
    flags = ["--experimental-initial-corrupt-check", "--experimental-corrupt-check-time", "1s"]
    c: Cluster = make_cluster("securekv", start=False)
    c.start(extra=flags)
    m1 = c.nodes["m1"]
    assert m1.ctl("put", "k", "clean-value").stdout.strip() == "OK"
    rev = c.wait_converged()
    for n in c.nodes.values():
        assert "initial corruption checking passed; no corruption" in n.output()
    victim = next(n for n in c.nodes.values() if n is not c.leader())
    victim.stop()
    _corrupt(victim)

    # Initial check: the member compares before serving clients and stops with etcd's error.
    victim.restart()
    victim.proc.wait(timeout=60)
    out = victim.output()
    assert victim.proc.returncode == 2, out[-3000:]
    assert "found different hash values from remote peer" in out
    assert "found data inconsistency with peers" in out
    assert c.hashkvs(c.running())  # the others kept serving

    # Periodic check: started without the initial check, the leader finds it and raises CORRUPT.
    victim.restart(extra=["--experimental-corrupt-check-time", "1s"])
    poll(lambda: "alarm:CORRUPT" in m1.ctl("alarm", "list").stdout, 60, "the CORRUPT alarm")
    r = m1.ctl("put", "k2", "v", check=False)
    assert r.returncode != 0 and "etcdserver: corrupt cluster" in r.stderr, r.stderr
    leader = c.leader()
    assert "found data inconsistency with peers" in leader.output()
    assert rev > 0
