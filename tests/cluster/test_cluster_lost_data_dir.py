"""A member whose data dir is lost rejoins the way etcd's runbook says: `member remove` its old
identity, `member add` it again, start it with `--initial-cluster-state existing` on an empty
data dir. It catches up (from the log or a snapshot) and serves the same data; against the real
etcd the same steps prove the scenario itself."""

from __future__ import annotations

import shutil

from cluster_harness import Cluster, poll


def _keys(node, prefix: str) -> list[str]:
    return node.ctl("get", prefix, "--prefix", "--keys-only", "--consistency=s").stdout.split()


def test_member_with_lost_data_dir_rejoins_by_remove_and_add(kind: str, make_cluster) -> None:
    c: Cluster = make_cluster(kind, snapshot_count=20)
    m1 = c.nodes["m1"]
    for i in range(30):
        assert m1.ctl("put", f"lost/a/{i:02d}", f"a{i}").stdout.strip() == "OK"
    old = c.nodes["m3"]
    poll(lambda: len(_keys(old, "lost/a/")) == 30, 30, "m3 to apply the first writes")
    old_id = c.member_id("m3")
    old.kill()
    shutil.rmtree(old.data_dir)  # the disk is gone
    c.leader(among=[m1, c.nodes["m2"]])  # m3 may have been the leader: wait for the next one
    for i in range(15):  # the others take a snapshot meanwhile (--snapshot-count 20)
        assert m1.ctl("put", f"lost/b/{i:02d}", f"b{i}").stdout.strip() == "OK"

    m1.ctl("member", "remove", f"{old_id:x}")
    poll(lambda: sorted(m.get("name", "") for m in c.members(m1)) == ["m1", "m2"], 30,
         "the old m3 to leave the member list")
    old.proxy.close()
    del c.nodes["m3"]
    new, initial_cluster = c.add_member("m3", via=m1)
    new.start(initial_cluster, "existing")
    new.wait_healthy(60)

    new_id = new.member_id()
    assert new_id != old_id
    members = c.members(m1)
    assert sorted(m.get("name", "") for m in members) == ["m1", "m2", "m3"]
    assert old_id not in {int(m["ID"]) for m in members}
    c.wait_converged(timeout=60)
    assert len(_keys(new, "lost/a/")) == 30 and len(_keys(new, "lost/b/")) == 15
    assert new.get("lost/b/14").stdout.strip() == "b14"
    assert new.ctl("put", "lost/after", "rejoined").stdout.strip() == "OK"
    assert m1.get("lost/after").stdout.strip() == "rejoined"
