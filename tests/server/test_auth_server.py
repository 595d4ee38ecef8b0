"""RBAC on a real `securekv serve`: every RPC of every service refused to identities without a
role over real gRPC; bypass attempts (watch, nested txn, lease revoke, the JSON gateway);
the audit log; failed-login limits; passwords never on disk; auth surviving restart, JWT
tokens with generated keys, the embedded default, and etcd snapshots restored with auth on."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest

from server_harness import REPO, Certs, Member, clean_stderr, etcdctl, free_port
from securekv.proto import health_pb2, rpc_pb2, v3election_pb2, v3lock_pb2

PASSWORDS = {"root": "root-Pw-1", "alice": "alice-Pw-2", "roleless": "roleless-Pw-3", "watcher": "watcher-Pw-4"}
DENIALS = {
    "etcdserver: permission denied", "etcdserver: user name is empty", "etcdserver: user name not found",
    "auth: permission denied", "auth: user name is empty", "auth: user not found",
}


@attrs.frozen
class PKI:
    certs: Certs
    dir: Path

    def pair(self, cn: str) -> tuple[Path, Path]:
        return self.dir / f"{cn}.pem", self.dir / f"{cn}-key.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert

    d = tmp_path_factory.mktemp("rbac-pki")
    init_ca(d, cn="rbac test CA")
    issue_cert(d, "server", "server", hosts=["127.0.0.1", "localhost"])
    for cn in ("root", "alice", "roleless", "mallory", "watcher"):
        issue_cert(d, "client", cn)
    certs = Certs(dir=d, ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server-key.pem",
                  client_cert=d / "root.pem", client_key=d / "root-key.pem", other_cert=d / "alice.pem",
                  other_key=d / "alice-key.pem", crl=d / "none.pem", foreign_cert=d / "mallory.pem",
                  foreign_key=d / "mallory-key.pem")
    return PKI(certs, d)


def ctl(m: Member, pki: PKI, *args: str, cn: str = "root", check: bool = True, stdin: str | None = None
        ) -> subprocess.CompletedProcess:
    cert, key = pki.pair(cn)
    return etcdctl(m.endpoint, pki.certs, *args, check=check, cert=cert, key=key, stdin=stdin)


def setup_auth(m: Member, pki: PKI) -> None:
    for line in (
        f"user add root:{PASSWORDS['root']}", "role add app", "role grant-permission app readwrite /app/ --prefix",
        f"user add alice:{PASSWORDS['alice']}", "user grant-role alice app", f"user add roleless:{PASSWORDS['roleless']}",
        "role add w", "role grant-permission w readwrite /w/ --prefix", f"user add watcher:{PASSWORDS['watcher']}",
        "user grant-role watcher w", "put /app/a 1", "put /secret s", "auth enable",
    ):
        ctl(m, pki, *line.split())


@pytest.fixture(scope="module")
def member(pki: PKI, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Member:
    base = tmp_path_factory.mktemp("rbac-member")
    m = Member("securekv", base / "data", pki.certs, ["--bcrypt-cost", "4", "--audit-log", str(base / "audit.log")])
    request.addfinalizer(m.kill)
    m.start()
    setup_auth(m, pki)
    return m


# -- raw gRPC -----------------------------------------------------------------------------------
def channel(m: Member, pki: PKI, cn: str) -> grpc.Channel:
    cert, key = pki.pair(cn)
    creds = grpc.ssl_channel_credentials(pki.certs.ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{m.port}", creds)


def token(m: Member, pki: PKI, user: str, password: str | None = None, cn: str = "mallory") -> str:
    with channel(m, pki, cn) as ch:
        call = ch.unary_unary("/etcdserverpb.Auth/Authenticate",
                              request_serializer=rpc_pb2.AuthenticateRequest.SerializeToString,
                              response_deserializer=rpc_pb2.AuthenticateResponse.FromString)
        return call(rpc_pb2.AuthenticateRequest(name=user, password=password or PASSWORDS[user]), timeout=10).token


def all_methods() -> list[tuple[str, Any]]:
    out = []
    for module in (rpc_pb2, v3lock_pb2, v3election_pb2, health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.append((f"/{service.full_name}/{method.name}", method))
    return out


def probe(method: Any) -> Any:
    req = method.input_type._concrete_class()
    name = method.full_name
    if name.endswith("UserGet") or name.endswith("Authenticate"):
        req.name = "root"
        if name.endswith("Authenticate"):
            req.password = "not the password"
    elif name.endswith("RoleGet"):
        req.role = "root"
    elif name.endswith("Watch.Watch"):
        req.create_request.key = b"/app/a"
    elif name.endswith(("Range", "Put", "DeleteRange")):
        req.key = b"/app/a"
    elif name.endswith("Alarm"):
        req.action = rpc_pb2.AlarmRequest.DEACTIVATE
        req.alarm = rpc_pb2.NOSPACE
    elif name.endswith("LeaseKeepAlive") or name.endswith("LeaseRevoke") or name.endswith("LeaseTimeToLive"):
        req.ID = 1
    elif name.startswith(("v3lockpb.", "v3electionpb.")) and "name" in req.DESCRIPTOR.fields_by_name:
        req.name = b"/app/lock"
    elif name.endswith("Unlock"):
        req.key = b"/app/lock/1"
    return req


def call(ch: grpc.Channel, full: str, method: Any, req: Any, metadata: tuple = ()) -> Any:
    """Call any RPC; returns the (first) response, or the grpc error."""
    ser, de = req.SerializeToString, method.output_type._concrete_class.FromString
    try:
        if method.client_streaming:
            stream = ch.stream_stream(full, request_serializer=ser, response_deserializer=de)
            return next(iter(stream(iter([req]), timeout=10, metadata=metadata)))
        if method.server_streaming:
            stream = ch.unary_stream(full, request_serializer=ser, response_deserializer=de)
            return next(iter(stream(req, timeout=10, metadata=metadata)))
        return ch.unary_unary(full, request_serializer=ser, response_deserializer=de)(req, timeout=10,
                                                                                     metadata=metadata)
    except grpc.RpcError as exc:
        return exc


@pytest.mark.parametrize("who", ["certificate without user", "user without role (cert)",
                                 "user without role (token)"])
def test_every_rpc_is_denied_to_an_identity_without_a_role(member: Member, pki: PKI, who: str) -> None:
    cn = {"certificate without user": "mallory", "user without role (cert)": "roleless",
          "user without role (token)": "mallory"}[who]
    metadata = (("token", token(member, pki, "roleless")),) if "token" in who else ()
    checked = 0
    with channel(member, pki, cn) as ch:
        for full, method in all_methods():
            got = call(ch, full, method, probe(method), metadata)
            if full.endswith("/Watch") and full.startswith("/etcdserverpb"):
                assert isinstance(got, rpc_pb2.WatchResponse), (full, got)
                assert got.created and got.canceled and got.watch_id == -1
                assert got.cancel_reason == "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
            elif full.endswith("/Authenticate"):
                assert isinstance(got, grpc.RpcError)
                assert got.details() == "etcdserver: authentication failed, invalid user ID or password"
            else:
                assert isinstance(got, grpc.RpcError), (full, got)
                assert got.details() in DENIALS, (full, got.code(), got.details())
            checked += 1
    assert checked == len(all_methods()) >= 48
    # Nothing those calls tried changed anything.
    assert ctl(member, pki, "get", "/app/a", "--print-value-only").stdout == "1\n"


def test_a_bad_token_is_refused_everywhere(member: Member, pki: PKI) -> None:
    with channel(member, pki, "root") as ch:  # a token wins over the (root!) certificate
        for full, method in all_methods():
            if full.endswith(("/Authenticate", "/Watch.Watch")) or "Watch" in full:
                continue
            got = call(ch, full, method, probe(method), (("token", "forged.7"),))
            assert isinstance(got, grpc.RpcError), full
            assert got.details() in ("etcdserver: invalid auth token", "auth: invalid auth token"), (full, got)


# -- bypass attempts ------------------------------------------------------------------------------
def test_watch_is_cancelled_when_its_permission_is_revoked(member: Member, pki: PKI) -> None:
    """etcd checks a watch once, when it is created; securekv re-checks every watcher after
    each auth change, before it sends another event."""
    import queue
    import threading

    tok = token(member, pki, "watcher")
    responses: queue.Queue = queue.Queue()
    requests: queue.Queue = queue.Queue()
    requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"/w/", range_end=b"/w0")))

    def gen():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    with channel(member, pki, "mallory") as ch:
        stream = ch.stream_stream("/etcdserverpb.Watch/Watch", request_serializer=rpc_pb2.WatchRequest.SerializeToString,
                                  response_deserializer=rpc_pb2.WatchResponse.FromString)
        call_ = stream(gen(), metadata=(("token", tok),), timeout=30)

        def reader() -> None:
            try:
                for r in call_:
                    responses.put(r)
            except grpc.RpcError:
                pass

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            created = responses.get(timeout=10)
            assert created.created and not created.canceled
            ctl(member, pki, "put", "/w/1", "one")
            event = responses.get(timeout=10)
            assert [e.kv.key for e in event.events] == [b"/w/1"]
            ctl(member, pki, "role", "revoke-permission", "w", "/w/", "--prefix")
            ctl(member, pki, "put", "/w/2", "two")  # applied after the revocation: never delivered
            cancelled = responses.get(timeout=10)
            assert cancelled.canceled and not cancelled.events, cancelled
            assert cancelled.cancel_reason == "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
            # a new watch from the same stream is refused too
            requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"/w/2")))
            refused = responses.get(timeout=10)
            assert refused.created and refused.canceled and refused.watch_id == -1
            assert responses.empty()
        finally:
            requests.put(None)
            call_.cancel()
            t.join(timeout=10)
        ctl(member, pki, "role", "grant-permission", "w", "readwrite", "/w/", "--prefix")


def test_from_key_watch_needs_the_whole_range(member: Member, pki: PKI) -> None:
    """etcd 3.4 checks only the first key of a watch from a key on; alice may read /app/ only."""
    desc = rpc_pb2.DESCRIPTOR.services_by_name["Watch"].methods_by_name["Watch"]
    with channel(member, pki, "alice") as ch:
        for end in (b"\0", b"/app1"):
            req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"/app/", range_end=end))
            got = call(ch, "/etcdserverpb.Watch/Watch", desc, req)
            assert got.created and got.canceled and "permission denied" in got.cancel_reason
        ok = call(ch, "/etcdserverpb.Watch/Watch", desc, rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"/app/", range_end=b"/app0")))
        assert ok.created and not ok.canceled


def test_nested_txn_cannot_reach_other_keys(member: Member, pki: PKI) -> None:
    inner = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/secret", value=b"x"))])
    outer = rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=b"/app/a", target=rpc_pb2.Compare.VERSION,
                                                        result=rpc_pb2.Compare.GREATER, version=0)],
                               success=[rpc_pb2.RequestOp(request_txn=inner)])
    desc = rpc_pb2.DESCRIPTOR.services_by_name["KV"].methods_by_name["Txn"]
    with channel(member, pki, "alice") as ch:
        got = call(ch, "/etcdserverpb.KV/Txn", desc, outer)
        assert isinstance(got, grpc.RpcError) and got.details() == "etcdserver: permission denied"
        nested_read = rpc_pb2.TxnRequest(failure=[rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(
            success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"/secret"))]))])
        got = call(ch, "/etcdserverpb.KV/Txn", desc, nested_read)
        assert isinstance(got, grpc.RpcError) and got.details() == "etcdserver: permission denied"
    assert ctl(member, pki, "get", "/secret", "--print-value-only").stdout == "s\n"


def test_lease_revoke_needs_write_on_every_attached_key(member: Member, pki: PKI) -> None:
    lease = ctl(member, pki, "lease", "grant", "300").stdout.split()[1]
    ctl(member, pki, "put", "/secret-leased", "v", f"--lease={lease}")
    out = ctl(member, pki, "--user", f"alice:{PASSWORDS['alice']}", "lease", "revoke", lease, cn="mallory", check=False)
    assert out.returncode == 1 and "permission denied" in out.stderr
    empty = ctl(member, pki, "lease", "grant", "300").stdout.split()[1]
    out = ctl(member, pki, "lease", "revoke", empty, cn="roleless", check=False)  # etcd lets anyone do this
    assert out.returncode == 1 and "permission denied" in out.stderr
    assert ctl(member, pki, "get", "/secret-leased", "--print-value-only").stdout == "v\n"
    ctl(member, pki, "lease", "revoke", lease)


def test_an_open_keepalive_stream_is_checked_per_message(member: Member, pki: PKI) -> None:
    """The stream was allowed when it opened; the renewal after the role went, on the same
    stream, is refused and ends the stream with the gate's error."""
    import queue
    import threading

    ctl(member, pki, "role", "add", "ka2")
    ctl(member, pki, "role", "grant-permission", "ka2", "read", "ka2")
    ctl(member, pki, "user", "add", "ka2:ka2-pw-6")
    ctl(member, pki, "user", "grant-role", "ka2", "ka2")
    lease = int(ctl(member, pki, "lease", "grant", "300").stdout.split()[1], 16)
    tok = token(member, pki, "ka2", "ka2-pw-6")
    requests: queue.Queue = queue.Queue()
    responses: queue.Queue = queue.Queue()

    def gen():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    with channel(member, pki, "mallory") as ch:
        stream = ch.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive",
                                  request_serializer=rpc_pb2.LeaseKeepAliveRequest.SerializeToString,
                                  response_deserializer=rpc_pb2.LeaseKeepAliveResponse.FromString)
        call_ = stream(gen(), metadata=(("token", tok),), timeout=30)

        def reader() -> None:
            try:
                for r in call_:
                    responses.put(r)
            except grpc.RpcError as exc:
                responses.put(exc)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            requests.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
            first = responses.get(timeout=10)
            assert isinstance(first, rpc_pb2.LeaseKeepAliveResponse) and first.TTL == 300
            ctl(member, pki, "user", "revoke-role", "ka2", "ka2")
            requests.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
            refused = responses.get(timeout=10)
            assert isinstance(refused, grpc.RpcError), refused
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refused.details() == "etcdserver: permission denied"
        finally:
            requests.put(None)
            call_.cancel()
            t.join(timeout=10)
    ctl(member, pki, "lease", "revoke", hex(lease)[2:])


