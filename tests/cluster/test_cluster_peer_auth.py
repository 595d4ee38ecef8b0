"""Issue 12, peers: a securekv cluster whose members each hold their own peer certificate (CN +
URI SAN = member name, no --peer-cert-allowed-cn), probed on the peer port as an attacker would,
with Python's ssl and with `openssl s_client`: no certificate, a client-only certificate, a
foreign CA's certificate and another member's certificate claiming a member are all refused,
on a member started with --peer-client-cert-auth and on one started without it; the real
members (and a member added later with its own certificate) still join."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from cluster_harness import Cluster, ClusterPKI, poll
from securekv.peer import codec

OPENSSL = "/usr/bin/openssl"


@pytest.fixture(scope="module")
def member_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert

    base = tmp_path_factory.mktemp("member-pki")
    ca, foreign = base / "ca", base / "foreign"
    hosts = ["127.0.0.1", "localhost"]
    init_ca(ca, cn="member CA")
    issue_cert(ca, "server", "server", hosts=hosts)
    issue_cert(ca, "client", "root")
    for name in ("m1", "m2", "m3", "m4", "ghost"):  # ghost: a peer certificate naming no member
        issue_cert(ca, "peer", name, hosts=hosts)
    init_ca(foreign, cn="foreign CA")
    issue_cert(foreign, "peer", "m3", hosts=hosts)
    return base


@pytest.fixture(scope="module")
def cluster(member_pki: Path, tmp_path_factory: pytest.TempPathFactory):
    ca = member_pki / "ca"
    pki = ClusterPKI(ca=ca / "ca.pem", server_cert=ca / "server.pem", server_key=ca / "server-key.pem",
                     peer_cert=ca / "m1.pem", peer_key=ca / "m1-key.pem",
                     client_cert=ca / "root.pem", client_key=ca / "root-key.pem",
                     intruder_cert=Path(), intruder_key=Path(), foreign_ca=member_pki / "foreign" / "ca.pem",
                     foreign_cert=member_pki / "foreign" / "m3.pem", foreign_key=member_pki / "foreign" / "m3-key.pem")
    c = Cluster("securekv", pki, tmp_path_factory.mktemp("peer-auth"))
    names = ["m1", "m2", "m3"]
    try:
        for name in names:
            node = c.new_node(name)
            use_own_cert(node, ca, name)
        # etcd's default is --peer-client-cert-auth=false: m2 runs without the flag.
        c.nodes["m2"].peer_client_cert_auth_flag = False
        ic = c.initial_cluster(names)
        for name in names:
            c.nodes[name].start(ic, "new")
        for name in names:
            c.nodes[name].wait_healthy()
        poll(lambda: sorted(m.get("name", "") for m in c.members()) == names, 30, "all three members listed")
        yield c
    finally:
        c.close()


def use_own_cert(node, ca: Path, cert_name: str) -> None:
    node.peer_cert, node.peer_key, node.peer_ca = ca / f"{cert_name}.pem", ca / f"{cert_name}-key.pem", ca / "ca.pem"
    node.allowed_cn = None


def ids(c: Cluster) -> tuple[int, dict[str, int]]:
    status = json.loads(c.nodes["m1"].ctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]
    return int(status["header"]["cluster_id"]), {m["name"]: int(m["ID"]) for m in c.members()}


def hello(cluster_id: int, sender: int, receiver: int) -> bytes:
    return codec.frame(codec.FrameKind.HELLO, codec.encode_hello(cluster_id, sender, receiver))


def python_probe(port: int, ca: Path, cert: Path | None, data: bytes) -> tuple[str, bytes]:
    """("ok", payload) for HELLO_OK, ("refused", reason) for REFUSE, ("closed", error) otherwise."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(cert.with_name(cert.stem + "-key.pem")))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.settimeout(10)
                tls.sendall(data)
                buf = b""
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) >= codec.FRAME_HEAD.size:
                        size, kind = codec.FRAME_HEAD.unpack_from(buf)
                        if len(buf) >= codec.FRAME_HEAD.size + size:
                            body = buf[codec.FRAME_HEAD.size:codec.FRAME_HEAD.size + size]
                            return ("ok" if kind == codec.FrameKind.HELLO_OK else "refused", body)
                return "closed", buf
    except (ssl.SSLError, OSError) as exc:
        return "closed", str(exc).encode()


