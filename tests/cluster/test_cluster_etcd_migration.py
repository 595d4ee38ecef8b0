"""A stopped 3-member etcd 3.4 cluster restarted as securekv members on the same data dirs and
flags: each dir is converted on first start with its Raft state, so the three form the same
cluster again (same member and cluster IDs) with every key, and keep replicating."""

from __future__ import annotations

import json

from cluster_harness import Cluster, poll


def test_etcd_cluster_data_dirs_restart_as_securekv(make_cluster) -> None:
    c: Cluster = make_cluster("etcd")
    m1 = c.nodes["m1"]
    for i in range(30):
        assert m1.ctl("put", f"mig/{i:02d}", f"v{i}").stdout.strip() == "OK"
    lease = json.loads(m1.ctl("lease", "grant", "900", "-w", "json").stdout)["ID"]
    m1.ctl("put", "mig/leased", "x", "--lease", f"{lease:x}")
    c.wait_converged()
    before_ids = sorted(int(m["ID"]) for m in c.members())
    cluster_id = json.loads(m1.ctl("member", "list", "-w", "json").stdout)["header"]["cluster_id"]
    want = m1.ctl("get", "mig/", "--prefix", "-w", "json").stdout
    for n in c.nodes.values():
        n.stop()

    c.kind = "securekv"  # the same flags, data dirs and certificates
    for n in c.nodes.values():
        n.restart()
    for n in c.nodes.values():
        n.wait_healthy()
        assert "converted an etcd 3.4 data dir" in n.output()
    assert sorted(int(m["ID"]) for m in c.members()) == before_ids
    listed = json.loads(m1.ctl("member", "list", "-w", "json").stdout)
    assert listed["header"]["cluster_id"] == cluster_id
    got = json.loads(m1.ctl("get", "mig/", "--prefix", "-w", "json").stdout)
    assert [(kv["key"], kv["value"], kv["create_revision"], kv["mod_revision"], kv.get("lease", 0))
            for kv in got["kvs"]] == [(kv["key"], kv["value"], kv["create_revision"], kv["mod_revision"],
                                       kv.get("lease", 0)) for kv in json.loads(want)["kvs"]]
    assert c.nodes["m3"].ctl("put", "after", "migration").stdout.strip() == "OK"
    poll(lambda: c.nodes["m2"].get("after", serializable=True).stdout.strip() == "migration", 30,
         "the write to replicate")
    c.wait_converged()