def test_keepalive_stops_when_the_role_goes(member: Member, pki: PKI) -> None:
    ctl(member, pki, "role", "add", "ka")
    ctl(member, pki, "role", "grant-permission", "ka", "read", "ka")
    ctl(member, pki, "user", "add", "ka:ka-pw-5")
    ctl(member, pki, "user", "grant-role", "ka", "ka")
    lease = int(ctl(member, pki, "lease", "grant", "300").stdout.split()[1], 16)
    desc = rpc_pb2.DESCRIPTOR.services_by_name["Lease"].methods_by_name["LeaseKeepAlive"]
    tok = token(member, pki, "ka", "ka-pw-5")
    with channel(member, pki, "mallory") as ch:
        got = call(ch, "/etcdserverpb.Lease/LeaseKeepAlive", desc, rpc_pb2.LeaseKeepAliveRequest(ID=lease),
                   (("token", tok),))
        assert isinstance(got, rpc_pb2.LeaseKeepAliveResponse) and got.TTL == 300
        ctl(member, pki, "user", "revoke-role", "ka", "ka")
        got = call(ch, "/etcdserverpb.Lease/LeaseKeepAlive", desc, rpc_pb2.LeaseKeepAliveRequest(ID=lease),
                   (("token", tok),))
        assert isinstance(got, grpc.RpcError) and got.details() == "etcdserver: permission denied"


