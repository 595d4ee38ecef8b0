"""The seeds' operational recipes on a 3-member cluster: node migration (stop a member, copy its
data dir, `member update` its peer URL, start it on the new address with the same name) and
disaster recovery (`--force-new-cluster` from one survivor's data dir, then `member add` back
to three members)."""

from __future__ import annotations

import shutil

from cluster_harness import Cluster, Node, poll


def _put_range(node: Node, prefix: str, n: int) -> None:
    for i in range(n):
        assert node.ctl("put", f"{prefix}{i:03d}", f"{prefix}{i}").stdout.strip() == "OK"


def _keys(node: Node, prefix: str, serializable: bool = True) -> list[str]:
    args = ["get", prefix, "--prefix", "--keys-only"]
    if serializable:
        args.append("--consistency=s")
    return node.ctl(*args).stdout.split()


def test_cluster_node_migration(kind: str, make_cluster) -> None:
    c: Cluster = make_cluster(kind)
    m1 = c.nodes["m1"]
    _put_range(m1, "mig/a/", 20)
    old = c.nodes["m3"]
    poll(lambda: len(_keys(old, "mig/a/")) == 20, 30, "m3 to apply the first writes")
    m3_id = c.member_id("m3")
    old.stop()
    _put_range(m1, "mig/b/", 10)  # written while m3 is away

    # "New hardware": a copy of the data dir, new client and peer ports, same name.
    new_dir = c.base / "m3-moved"
    shutil.copytree(old.data_dir, new_dir, symlinks=True)
    old.proxy.close()
    del c.nodes["m3"]
    moved = c.new_node("m3", new_dir)
    m1.ctl("member", "update", f"{m3_id:x}", f"--peer-urls={moved.peer_url}")
    moved.start(c.initial_cluster(), "existing")
    moved.wait_healthy(60)

    member = next(m for m in c.members(m1) if int(m["ID"]) == m3_id)
    assert member["name"] == "m3"
    assert member["peerURLs"] == [moved.peer_url]
    poll(lambda: next(m for m in c.members(m1) if int(m["ID"]) == m3_id).get("clientURLs") == [moved.endpoint],
         30, "m3 to publish its new client URL")
    assert moved.member_id() == m3_id
    c.wait_converged(timeout=60)
    assert len(_keys(moved, "mig/a/")) == 20 and len(_keys(moved, "mig/b/")) == 10
    assert moved.ctl("put", "mig/after", "ok").stdout.strip() == "OK"
    assert m1.get("mig/after").stdout.strip() == "ok"
    assert len([m for m in c.members(m1)]) == 3


def test_cluster_force_new_cluster_then_grow_back(kind: str, make_cluster) -> None:
    c: Cluster = make_cluster(kind)
    m1 = c.nodes["m1"]
    _put_range(m1, "dr/", 30)
    c.wait_converged(timeout=30)

    # Disaster: two of three members are gone for good; m1 alone has no quorum.
    for name in ("m2", "m3"):
        c.nodes[name].kill()
        c.nodes[name].proxy.close()
        del c.nodes[name]
    assert m1.ctl("put", "dr/no-quorum", "x", check=False, command_timeout="3s").returncode != 0

    m1.stop()
    m1.restart(extra=["--force-new-cluster"])
    m1.wait_healthy(60)
    assert [m.get("name") for m in c.members(m1)] == ["m1"]
    assert len(_keys(m1, "dr/", serializable=False)) == 30
    # Restart normally: the one-member configuration is durable.
    m1.stop()
    m1.restart(extra=[])
    m1.wait_healthy(60)
    assert m1.ctl("put", "dr/recovered", "yes").stdout.strip() == "OK"

    for name in ("m4", "m5"):
        node, ic = c.add_member(name, via=m1)
        node.start(ic, "existing")
        node.wait_healthy(60)
    names = sorted(m.get("name", "") for m in c.members(m1))
    assert names == ["m1", "m4", "m5"]
    c.wait_converged(timeout=60)
    for node in c.nodes.values():
        assert len(_keys(node, "dr/")) == 31
    assert c.nodes["m5"].ctl("put", "dr/grown", "3").stdout.strip() == "OK"
    assert c.nodes["m4"].get("dr/grown").stdout.strip() == "3"
