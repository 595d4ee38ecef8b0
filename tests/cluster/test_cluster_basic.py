"""A 3-member mutual-TLS cluster from etcd's flags, seen through the real etcdctl: member list,
endpoint status/health --cluster, replication with linearizable reads, move-leader, learners,
peer-certificate refusal and a minority partition. One cluster per server kind is shared by the
scenarios of this module; each one leaves it with the same three healthy members."""

from __future__ import annotations

import json
import socket
import ssl


from cluster_harness import PEER_CN, Cluster, poll


def test_cluster_member_list_status_health(shared: Cluster) -> None:
    m1 = shared.nodes["m1"]
    members = shared.members(m1)
    assert sorted(m.get("name", "") for m in members) == ["m1", "m2", "m3"]
    for m in members:
        node = shared.nodes[m["name"]]
        assert m["peerURLs"] == [node.peer_url]
        assert m["clientURLs"] == [node.endpoint]
        assert not m.get("isLearner", False)
    table = m1.ctl("member", "list").stdout
    assert all(f", started, {name}, " in table for name in ("m1", "m2", "m3")), table

    status = json.loads(m1.ctl("endpoint", "status", "--cluster", "-w", "json").stdout)
    assert sorted(s["Endpoint"] for s in status) == sorted(n.endpoint for n in shared.nodes.values())
    leaders = {s["Status"]["leader"] for s in status}
    ids = {s["Status"]["header"]["member_id"] for s in status}
    assert len(leaders) == 1 and leaders <= ids and len(ids) == 3
    assert len({s["Status"]["header"]["cluster_id"] for s in status}) == 1
    assert all(s["Status"]["raftTerm"] >= 1 and s["Status"]["raftIndex"] >= 1 for s in status)

    health = m1.ctl("endpoint", "health", "--cluster")
    lines = [line for line in (health.stdout + health.stderr).splitlines() if "healthy" in line]
    assert len(lines) == 3 and all("is healthy: successfully committed proposal" in line for line in lines), lines


def test_cluster_write_one_member_read_linearizably_on_another(shared: Cluster) -> None:
    m1, m2, m3 = (shared.nodes[n] for n in ("m1", "m2", "m3"))
    for i in range(5):
        assert m1.ctl("put", "replicated", f"v{i}").stdout.strip() == "OK"
        # A linearizable read on another member sees the acknowledged write at once.
        assert m2.get("replicated").stdout.strip() == f"v{i}"
        assert m3.get("replicated").stdout.strip() == f"v{i}"
    rev = json.loads(m1.ctl("get", "replicated", "-w", "json").stdout)["header"]["revision"]
    assert json.loads(m3.ctl("get", "replicated", "-w", "json").stdout)["header"]["revision"] == rev


def test_cluster_move_leader(shared: Cluster) -> None:
    leader = shared.leader()
    target = next(n for n in shared.running() if n is not leader)
    target_id = target.member_id()
    out = leader.ctl("move-leader", f"{target_id:x}").stdout
    assert f"Leadership transferred from {leader.member_id():x} to {target_id:x}" in out
    assert shared.leader() is target
    # Asking a follower to move leadership is refused.
    bad = leader.ctl("move-leader", f"{target_id:x}", check=False)
    assert bad.returncode != 0
    assert target.ctl("put", "after-move", "x").stdout.strip() == "OK"