def gateway(m: Member, pki: PKI, path: str, body: dict, cn: str, token_: str = "", first: bool = False
            ) -> tuple[int, Any]:
    """POST a JSON request; the parsed answer (``first``: only the first line of a stream)."""
    ctx = ssl.create_default_context(cafile=str(pki.certs.ca))
    cert, key = pki.pair(cn)
    ctx.load_cert_chain(str(cert), str(key))
    conn = http.client.HTTPSConnection("127.0.0.1", m.port, context=ctx, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if token_:
            headers["Authorization"] = token_
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        data = resp.readline() if first else resp.read()
    finally:
        conn.close()
    lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
    return resp.status, (lines[0] if len(lines) == 1 else lines)


def test_gateway_passes_the_same_gate(member: Member, pki: PKI) -> None:
    key = "L2FwcC9h"  # /app/a
    status, body = gateway(member, pki, "/v3/kv/range", {"key": key}, "mallory")
    assert (status, body["error"]) == (403, "etcdserver: permission denied")
    status, body = gateway(member, pki, "/v3/kv/range", {"key": key}, "alice")
    assert status == 200 and body["kvs"][0]["value"] == "MQ=="
    tok = token(member, pki, "alice")
    status, body = gateway(member, pki, "/v3/kv/range", {"key": key}, "mallory", tok)
    assert status == 200
    status, body = gateway(member, pki, "/v3/kv/put", {"key": "L3NlY3JldA==", "value": "eA=="}, "mallory", tok)
    assert (status, body["error"]) == (403, "etcdserver: permission denied")
    status, body = gateway(member, pki, "/v3/kv/range", {"key": key}, "root", "forged.1")
    assert (status, body["error"]) == (401, "etcdserver: invalid auth token")
    status, body = gateway(member, pki, "/v3/auth/user/list", {}, "alice")
    assert (status, body["error"]) == (403, "etcdserver: permission denied")
    status, body = gateway(member, pki, "/v3/auth/user/list", {}, "root")
    assert status == 200 and "alice" in body["users"]
    status, body = gateway(member, pki, "/v3/auth/user/get", {"name": "alice"}, "alice")
    assert status == 200 and body["roles"] == ["app"]
    status, body = gateway(member, pki, "/v3/maintenance/snapshot", {}, "alice")
    assert status == 500 and body["error"]["message"] == "auth: permission denied"
    status, body = gateway(member, pki, "/v3/election/observe", {"name": "L3NlY3JldA=="}, "alice")
    assert body["error"]["message"] == "etcdserver: permission denied"
    status, lines = gateway(member, pki, "/v3/watch", {"create_request": {"key": "L3NlY3JldA=="}}, "alice",
                            first=True)
    assert lines["result"]["canceled"] and "permission denied" in lines["result"]["cancel_reason"]
    status, body = gateway(member, pki, "/v3/auth/authenticate", {"name": "alice", "password": "wrong"}, "mallory")
    assert (status, body["error"]) == (400, "etcdserver: authentication failed, invalid user ID or password")


def test_failed_logins_are_rate_limited(member: Member, pki: PKI) -> None:
    ctl(member, pki, "user", "add", "guessme:right-pw-6")
    errors = []
    for _ in range(6):
        with pytest.raises(grpc.RpcError) as info:
            token(member, pki, "guessme", "wrong")
        errors.append(info.value.details())
    assert errors[:5] == ["etcdserver: authentication failed, invalid user ID or password"] * 5
    assert errors[5] == "etcdserver: too many requests"
    with pytest.raises(grpc.RpcError) as info:  # the right password must wait too
        token(member, pki, "guessme", "right-pw-6")
    assert info.value.details() == "etcdserver: too many requests"
    assert token(member, pki, "alice")  # other users are not locked out


def test_audit_log_records_decisions_without_secrets(member: Member, pki: PKI) -> None:
    ctl(member, pki, "get", "/secret", cn="mallory", check=False)
    ctl(member, pki, "--user", f"alice:{PASSWORDS['alice']}", "put", "/app/audited", "value-xyzzy", cn="mallory")
    path = member.data_dir.parent / "audit.log"
    deadline = time.monotonic() + 10
    lines: list[dict] = []
    while time.monotonic() < deadline:  # flushed once a second
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(x) for x in text.splitlines()]
        if any(x["keys"] == "/app/audited" for x in lines):
            break
        time.sleep(0.2)
    denied = [x for x in lines if x["identity"] == "mallory" and x["rpc"] == "/etcdserverpb.KV/Range"]
    assert denied and denied[-1]["decision"] == "deny" and denied[-1]["reason"] == "etcdserver: permission denied"
    assert denied[-1]["how"] == "certificate" and denied[-1]["keys"] == "/secret" and denied[-1]["remote"]
    put = [x for x in lines if x["keys"] == "/app/audited"][-1]
    assert (put["identity"], put["how"], put["decision"], put["rpc"]) == ("alice", "token", "allow",
                                                                          "/etcdserverpb.KV/Put")
    assert put["time"].endswith("+00:00")
    logins = [x for x in lines if x["rpc"] == "/etcdserverpb.Auth/Authenticate" and x["how"] == "password"]
    assert logins and all(x["decision"] in ("allow", "deny") for x in logins)
    text = path.read_text()
    assert "value-xyzzy" not in text
    for pw in (*PASSWORDS.values(), "right-pw-6", "ka-pw-5"):
        assert pw not in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_audit_log_rotation_keeps_every_line(tmp_path: Path) -> None:
    from securekv.server.audit import AuditLog

    log = AuditLog(tmp_path / "a.log", max_bytes=400, backups=2)
    for i in range(60):
        log.record({"time": 0.0, "n": i})
        if i % 10 == 9:
            log.flush()  # the server's once-a-second flush, which also rotates
    log.flush()
    os.rename(tmp_path / "a.log", tmp_path / "moved.log")  # logrotate moves the file away
    log.flush()
    log.record({"time": 0.0, "n": 60})
    log.close()
    kept = []
    for name in ("a.log.2", "a.log.1", "moved.log", "a.log"):
        p = tmp_path / name
        if p.exists():
            kept += [json.loads(x)["n"] for x in p.read_text().splitlines()]
            assert oct(p.stat().st_mode & 0o777) == "0o600"
    assert kept == sorted(kept) and kept[-1] == 60 and len(set(kept)) == len(kept)
    assert not (tmp_path / "a.log.3").exists()


