"""Real processes: securekv (and, where the scenario is shared, the real etcd) over mutual TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from server_harness import REPO, clean_stderr, free_port


def test_put_get_over_mutual_tls_and_restart(server) -> None:
    assert server.ctl("put", "foo", "bar").stdout.strip() == "OK"
    out = json.loads(server.ctl("get", "foo", "-w", "json").stdout)
    kv = out["kvs"][0]
    assert (kv["create_revision"], kv["mod_revision"], kv["version"]) == (2, 2, 1)
    assert out["header"]["revision"] == 2 and out["header"]["member_id"] and out["header"]["cluster_id"]
    assert server.ctl("get", "foo").stdout.splitlines() == ["foo", "bar"]
    server.stop()
    server.start()
    assert server.ctl("get", "foo", "--print-value-only").stdout.strip() == "bar"
    assert server.ctl("endpoint", "health").returncode == 0


def test_etcdctl_commands_match_etcd(server) -> None:
    """The same command sequence gives the same output on securekv and etcd."""
    ctl = server.ctl
    assert ctl("put", "a", "1").stdout == "OK\n"
    assert ctl("put", "a", "2", "--prev-kv").stdout == "OK\na\n1\n"
    assert ctl("put", "b", "3").stdout == "OK\n"
    assert ctl("get", "", "--prefix", "--keys-only").stdout == "a\n\nb\n\n"
    assert ctl("del", "b").stdout == "1\n"
    assert ctl("del", "nothing").stdout == "0\n"
    txn = 'value("a") = "2"\n\nput a 10\nget a\n\nput a 20\n\n'
    assert ctl("txn", stdin=txn).stdout == "SUCCESS\n\nOK\n\na\n10\n"
    assert ctl("txn", stdin='mod("a") < "1"\n\nput x 1\n\nput y 1\n\n').stdout == "FAILURE\n\nOK\n"
    assert ctl("compaction", "3").stdout == "compacted revision 3\n"
    bad = ctl("compaction", "2", check=False)
    assert bad.returncode != 0
    assert "etcdserver: mvcc: required revision has been compacted" in clean_stderr(bad.stderr)
    bad = ctl("get", "a", "--rev", "1000", check=False)
    assert clean_stderr(bad.stderr) == "Error: etcdserver: mvcc: required revision is a future revision"
    bad = ctl("put", "k", "v", "--lease", "1234", check=False)
    assert clean_stderr(bad.stderr) == "Error: etcdserver: requested lease not found"
    bad = ctl("put", "nokey", "--ignore-value", check=False)
    assert clean_stderr(bad.stderr) == "Error: etcdserver: key not found"
    many = "\n\n" + "".join(f"put k{i} v\n" for i in range(129)) + "\n"
    bad = ctl("txn", stdin=many, check=False)
    assert clean_stderr(bad.stderr) == "Error: etcdserver: too many operations in txn request"
    dup = "\n\nput d 1\nput d 2\n\n"
    bad = ctl("txn", stdin=dup, check=False)
    assert clean_stderr(bad.stderr) == "Error: etcdserver: duplicate key given in txn request"
    assert ctl("get", "a", "--print-value-only").stdout == "10\n"


def test_second_serve_on_same_data_dir_fails(member) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "securekv", "serve", "--data-dir", str(member.data_dir),
         "--listen-client-urls", f"https://127.0.0.1:{free_port()}", "--cert-file", str(member.certs.server_cert),
         "--key-file", str(member.certs.server_key), "--trusted-ca-file", str(member.certs.ca)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert second.returncode != 0
    assert "in use by process" in second.stderr and "Traceback" not in second.stderr
    assert member.ctl("put", "still", "fine").returncode == 0


def test_plaintext_listener_refused_without_opt_out(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "securekv", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen-client-urls", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode != 0
    assert "refusing plaintext listener" in proc.stderr and "--insecure-allow-plaintext" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()


def test_embedded_default_prints_working_commands(tmp_path: Path) -> None:
    """`serve` with no flags: local CA + certs under the data dir, client certs enforced."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SECUREKV_LISTEN_CLIENT_URLS": f"https://127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "securekv", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "serve exited before printing its connect hint"
            lines.append(line)
            if "securekv ctl" in line:
                break
        etcdctl_line = next(l for l in lines if "etcdctl" in l and "securekv ctl" not in l).strip()
        assert (tmp_path / "default.securekv" / "pki" / "ca.pem").exists()
        argv = etcdctl_line.split()
        assert argv[0] == "ETCDCTL_API=3"
        ok = subprocess.run(argv[1:], capture_output=True, text=True, timeout=20, env={"ETCDCTL_API": "3"})
        assert "is healthy" in ok.stdout + ok.stderr, ok.stderr
        key = str(tmp_path / "default.securekv" / "pki" / "root-key.pem")
        assert oct(os.stat(key).st_mode & 0o777) == "0o600"
        # Without a client certificate the handshake fails.
        nocert = subprocess.run(["/usr/bin/etcdctl", "--endpoints", f"https://127.0.0.1:{port}", "--cacert",
                                 str(tmp_path / "default.securekv" / "pki" / "ca.pem"), "--dial-timeout", "2s",
                                 "put", "a", "b"], capture_output=True, text=True, timeout=20,
                                env={"ETCDCTL_API": "3"})
        assert nocert.returncode != 0
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def _write_while(member, stop_server) -> list[int]:
    """Four gRPC writers put distinct keys until ``stop_server`` ends the member; acked ids."""
    import grpc

    from securekv.proto import rpc_pb2, rpc_pb2_grpc

    c = member.certs
    creds = grpc.ssl_channel_credentials(c.ca.read_bytes(), c.client_key.read_bytes(), c.client_cert.read_bytes())
    acked: list[int] = []
    stop = threading.Event()

    def writer(offset: int) -> None:
        with grpc.secure_channel(f"127.0.0.1:{member.port}", creds) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            i = offset
            while not stop.is_set():
                try:
                    kv.Put(rpc_pb2.PutRequest(key=b"k%08d" % i, value=b"v"), timeout=5)
                except grpc.RpcError:
                    return
                acked.append(i)
                i += 4

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop_server()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acked) >= 200
    return acked


