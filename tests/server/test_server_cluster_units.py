"""Cluster pieces in isolation: membership from conf changes, bootstrap validation, the Raft
storage rebuilt from a real WAL, and --force-new-cluster's rewrite of the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from securekv.config import resolve
from securekv.errors import UsageError
from securekv.raft import ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState
from securekv.server.cluster import Member, Membership, initial_members, publish_entry, validate_bootstrap
from securekv.server.run import _State
from securekv.storage import WAL, Metadata, SnapshotMarker
from securekv.storage.raftstorage import RaftStorage


def test_membership_follows_conf_changes_and_survives_encoding() -> None:
    m = Membership()
    a = Member(1, "a", ["https://127.0.0.1:1"])
    m.apply_conf_change(ConfChange(ConfChangeType.ADD_NODE, 1, a.context()))
    m.apply_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 2, Member(2, "", ["https://127.0.0.1:2"], (), True).context()))
    assert m.voters() == [1] and m.learners() == [2]
    m.apply_publish(publish_entry(2, name="b", clientURLs=["https://127.0.0.1:12"]))
    assert m.members[2].name == "b" and m.members[2].client_urls == ("https://127.0.0.1:12",)
    m.apply_conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, 2))
    assert m.voters() == [1, 2] and m.members[2].name == "b"
    # An update is a no-op conf change for Raft whose context carries the new URLs.
    m.apply_conf_change(ConfChange(ConfChangeType.ADD_NODE, 1, Member(1, "a", ["https://127.0.0.1:9"]).context()))
    assert m.members[1].peer_urls == ("https://127.0.0.1:9",)
    m.apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 2))
    back = Membership.decode(m.encode())
    assert back.voters() == [1] and back.removed == {2}
    # A removed ID never comes back.
    back.apply_conf_change(ConfChange(ConfChangeType.ADD_NODE, 2, b""))
    assert 2 not in back.members


def test_bootstrap_validation_names_the_problem() -> None:
    members = initial_members([("a", "https://127.0.0.1:1"), ("b", "https://127.0.0.1:2")], "tok")
    assert validate_bootstrap("a", ["https://127.0.0.1:1"], members).name == "a"
    with pytest.raises(UsageError, match="member 'c' is not in --initial-cluster"):
        validate_bootstrap("c", [], members)
    with pytest.raises(UsageError, match="--initial-advertise-peer-urls is https://127.0.0.1:5"):
        validate_bootstrap("a", ["https://127.0.0.1:5"], members)
    dup = initial_members([("a", "https://127.0.0.1:1"), ("b", "https://127.0.0.1:1")], "tok")
    with pytest.raises(UsageError, match="peer URL https://127.0.0.1:1 for both a and b"):
        validate_bootstrap("a", ["https://127.0.0.1:1"], dup)


def test_raft_storage_is_rebuilt_from_the_wal(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path / "wal", Metadata(7, 9))
    wal.save_snapshot(SnapshotMarker(index=0, term=0, voters=[7, 8]))
    boot = [Entry(0, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, 7).encode()),
            Entry(0, 2, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, 8).encode())]
    wal.append(boot + [Entry(2, 3, EntryType.NORMAL, b"x"), Entry(2, 4, EntryType.NORMAL, b"y")],
               hard_state=HardState(2, 7, 3))
    wal.sync()
    wal.close()
    wal, result = WAL.open(tmp_path / "wal")
    st = RaftStorage.from_wal(result, ConfState())
    hs, cs = st.initial_state()
    assert (hs.term, hs.vote, hs.commit) == (2, 7, 3)
    assert cs.voters == (7, 8)
    assert st.first_index() == 1 and st.last_index() == 4 and st.term(4) == 2
    assert [e.data for e in st.entries(3, 5)] == [b"x", b"y"]
    assert st.entries(1, 2)[0].type == EntryType.CONF_CHANGE
    # After a snapshot marker the log starts behind it, with the marker's configuration.
    wal.save_snapshot(SnapshotMarker(index=3, term=2, voters=[7, 8], learners=[5]))
    wal.close()
    wal, result = WAL.open(tmp_path / "wal")
    st = RaftStorage.from_wal(result, ConfState())
    assert st.first_index() == 4 and st.term(3) == 2 and st.initial_state()[1].learners == (5,)
    wal.close()


def _config(tmp_path: Path, name: str, token: str = "tok", **extra: object):
    cluster = "a=https://127.0.0.1:1,b=https://127.0.0.1:2,c=https://127.0.0.1:3"
    url = dict(a="https://127.0.0.1:1", b="https://127.0.0.1:2", c="https://127.0.0.1:3")[name]
    values = {"name": name, "data_dir": str(tmp_path / name), "initial_cluster": cluster,
              "initial_advertise_peer_urls": url, "initial_cluster_token": token, **extra}
    return resolve(values, {})


def test_founders_write_the_same_bootstrap_and_another_clusters_dir_is_refused(tmp_path: Path) -> None:
    from securekv.server.run import cluster_ids

    firsts = []
    for name in ("a", "b"):
        config = _config(tmp_path, name)
        st = _State(config, *cluster_ids(config), lambda: 0.0)
        firsts.append(st.raft_storage.entries(1, 4))
        assert st.raft_storage.initial_state()[1].voters == tuple(sorted(m.id for m in initial_members(
            config.initial_cluster, "tok")))
        st.close()
    assert firsts[0] == firsts[1]  # identical founders' prefix, names and URLs in the context
    other = _config(tmp_path, "a", token="other-token")
    with pytest.raises(UsageError, match="belongs to member .* of cluster"):
        _State(other, *cluster_ids(other), lambda: 0.0)


def test_force_new_cluster_keeps_data_and_leaves_one_voter(tmp_path: Path) -> None:
    from securekv.server.run import cluster_ids

    config = _config(tmp_path, "a")
    st = _State(config, *cluster_ids(config), lambda: 0.0)
    me = st.member_id
    st.close()
    forced = _config(tmp_path, "a", force_new_cluster=True)
    st = _State(forced, *cluster_ids(forced), lambda: 0.0)
    entries = st.raft_storage.entries(1, st.raft_storage.last_index() + 1)
    removals = [ConfChange.decode(e.data) for e in entries[3:]]
    assert [cc.type for cc in removals] == [ConfChangeType.REMOVE_NODE] * 2
    assert me not in [cc.node_id for cc in removals]
    assert st.raft_storage.initial_state()[0].commit == st.raft_storage.last_index()
    st.close()
    # Durable: a normal restart sees the same log.
    st = _State(config, *cluster_ids(config), lambda: 0.0)
    assert st.raft_storage.last_index() == 5
    st.close()


def test_removed_member_cannot_restart(tmp_path: Path) -> None:
    from securekv.server.run import cluster_ids
    from securekv.storage import WriteBatch

    config = _config(tmp_path, "a")
    st = _State(config, *cluster_ids(config), lambda: 0.0)
    m = Membership([Member(st.member_id, "a")])
    m.apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, st.member_id))
    st.backend.commit(WriteBatch(meta={"members": m.encode()}, consistent_index=3))
    st.close()
    with pytest.raises(UsageError, match="was removed from the cluster"):
        _State(config, *cluster_ids(config), lambda: 0.0)