# -- passwords never reach the disk, auth survives restart ------------------------------------
def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_no_password_bytes_in_wal_backend_or_snapshot(pki: PKI, tmp_path: Path) -> None:
    secret1, secret2 = "Pw-7f3a-initial-91c2", "Pw-55d1-changed-0e4b"
    m = Member("securekv", tmp_path / "data", pki.certs, ["--bcrypt-cost", "4", "--snapshot-count", "5"])
    try:
        m.start()
        ctl(m, pki, "user", "add", f"root:{secret1}")
        ctl(m, pki, "user", "grant-role", "root", "root")
        ctl(m, pki, "user", "add", "bob", "--interactive=false", stdin=f"{secret1}\n")
        ctl(m, pki, "auth", "enable")
        ctl(m, pki, "user", "passwd", "bob", "--interactive=false", stdin=f"{secret2}\n")
        ctl(m, pki, "--user", f"bob:{secret2}", "user", "get", "bob", cn="mallory")
        for i in range(8):  # past --snapshot-count: a WAL snapshot and a backend sync happen
            ctl(m, pki, "put", f"k{i}", "v")
        ctl(m, pki, "snapshot", "save", str(tmp_path / "snap.db"))
        m.stop()
        m.start()  # auth state came back from the backend
        assert ctl(m, pki, "get", "k1", cn="mallory", check=False).returncode == 1
        assert ctl(m, pki, "--user", f"bob:{secret2}", "user", "get", "bob", cn="mallory").stdout == "User: bob\nRoles:\n"
        ctl(m, pki, "put", "after", "restart")
    finally:
        m.kill()
    scanned = _files(tmp_path)
    assert any(p.name == "db.sqlite" for p in scanned) and any(p.suffix == ".wal" for p in scanned)
    for p in scanned:
        data = p.read_bytes()
        for secret in (secret1, secret2):
            assert secret.encode() not in data, f"{secret} found in {p}"