def openssl_probe(port: int, ca: Path, cert: Path | None, data: bytes) -> subprocess.CompletedProcess:
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), "-alpn", "securekv-peer/1",
            "-quiet"]
    if cert is not None:
        argv += ["-cert", str(cert), "-key", str(cert.with_name(cert.stem + "-key.pem"))]
    return subprocess.run(argv, input=data, capture_output=True, timeout=30)


def test_members_with_their_own_certificates_join_and_replicate(cluster: Cluster) -> None:
    m1, m2, m3 = (cluster.nodes[n] for n in ("m1", "m2", "m3"))
    assert m1.ctl("put", "peer-auth", "ok").stdout.strip() == "OK"
    assert m2.get("peer-auth").stdout.strip() == "ok" and m3.get("peer-auth").stdout.strip() == "ok"
    assert "--peer-client-cert-auth" not in m2.proc.args and "--peer-cert-allowed-cn" not in m2.proc.args


@pytest.mark.parametrize("target", ["m1", "m2"])  # m1 with --peer-client-cert-auth, m2 without
def test_peer_port_probes_are_refused(cluster: Cluster, member_pki: Path, target: str) -> None:
    ca = member_pki / "ca"
    cluster_id, member = ids(cluster)
    node = cluster.nodes[target]
    other = "m2" if target == "m1" else "m1"
    port = node.peer_port
    claims_other = hello(cluster_id, member[other], member[target])
    cases = [
        ("no certificate", None, claims_other, "closed", None),
        ("client-only certificate", ca / "root.pem", claims_other, "refused", "is not a peer certificate"),
        ("foreign CA", member_pki / "foreign" / "m3.pem", hello(cluster_id, member["m3"], member[target]), "closed",
         None),
        (f"m3's certificate claiming {other}", ca / "m3.pem", claims_other, "refused",
         "the certificate is for member 'm3', not for the member the connection claims to be"),
        (f"m3's certificate claiming {target} itself", ca / "m3.pem", hello(cluster_id, member[target], member[target]),
         "refused", "not a member of this cluster"),
        (f"{other}'s certificate claiming m3", ca / f"{other}.pem", hello(cluster_id, member["m3"], member[target]),
         "refused", f"the certificate is for member '{other}'"),
        (f"a certificate naming no member claiming {other}", ca / "ghost.pem", claims_other, "refused",
         "the certificate is for member 'ghost', not for the member the connection claims to be"),
        ("HTTP with a member's own certificate", ca / "m3.pem",
         b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", "closed", None),
    ]
    for label, cert, data, want, text in cases:
        outcome, body = python_probe(port, ca / "ca.pem", cert, data)
        assert outcome == want, (label, outcome, body)
        assert b"HTTP/1.1" not in body and b"etcd_" not in body, (label, body)  # the peer port serves no HTTP
        if text:
            assert text in body.decode(), (label, body)
            for mid in (cluster_id, *member.values()):  # refusals never name an ID
                assert f"{mid:x}" not in body.decode() and str(mid) not in body.decode(), (label, body)
        proc = openssl_probe(port, ca / "ca.pem", cert, data)
        assert codec.MAGIC not in proc.stdout, (label, proc.stdout)  # never a HELLO_OK
        if text:
            assert text.encode() in proc.stdout, (label, proc.stdout, proc.stderr)
    # Control: the same probes do reach the handshake: a member's own certificate is answered.
    outcome, body = python_probe(port, ca / "ca.pem", ca / "m3.pem", hello(cluster_id, member["m3"], member[target]))
    assert outcome == "ok" and codec.decode_hello_ok(body)[1:] == (cluster_id, member[target])
    proc = openssl_probe(port, ca / "ca.pem", ca / "m3.pem", hello(cluster_id, member["m3"], member[target]))
    assert codec.MAGIC in proc.stdout, proc.stderr
    log = node.output()
    assert "is not a peer certificate" in log and "the certificate is for member 'm3'" in log
    # ...and the cluster is untouched
    assert node.ctl("put", f"after-probes-{target}", "ok").stdout.strip() == "OK"


def test_live_link_is_not_displaced(cluster: Cluster, member_pki: Path) -> None:
    """Connections claiming m3 (with m3's own key: a stolen key or a stale process) while m3's
    real link to m1 is up: the one free slot is taken, the next is refused, the real link
    keeps carrying m3's traffic."""
    ca = member_pki / "ca"
    cluster_id, member = ids(cluster)
    m1, m3 = cluster.nodes["m1"], cluster.nodes["m3"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca / "ca.pem"))
    ctx.load_cert_chain(str(ca / "m3.pem"), str(ca / "m3-key.pem"))
    held = []
    try:
        answers = []
        for _ in range(2):
            raw = socket.create_connection(("127.0.0.1", m1.peer_port), timeout=10)
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            held.append(tls)
            tls.sendall(hello(cluster_id, member["m3"], member["m1"]))
            answers.append(tls.recv(65536))
        kinds = [codec.FRAME_HEAD.unpack_from(a)[1] for a in answers]
        assert kinds == [codec.FrameKind.HELLO_OK, codec.FrameKind.REFUSE], answers
        assert b"already has as many live connections here as allowed" in answers[1]
        # m3's own link still works both ways: a write through m3 (forwarded to the leader) and
        # read back on m1 and m3.
        assert m3.ctl("put", "not-displaced", "yes").stdout.strip() == "OK"
        assert m1.get("not-displaced").stdout.strip() == "yes"
        assert m3.ctl("get", "not-displaced", "--consistency", "l", "--print-value-only").stdout.strip() == "yes"
    finally:
        for tls in held:
            tls.close()