def _stored(member) -> set[int]:
    import base64

    out = json.loads(member.ctl("get", "k", "--prefix", "--keys-only", "-w", "json").stdout)
    return {int(base64.b64decode(kv["key"])[1:]) for kv in out.get("kvs", [])}


def test_kill9_loses_no_acknowledged_write(member) -> None:
    acked = _write_while(member, member.kill)  # SIGKILL while the writers are still going
    member.start()
    missing = sorted(set(acked) - _stored(member))
    assert missing == [], f"{len(missing)} acknowledged writes lost"


def test_sigterm_under_load_exits_promptly_and_keeps_writes(member) -> None:
    import signal as signals

    def terminate() -> None:
        proc = member.proc
        proc.send_signal(signals.SIGTERM)
        assert proc.wait(timeout=20) == 0  # graceful, not killed by the fixture's fallback
        member.proc = None

    acked = _write_while(member, terminate)
    member.start()
    assert sorted(set(acked) - _stored(member)) == []


def test_snapshot_count_and_quota(make_member) -> None:
    """WAL snapshots every few entries keep restarts correct; the quota raises NOSPACE."""
    m = make_member(extra=["--snapshot-count", "5", "--quota-backend-bytes", "40000"])
    for i in range(12):
        m.ctl("put", f"s{i}", str(i))
    m.kill()
    m.start()
    assert m.ctl("get", "s11", "--print-value-only").stdout == "11\n"
    assert len(m.ctl("get", "s", "--prefix", "--keys-only").stdout.split()) == 12
    value = "x" * 30000
    results = [m.ctl("put", f"big{i}", value, check=False) for i in range(3)]
    assert any("etcdserver: mvcc: database space exceeded" in clean_stderr(r.stderr) for r in results)
    assert "alarm:NOSPACE" in m.ctl("alarm", "list").stdout
    assert m.ctl("get", "s0", "--print-value-only").stdout == "0\n"  # reads still work
    m.ctl("del", "big", "--prefix")  # deletes are allowed under NOSPACE
    rev = json.loads(m.ctl("get", "s0", "-w", "json").stdout)["header"]["revision"]
    m.ctl("compaction", str(rev))
    m.ctl("defrag")
    m.ctl("alarm", "disarm")
    assert m.ctl("alarm", "list").stdout == ""
    assert m.ctl("put", "after", "disarm").stdout.strip() == "OK"


def test_corrupt_wal_middle_refuses_to_start(make_member) -> None:
    m = make_member()
    for i in range(20):
        m.ctl("put", f"c{i}", "v" * 100)
    m.kill()
    segments = sorted((m.data_dir / "member" / "wal").glob("*.wal"))
    data = bytearray(segments[0].read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    segments[0].write_bytes(bytes(data))
    proc = subprocess.run(m.argv(), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "corrupt" in proc.stderr.lower() and segments[0].name in proc.stderr
    assert "Traceback" not in proc.stderr


def test_auto_tls_serves_with_a_self_signed_certificate(make_member, tmp_path: Path) -> None:
    m = make_member(start=False)
    m.extra = ["--auto-tls"]
    argv = [a for a in m.argv()]
    # --auto-tls replaces --cert-file/--key-file; client certificates stay required (trusted CA).
    for flag in ("--cert-file", "--key-file"):
        i = argv.index(flag)
        del argv[i:i + 2]
    m.argv = lambda: argv  # type: ignore[method-assign]
    m.start()
    out = subprocess.run(
        ["/usr/bin/etcdctl", "--endpoints", m.endpoint, "--insecure-skip-tls-verify", "--cert",
         str(m.certs.client_cert), "--key", str(m.certs.client_key), "put", "auto", "tls"],
        capture_output=True, text=True, timeout=20, env={"ETCDCTL_API": "3"})
    assert out.stdout.strip() == "OK", out.stderr
    assert (m.data_dir / "fixtures" / "client" / "cert.pem").exists()


def test_systemd_notify_ready_and_stopping(make_member, tmp_path: Path) -> None:
    import socket as socketlib

    path = tmp_path / "notify.sock"
    sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    try:
        m = make_member(env={"NOTIFY_SOCKET": str(path)})
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready and m.endpoint in ready
        m.stop()
        assert "STOPPING=1" in sock.recv(4096).decode()
    finally:
        sock.close()


def test_plaintext_opt_out_works_and_warns(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "securekv", "serve", "--data-dir", str(tmp_path / "d"),
             "--listen-client-urls", f"http://127.0.0.1:{port}", "--insecure-allow-plaintext"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while "serving clients" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        put = subprocess.run(["/usr/bin/etcdctl", "--endpoints", f"http://127.0.0.1:{port}", "put", "p", "q"],
                             capture_output=True, text=True, timeout=20, env={"ETCDCTL_API": "3"})
        assert put.stdout.strip() == "OK", put.stderr
        assert "UNENCRYPTED and UNAUTHENTICATED" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