# -- tokens -------------------------------------------------------------------------------------
def test_jwt_tokens_with_a_generated_key(pki: PKI, tmp_path: Path) -> None:
    m = Member("securekv", tmp_path / "data", pki.certs, ["--bcrypt-cost", "4", "--auth-token", "jwt"])
    try:
        m.start()
        key = tmp_path / "data" / "auth" / "jwt-ed25519.key"
        assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
        setup_auth(m, pki)
        tok = token(m, pki, "alice")
        assert tok.count(".") == 2
        import jwt

        claims = jwt.decode(tok, options={"verify_signature": False})
        assert claims["username"] == "alice" and isinstance(claims["revision"], int) and "exp" in claims
        put = rpc_pb2.DESCRIPTOR.services_by_name["KV"].methods_by_name["Put"]
        with channel(m, pki, "mallory") as ch:
            ok = call(ch, "/etcdserverpb.KV/Put", put, rpc_pb2.PutRequest(key=b"/app/j", value=b"1"), (("token", tok),))
            assert isinstance(ok, rpc_pb2.PutResponse)
            ctl(m, pki, "role", "add", "bump")  # any auth change: the token's revision is old
            old = call(ch, "/etcdserverpb.KV/Put", put, rpc_pb2.PutRequest(key=b"/app/j", value=b"2"),
                       (("token", tok),))
            assert isinstance(old, grpc.RpcError) and old.details() == "etcdserver: revision of auth store is old"
        # etcdctl logs in again by itself
        assert ctl(m, pki, "--user", f"alice:{PASSWORDS['alice']}", "put", "/app/j", "3", cn="mallory").stdout == "OK\n"
        m.stop()
        m.start()  # the same key is reused
        assert token(m, pki, "alice").count(".") == 2
    finally:
        m.kill()