def test_added_member_with_its_own_certificate_joins(cluster: Cluster, member_pki: Path) -> None:
    """member add, then a start with `--initial-cluster-state existing`: the cluster ID is learned
    over an authenticated peer connection and the certificate names the new member."""
    ca = member_pki / "ca"
    node, ic = cluster.add_member("m4")
    use_own_cert(node, ca, "m4")
    node.start(ic, "existing")
    node.wait_healthy()
    poll(lambda: sorted(m.get("name", "") for m in cluster.members()) == ["m1", "m2", "m3", "m4"], 30,
         "m4 listed with its name")
    assert node.get("peer-auth").stdout.strip() == "ok"
    mid = cluster.member_id("m4")
    node.kill()
    cluster.nodes["m1"].ctl("member", "remove", f"{mid:x}")
    node.proxy.close()
    del cluster.nodes["m4"]


def test_member_started_with_another_members_certificate_cannot_join(cluster: Cluster, member_pki: Path) -> None:
    """securekv itself refuses to start with a peer certificate naming another member (the
    listeners would refuse it anyway: the probes above speak the protocol directly)."""
    ca = member_pki / "ca"
    node, ic = cluster.add_member("m5")
    use_own_cert(node, ca, "m3")  # m3's (valid, unrevoked) certificate: it names m3, not m5
    node.start(ic, "existing")
    node.proc.wait(timeout=60)
    assert node.proc.returncode == 1
    assert "names member 'm3', but this member is --name 'm5': the other members would refuse it" in node.output()
    names = [m.get("name", "") for m in cluster.members()]
    assert "m5" not in names and names.count("m3") == 1
    mid = next(int(m["ID"]) for m in cluster.members() if m["peerURLs"] == [node.peer_url])
    cluster.nodes["m1"].ctl("member", "remove", f"{mid:x}")
    node.proxy.close()
    del cluster.nodes["m5"]
    for n in ("m1", "m2", "m3"):
        cluster.nodes[n].wait_healthy(30)