def _tls_refused(port: int, ca, cert, key) -> bool:
    """True when the peer port refuses this client certificate (during or right after the handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.settimeout(10)
                # TLS 1.3: the server checks the client certificate after our Finished; its verdict
                # (an alert or a close) arrives with the first read.
                tls.sendall(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = tls.recv(4096)
                # etcd closes; securekv first says why in a REFUSE frame (u32 length, kind 3).
                return data == b"" or (len(data) > 4 and data[4] == 3 and b"certificate" in data)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return True


def test_cluster_peer_port_refuses_foreign_ca_and_wrong_cn(shared: Cluster) -> None:
    p = shared.pki
    m1 = shared.nodes["m1"]
    # Handshakes straight against a member's peer listener.
    assert _tls_refused(m1.peer_port, p.ca, p.foreign_cert, p.foreign_key), "foreign-CA peer cert accepted"
    assert _tls_refused(m1.peer_port, p.ca, p.intruder_cert, p.intruder_key), "CN 'intruder' accepted"
    assert _tls_refused(m1.peer_port, p.ca, p.client_cert, p.client_key), f"client cert CN root accepted (allowed CN {PEER_CN})"

    # A member process presenting such a certificate cannot join; the cluster stays healthy.
    for label, cert, key, ca in (("foreign", p.foreign_cert, p.foreign_key, p.foreign_ca),
                                 ("intruder", p.intruder_cert, p.intruder_key, p.ca)):
        name = f"rogue-{label}"
        rogue, ic = shared.add_member(name)
        rogue.peer_cert, rogue.peer_key, rogue.peer_ca = cert, key, ca
        before = sum(n.proxy.refused[name] + n.proxy.closed[name] for n in shared.nodes.values())
        rogue.start(ic, "existing")

        def refused_or_exited() -> bool:
            tries = sum(n.proxy.refused[name] + n.proxy.closed[name] for n in shared.nodes.values()) - before
            return (not rogue.running) or tries >= 3

        poll(refused_or_exited, 30, f"{name}'s peer connections to be refused")
        members = {m.get("name") or m["peerURLs"][0]: m for m in shared.members(m1)}
        assert name not in members, f"{name} joined: {members}"
        assert not rogue.healthy()
        health = m1.ctl("endpoint", "health", "--endpoints", shared.endpoints([shared.nodes[n] for n in ("m1", "m2", "m3")]))
        assert health.returncode == 0
        assert m1.ctl("put", f"after-{name}", "ok").stdout.strip() == "OK"
        rogue.kill()
        rid = next(int(m["ID"]) for m in shared.members(m1) if m["peerURLs"] == [rogue.peer_url])
        m1.ctl("member", "remove", f"{rid:x}")
        rogue.proxy.close()
        del shared.nodes[name]
    assert sorted(m.get("name", "") for m in shared.members(m1)) == ["m1", "m2", "m3"]
    for n in ("m1", "m2", "m3"):
        shared.nodes[n].wait_healthy(30)


def test_cluster_learner_add_catch_up_promote_remove(shared: Cluster) -> None:
    m1 = shared.nodes["m1"]
    for i in range(20):
        m1.ctl("put", f"before-learner/{i:02d}", str(i))
    learner, ic = shared.add_member("m4", learner=True)
    listed = {m.get("name") or "unstarted": m for m in shared.members(m1)}
    assert listed["unstarted"]["isLearner"] is True
    learner.start(ic, "existing")
    target = m1.status()["raftIndex"]

    def caught_up() -> bool:
        if not learner.running:
            raise RuntimeError(f"learner exited:\n{learner.output()[-3000:]}")
        st = learner.ctl("endpoint", "status", "-w", "json", check=False, command_timeout="3s")
        if st.returncode != 0:
            return False
        status = json.loads(st.stdout)[0]["Status"]
        return status["isLearner"] is True and status.get("raftAppliedIndex", status["raftIndex"]) >= target

    poll(caught_up, 60, "the learner to catch up")
    got = learner.ctl("get", "before-learner/", "--prefix", "--consistency=s", "--keys-only").stdout.split()
    assert len(got) == 20
    # A learner serves no linearizable reads and has no vote yet.
    assert learner.ctl("get", "before-learner/00", check=False, command_timeout="3s").returncode != 0
    lid = shared.member_id("m4")
    poll(lambda: m1.ctl("member", "promote", f"{lid:x}", check=False).returncode == 0, 60, "promote to succeed")
    members = {m.get("name", ""): m for m in shared.members(m1)}
    assert members["m4"].get("isLearner", False) is False
    learner.wait_healthy(30)
    assert learner.get("before-learner/19").stdout.strip() == "19"
    m1.ctl("member", "remove", f"{lid:x}")
    assert sorted(m.get("name", "") for m in shared.members(m1)) == ["m1", "m2", "m3"]
    learner.kill()
    learner.proxy.close()
    del shared.nodes["m4"]
    assert m1.ctl("put", "after-learner", "ok").stdout.strip() == "OK"


def test_cluster_minority_partition_then_heal(shared: Cluster) -> None:
    leader = shared.leader()
    minority = next(n for n in shared.running() if n is not leader)
    majority = [n for n in shared.running() if n is not minority]
    leader.ctl("put", "part/before", "1")
    poll(lambda: minority.get("part/before", serializable=True).stdout.strip() == "1", 30,
         "the minority member to apply part/before")

    shared.partition([minority.name])
    try:
        # The minority cannot commit, and cannot serve linearizable reads.
        put = minority.ctl("put", "part/minority", "x", check=False, command_timeout="3s")
        assert put.returncode != 0, put.stdout
        lin = minority.ctl("get", "part/before", check=False, command_timeout="3s")
        assert lin.returncode != 0, lin.stdout
        # Serializable reads are served locally.
        assert minority.get("part/before", serializable=True).stdout.strip() == "1"
        # The majority keeps working.
        for i in range(10):
            majority[i % 2].ctl("put", f"part/majority/{i}", str(i))
        assert majority[1].get("part/majority/9").stdout.strip() == "9"
        assert minority.get("part/majority/9", serializable=True).stdout.strip() == ""
        assert not minority.healthy()
    finally:
        shared.heal()
    minority.wait_healthy(60)
    shared.wait_converged(timeout=60)
    assert minority.get("part/majority/9").stdout.strip() == "9"
    assert minority.get("part/minority", serializable=True).stdout.strip() == ""
    for n in shared.running():
        assert n.healthy()


# Peer metrics under etcd's names and labels (the single-member diff against etcd is
# tests/server/test_metrics_etcd.py; these exist only in a cluster). The real etcd proves the list.
PEER_METRICS = {
    "etcd_network_peer_sent_bytes_total": {"To"},
    "etcd_network_peer_received_bytes_total": {"From"},
    "etcd_network_peer_round_trip_time_seconds_bucket": {"To", "le"},
    "etcd_network_active_peers": {"Local", "Remote"},
}


def _scrape(node) -> str:
    """GET /metrics over mutual TLS, with the HTTP framing decoded.

    etcd answers chunked: reading the raw bytes would let a chunk boundary split a
    metric line, so http.client removes the framing."""
    import http.client

    pki = node.cluster.pki
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("127.0.0.1", node.client_port, timeout=10, context=ctx)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200, response.status
        return response.read().decode()
    finally:
        conn.close()


def test_cluster_peer_metrics_have_etcds_names(shared: Cluster) -> None:
    import re

    def labels_of(text: str, name: str) -> set[str]:
        found = re.findall(rf"^{name}\{{([^}}]*)\}}", text, flags=re.M)
        return set(re.findall(r'(\w+)="', found[0])) if found else set()

    def scraped() -> str | None:
        # Ask for the leader on each try: an earlier test may have moved leadership.
        text = _scrape(shared.leader())
        ready = "etcd_network_peer_round_trip_time_seconds_bucket" in text
        return text if ready and re.search(r"^etcd_server_is_leader 1", text, flags=re.M) else None

    text = poll(scraped, 30, "round trip times on the leader", interval=1.0)
    for name, labels in PEER_METRICS.items():
        assert labels_of(text, name) == labels, (shared.kind, name, labels_of(text, name))
    assert re.search(r"^etcd_server_has_leader 1", text, flags=re.M)
    assert re.search(r"^etcd_server_is_leader 1", text, flags=re.M)
    assert re.search(r"^etcd_server_leader_changes_seen_total [1-9]", text, flags=re.M)


def _securekv_ctl(cluster: Cluster, *args: str):
    import os
    import subprocess
    import sys

    from cluster_harness import REPO

    p = cluster.pki
    argv = [sys.executable, "-m", "securekv", "ctl", "--endpoints", cluster.endpoints(), "--cacert", str(p.ca),
            "--cert", str(p.client_cert), "--key", str(p.client_key), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))


def _accepted(cluster: Cluster, *args: str):
    """securekv ctl, retried while etcd refuses reconfiguration of a young cluster."""
    def run():
        r = _securekv_ctl(cluster, *args)
        if r.returncode != 0 and "unhealthy cluster" in r.stderr:
            return None
        return r

    return poll(run, 30, f"ctl {' '.join(args)} to be accepted", interval=0.5)


def test_cluster_sizing_guard_on_member_add(shared: Cluster) -> None:
    """A fourth voter is refused with the quorum arithmetic unless --force; learners pass."""
    from cluster_harness import free_port

    url = f"https://127.0.0.1:{free_port()}"
    before = shared.members()
    r = _securekv_ctl(shared, "member", "add", "m4", f"--peer-urls={url}")
    assert r.returncode == 1, r.stdout
    assert "4 voting members need 3 for a quorum and tolerate 1 failure, the same as 3 voters" in r.stderr
    assert "--force" in r.stderr
    assert shared.members() == before  # nothing was proposed
    r = _accepted(shared, "member", "add", "m4", f"--peer-urls={url}", "--learner")
    assert r.returncode == 0, r.stderr
    learner = next(m for m in shared.members() if m.get("isLearner"))
    r = _securekv_ctl(shared, "member", "promote", f"{int(learner['ID']):x}")
    assert r.returncode == 1 and "4 voting members" in r.stderr, r.stderr
    assert shared.ctl("member", "remove", f"{int(learner['ID']):x}").returncode == 0
    # Another URL: etcd derives a new member's ID from its peer URLs and the time in whole
    # seconds, so re-adding the removed learner's URL within the same second makes the removed
    # ID again, which etcd refuses ("member not found", its answer for a removed ID).
    url = f"https://127.0.0.1:{free_port()}"
    r = _accepted(shared, "member", "add", "m4", f"--peer-urls={url}", "--force")
    assert r.returncode == 0 and "warning: 4 voting members" in r.stderr, r.stderr
    added = next(m for m in shared.members() if m["peerURLs"] == [url])
    poll(lambda: shared.ctl("member", "remove", f"{int(added['ID']):x}", check=False).returncode == 0, 30,
         "the unstarted fourth voter to be removed", interval=0.5)
    assert len(shared.members()) == 3


def test_sizing_arithmetic() -> None:
    from securekv.server.sizing import advice

    assert advice(1) is None and advice(3) is None and advice(5) is None and advice(7) is None
    assert advice(2, growing=True) is None  # back from --force-new-cluster
    assert "2 voting members need 2 for a quorum and tolerate 0 failures" in advice(2)
    assert "more than 7 voters" in advice(9) and "8 voting members need 5" in advice(8)