def test_bad_auth_options_fail_start_clearly(pki: PKI, tmp_path: Path) -> None:
    for flags, words in (
        (["--auth-token", "jwt,priv-key"], "invalid auth options"),
        (["--auth-token", "fancy"], "unknown token type"),
        (["--auth-token", "jwt,sign-method=RS256"], "only generates"),
        (["--auth-token", f"jwt,priv-key={tmp_path}/missing.pem,sign-method=ES256"], "no such file"),
    ):
        m = Member("securekv", tmp_path / "bad", pki.certs, flags)
        proc = subprocess.run(m.argv(), capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode != 0 and words in proc.stderr and "Traceback" not in proc.stderr, (flags, proc.stderr)


# -- the embedded default -----------------------------------------------------------------------
def test_embedded_default_starts_with_auth_on(tmp_path: Path) -> None:
    from securekv.pki.issue import issue_cert

    port, peer = free_port(), free_port()
    data = tmp_path / "default.securekv"
    argv = [sys.executable, "-m", "securekv", "serve", "--data-dir", str(data), "--listen-client-urls",
            f"https://127.0.0.1:{port}", "--listen-peer-urls", f"https://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer}", "--bcrypt-cost", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start() -> subprocess.Popen:
        log = open(tmp_path / "serve.log", "ab")
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (data / "pki" / "root.pem").exists() and run("root", "endpoint", "health").returncode == 0:
                return proc
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        raise AssertionError((tmp_path / "serve.log").read_text())

    def run(cn: str, *args: str) -> subprocess.CompletedProcess:
        d = data / "pki"
        return subprocess.run(["/usr/bin/etcdctl", "--endpoints", f"https://127.0.0.1:{port}", "--cacert",
                               str(d / "ca.pem"), "--cert", str(d / f"{cn}.pem"), "--key", str(d / f"{cn}-key.pem"),
                               "--dial-timeout", "3s", "--command-timeout", "10s", *args],
                              capture_output=True, text=True, timeout=30, env={"ETCDCTL_API": "3"})

    proc = start()
    try:
        assert run("root", "put", "k", "v").stdout == "OK\n"
        assert run("root", "user", "get", "root").stdout == "User: root\nRoles: root\n"
        issue_cert(data / "pki", "client", "alice")  # a later certificate from the same CA
        denied = run("alice", "get", "k")
        assert denied.returncode == 1 and clean_stderr(denied.stderr) == "Error: etcdserver: permission denied"
        assert run("alice", "--user", "root:guess", "get", "k").returncode == 2  # root has no password
        assert run("root", "auth", "disable").returncode == 0
        proc.kill()
        proc.wait(timeout=15)
        proc = start()  # an operator's `auth disable` survives a restart
        assert run("alice", "get", "k").stdout == "k\nv\n"
    finally:
        proc.kill()
        proc.wait(timeout=15)


def test_etcd_flags_keep_auth_off(member: Member, pki: PKI, tmp_path: Path) -> None:
    m = Member("securekv", tmp_path / "data", pki.certs, [])
    try:
        m.start()
        assert ctl(m, pki, "put", "k", "v", cn="mallory").stdout == "OK\n"
        out = ctl(m, pki, "--user", "x:y", "get", "k", cn="mallory")  # auth off: clients go on without a token
        assert out.stdout == "k\nv\n"
    finally:
        m.kill()


# -- snapshots keep auth ----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["etcd", "securekv"])
def test_restored_snapshot_keeps_auth_on(pki: PKI, tmp_path: Path, source: str) -> None:
    src = Member(source, tmp_path / "src", pki.certs, ["--bcrypt-cost", "4"])
    try:
        src.start()
        setup_auth(src, pki)
        ctl(src, pki, "snapshot", "save", str(tmp_path / "snap.db"))
    finally:
        src.kill()
    restored = tmp_path / "restored"
    m = Member("securekv", restored, pki.certs, [])
    peer = f"https://127.0.0.1:{m.peer_port}"
    out = subprocess.run([sys.executable, "-m", "securekv", "ctl", "snapshot", "restore", str(tmp_path / "snap.db"),
                          "--data-dir", str(restored), "--name", "m1", "--initial-cluster", f"m1={peer}",
                          "--initial-advertise-peer-urls", peer],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    try:
        m.start()
        denied = ctl(m, pki, "get", "/app/a", cn="mallory", check=False)
        assert denied.returncode == 1 and "permission denied" in denied.stderr
        assert ctl(m, pki, "--user", f"alice:{PASSWORDS['alice']}", "get", "/app/a", "--print-value-only",
                   cn="mallory").stdout == "1\n"
        assert ctl(m, pki, "--user", f"alice:{PASSWORDS['alice']}", "get", "/secret", cn="mallory",
                   check=False).returncode == 1
        assert ctl(m, pki, "role", "get", "app").stdout == \
            "Role app\nKV Read:\n\t[/app/, /app0) (prefix /app/)\nKV Write:\n\t[/app/, /app0) (prefix /app/)\n"
    finally:
        m.kill()
