"""Differential tests: each scenario runs with the real etcdctl and with ``securekv ctl``
against the same server (the real etcd 3.4, and securekv), comparing stdout, exit codes and
``Error:`` lines. Read-only commands compare byte for byte; commands that write compare
after masking revisions, lease IDs and durations (the second run necessarily sees a later
revision)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

from ctlharness import ETCDCTL, REPO, Server, certs, free_port, error_lines, norm, same, server  # noqa: F401 (fixtures)


def test_reads_match_byte_for_byte(server) -> None:
    for k, v in [("a/1", "one"), ("a/2", "two"), ("a/3", "three"), ("b", "bee"), ("hex\x01", "v\xff")]:
        assert server.run("etcdctl", "put", k, v).returncode == 0
    for args in [
        ("get", "a/1"), ("get", "a/1", "-w", "json"), ("get", "a/", "--prefix"), ("get", "a/", "--prefix", "-w", "json"),
        ("get", "a/", "--from-key", "--limit", "2"), ("get", "", "--prefix", "--keys-only"),
        ("get", "a/", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND"), ("get", "a/", "--prefix", "--hex"),
        ("get", "a/", "--prefix", "--print-value-only"), ("get", "a/1", "--rev", "2", "-w", "json"),
        ("get", "hex\x01", "--hex"), ("get", "missing", "-w", "json"),
        ("get", "a/", "--prefix", "--consistency", "s", "--limit", "1", "-w", "json"),
        ("--write-out", "json", "get", "b"), 
        ("del", "nothing", "-w", "json"),
        ("member", "list"), ("member", "list", "-w", "json"), ("member", "list", "-w", "table"),
        ("endpoint", "status"), ("endpoint", "status", "-w", "json"), ("endpoint", "status", "-w", "table"),
        ("endpoint", "hashkv"), ("endpoint", "hashkv", "-w", "json"), ("endpoint", "hashkv", "-w", "table"),
        ("alarm", "list"), ("alarm", "list", "-w", "json"),
        ("lease", "timetolive", "1234", "-w", "json"),
        ("--endpoints", f"{server.endpoint},{server.endpoint}", "endpoint", "status", "-w", "table"),
        ("endpoint", "hashkv", "--endpoints", server.endpoint),
    ]:
        same(server, *args)


def test_read_only_txn(server) -> None:
    server.run("etcdctl", "put", "t1", "v1")
    txn = 'mod("t1") > "0"\nvalue("t1") = "v1"\nversion("t1") != "0"\n\nget t1\nget t --prefix --keys-only\n\nget nothing\n\n'
    same(server, "txn", stdin=txn)
    same(server, "txn", "-w", "json", stdin=txn)
    same(server, "txn", stdin='create("t1") = "0"\n\nget t1\n\nget t1 --print-value-only\nget t --prefix\n\n')
    same(server, "txn", "-i", stdin='c("t1") > "1"\n\n\n\n')


def test_writes_match_after_masking_revisions(server) -> None:
    def twice(setup: list[tuple[str, ...]], *args: str, stdin: str | None = None) -> None:
        outs = []
        for tool in ("etcdctl", "securekv"):
            for step in setup:
                assert server.run("etcdctl", *step).returncode == 0
            outs.append(server.run(tool, *args, stdin=stdin))
        e, s = outs
        assert "Traceback" not in s.stderr
        assert norm(s.stdout) == norm(e.stdout), args
        assert s.returncode == e.returncode, args
        assert error_lines(s.stderr) == error_lines(e.stderr), args

    twice([], "put", "w1", "v")
    twice([], "put", "w1", "v", "-w", "json")
    twice([("put", "w2", "old")], "put", "w2", "new", "--prev-kv")
    twice([("put", "w2", "old")], "put", "w2", "new", "--prev-kv", "-w", "json")
    twice([("put", "w3", "x")], "put", "w3", "--ignore-value")
    twice([("put", "wd/4", "x"), ("put", "wd/5", "y")], "del", "wd/", "--prefix", "--prev-kv")
    twice([("put", "w4", "x"), ("put", "w5", "y")], "del", "w4", "w6", "-w", "json")
    twice([], "put", "w7", stdin="from stdin")
    twice([("put", "w8", "1")], "txn", stdin='value("w8") = "1"\n\nput w8 2\ndel w9\nget w8\n\nput w8 3\n\n')
    twice([("put", "w8", "1")], "txn", "-w", "json", stdin='value("w8") = "1"\n\nput w8 "a b"\n\n\n')
    twice([], "lease", "grant", "60")
    twice([], "lease", "grant", "60", "-w", "json")


def test_lease_lifecycle(server) -> None:
    for tool in ("etcdctl", "securekv"):
        out = server.run(tool, "lease", "grant", "100")
        assert out.returncode == 0, out.stderr
        lease = out.stdout.split()[1]
        assert server.run(tool, "put", "lk", "v", "--lease", lease).returncode == 0
        same(server, "lease", "timetolive", lease, "--keys", normalise=True)
        same(server, "lease", "timetolive", lease, "-w", "json", normalise=True)
        same(server, "lease", "keep-alive", "--once", lease, normalise=True)
        same(server, "lease", "keep-alive", "--once", lease, "-w", "json", normalise=True)
        assert lease in server.run(tool, "lease", "list").stdout
        revoked = server.run(tool, "lease", "revoke", lease)
        assert revoked.stdout == f"lease {lease} revoked\n" and revoked.returncode == 0
        assert server.run(tool, "get", "lk").stdout == ""
    for tool in ("etcdctl", "securekv"):  # the keep-alive stream ends when the lease is revoked
        lease = server.run(tool, "lease", "grant", "6").stdout.split()[1]
        proc = server.start_tool(tool, "lease", "keep-alive", lease)
        try:
            first = _read_lines(proc, 1, time.monotonic() + 20)
            assert first == [f"lease {lease} keepalived with TTL(6)"]
            assert server.run(tool, "lease", "revoke", lease).returncode == 0
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == 0 and out.splitlines()[-1] == f"lease {lease} expired or revoked.", err
    same(server, "lease", "revoke", "1234")
    same(server, "lease", "keep-alive", "--once", "1234")
    same(server, "lease", "timetolive", "nothex")


def test_server_errors(server) -> None:
    """Errors the server produces: the same text and exit code through both clients."""
    same(server, "get", "k", "--rev", "999999")
    same(server, "put", "k", "v", "-w", "table")  # the put happens, then the format is refused (exit 4)
    same(server, "txn", stdin='mod("k") > "0"\n\nput k 1\nput k 2\n\n\n')  # duplicate key in txn
    same(server, "put", "k", "v", "--lease", "1234")
    same(server, "put", "nokey", "--ignore-value")


def test_argument_errors(certs, tmp_path) -> None:
    """Checks made before any RPC: no server needed (the endpoint is a free port nobody listens on)."""
    server = Server("none", tmp_path, certs)
    server.port = free_port()
    for args, stdin in [
        (("get",), None), (("put",), None), (("del", "a", "b", "c"), None), (("get", "a", "--prefix", "--from-key"), None),
        (("get", "a", "--sort-by", "SIZE"), None), (("get", "a", "--consistency", "x"), None),
        (("get", "a", "-w", "yaml"), None), (("lease", "grant"), None), (("lease", "grant", "ten"), None),
        (("compaction",), None), (("compaction", "x"), None), (("txn",), "bogus\n"), (("txn",), 'mod("k") > "0"\n'),
        (("txn",), 'mod("k") > "zero"\n\n\n\n'), (("txn",), 'mod("k") > "0"\n\nput\n\n\n'),
        (("txn",), 'size("k") > "0"\n\n\n\n'), (("txn", "extra"), "\n\n\n"), (("alarm", "list", "extra"), None),
        (("snapshot", "save"), None), (("lock",), None), (("elect", "e1"), None), (("elect", "e1", "prop", "-l"), None),
        (("--cacert", "", "get", "a"), None),
    ]:
        same(server, *args, stdin=stdin)
    # Nothing listening: both give up after the command timeout.
    same(server, "--endpoints", "https://127.0.0.1:1", "--cacert", str(server.certs.ca), "--command-timeout", "1s",
         "get", "a", tls=False)


def test_endpoint_health(server) -> None:
    e = server.run("etcdctl", "endpoint", "health")
    s = server.run("securekv", "endpoint", "health")
    assert s.returncode == e.returncode == 0
    assert norm(s.stderr) == norm(e.stderr) == f"{server.endpoint} is healthy: successfully committed proposal: took\n"
    same(server, "endpoint", "health", "-w", "json", normalise=True)
    # A table's column width depends on the duration text: compare the layout only.
    t = server.run("securekv", "endpoint", "health", "-w", "table").stdout.splitlines()
    assert t[1].split("|")[1:-1] and "ENDPOINT" in t[1] and t[3].strip().endswith("|")


def test_env_vars(server) -> None:
    c = server.certs
    env = {"ETCDCTL_ENDPOINTS": server.endpoint, "ETCDCTL_CACERT": str(c.ca), "ETCDCTL_CERT": str(c.cert),
           "ETCDCTL_KEY": str(c.key), "ETCDCTL_WRITE_OUT": "json"}
    same(server, "get", "a/1", env=env, tls=False)
    ours = {k.replace("ETCDCTL_", "SECUREKV_CTL_"): v for k, v in env.items()}
    s = server.run("securekv", "get", "a/1", env=ours, tls=False)
    assert s.returncode == 0 and s.stdout == server.run("etcdctl", "get", "a/1", env=env, tls=False).stdout


def _read_lines(proc: subprocess.Popen, n: int, deadline: float) -> list[str]:
    lines: list[str] = []
    buf = b""
    fd = proc.stdout.fileno()
    while len(lines) < n and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines.extend(x.decode() for x in done)
    return lines[:n]


def _stream(server, tool: str, *args: str, lines: int, interrupt: bool = True) -> tuple[list[str], int, str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "ETCDCTL_API": "3"}
    with subprocess.Popen(server.argv(tool, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        try:
            got = _read_lines(proc, lines, time.monotonic() + 20)
            if interrupt:
                proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=20)
            return got, rc, proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_watch_replays_history(server) -> None:
    start = int(server.run("etcdctl", "get", "x", "-w", "json").stdout.split('"revision":')[1].split(",")[0]) + 1
    server.run("etcdctl", "put", "wa/1", "one")
    server.run("etcdctl", "put", "wa/2", "two")
    server.run("etcdctl", "del", "wa/1")
    for extra in ((), ("--prev-kv",), ("--hex",)):
        outs = [_stream(server, tool, "watch", "wa/", "--prefix", "--rev", str(start), *extra,
                        lines=11 if extra == ("--prev-kv",) else 9)[0] for tool in ("etcdctl", "securekv")]
        assert outs[0] == outs[1], extra
        assert len(outs[0]) >= 9
    single = [_stream(server, tool, "watch", "wa/2", "--rev", str(start + 1), "-w", "json", lines=1)[0]
              for tool in ("etcdctl", "securekv")]
    assert single[0] == single[1] and '"Events":[{"kv"' in single[0][0]


def test_lock_and_elect(server) -> None:
    same(server, "lock", "mylock", "echo", "hello")
    same(server, "lock", "mylock", "--", "sh", "-c", 'echo "$ETCD_LOCK_KEY"', normalise=True)
    same(server, "lock", "--ttl", "5", "mylock", "false")
    outs = []
    for tool in ("etcdctl", "securekv"):
        lines, rc, err = _stream(server, tool, "lock", "lk2", lines=2)
        outs.append((norm("\n".join(lines)), rc))
    assert outs[0] == outs[1] and outs[0][0] == "lk2/<hex>\n" and outs[0][1] == 0
    outs = []
    for tool in ("etcdctl", "securekv"):
        lines, rc, err = _stream(server, tool, "elect", "el", "proposal", lines=2)
        outs.append((norm("\n".join(lines)), rc))
        assert server.run("etcdctl", "get", "el/", "--prefix").stdout == ""  # resigned on SIGINT
    assert outs[0] == outs[1] and outs[0][0] == "el/<hex>\nproposal" and outs[0][1] == 0


def test_snapshot_save_and_status(server) -> None:
    results = {}
    for tool in ("etcdctl", "securekv"):
        path = server.base / f"{tool}.db"
        plain = ["--plaintext"] if tool == "securekv" else []  # securekv ctl encrypts unless asked
        out = server.run(tool, "snapshot", "save", str(path), *plain)
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"Snapshot saved at {path}\n"
        assert path.stat().st_size % 512 == 32
        assert not [p for p in server.base.iterdir() if ".part" in p.name]
        results[tool] = path
    for path in results.values():
        for fmt in ("simple", "json", "table"):
            same(server, "snapshot", "status", str(path), "-w", fmt)
    same(server, "snapshot", "status", str(server.base / "missing.db"))
    same(server, "snapshot", "status", ETCDCTL)


def test_python_api(server) -> None:
    """The library itself: watch cancel, keep-alive stream, lock/election, errors, snapshot."""
    import threading

    import pytest

    from securekv.client import Client, ClientError, Session, compare, op_get, op_put

    c = server.certs
    with Client([server.endpoint], cacert=str(c.ca), cert=str(c.cert), key=str(c.key), timeout=10) as cl:
        start = cl.put("api/a", "1").header.revision
        w = cl.watch("api/", prefix=True, start_revision=start, prev_kv=True)
        got: list = []
        done = threading.Event()

        def consume() -> None:
            for ev in w.events():
                got.append((ev.type, ev.kv.key, ev.kv.value))
                if len(got) == 2:
                    break
            done.set()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        cl.put("api/a", "2")
        assert done.wait(20) and got == [(0, b"api/a", b"1"), (0, b"api/a", b"2")]
        blocked = cl.watch("api/zzz")
        ended = threading.Event()
        threading.Thread(target=lambda: (list(blocked), ended.set()), daemon=True).start()
        blocked.cancel()
        assert ended.wait(10)  # cancel() ends an iteration that was waiting for events
        w.cancel()

        r = cl.txn([compare("value", "api/a", "=", "2")], [op_put("api/b", "x"), op_get("api/", prefix=True)])
        assert r.succeeded and [kv.key for kv in r.responses[1].response_range.kvs] == [b"api/a", b"api/b"]
        with pytest.raises(ClientError, match="^etcdserver: requested lease not found$"):
            cl.lease_revoke(0x1234)

        lease = cl.lease_grant(3).ID
        ka = cl.lease_keepalive(lease)
        ttls = []
        for resp in ka:  # renewals every TTL/3: the lease outlives its 3 s TTL
            ttls.append(resp.TTL)
            if len(ttls) == 3:
                break
        ka.close()
        assert ttls == [3, 3, 3] and cl.lease_timetolive(lease).TTL > 0

        s1, s2 = Session(cl, 10), Session(cl, 10)
        held = cl.lock("api-lock", s1.lease)
        assert held.key == b"api-lock/%x" % s1.lease
        second: dict = {}
        waiter = threading.Thread(target=lambda: second.setdefault("r", cl.lock("api-lock", s2.lease, timeout=20)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()
        cl.unlock(held.key)
        waiter.join(20)
        assert second["r"].key == b"api-lock/%x" % s2.lease
        cl.unlock(second["r"].key)
        won = cl.campaign("api-el", s1.lease, "me")
        assert cl.leader("api-el").kv.value == b"me"
        cl.resign(won.leader)
        s1.close()
        s2.close()

        path = server.base / "api.db"
        seen: list = []
        size = cl.snapshot_save(str(path), progress=lambda done, total: seen.append(done))
        assert size == path.stat().st_size and seen[-1] == size and size % 512 == 32


def test_compaction_and_canceled_watch(server) -> None:
    """Last: compaction changes what history the other scenarios could read."""
    for i in range(3):
        server.run("etcdctl", "put", "cmp", str(i))
    rev = int(server.run("etcdctl", "get", "x", "-w", "json").stdout.split('"revision":')[1].split(",")[0])
    for tool, r in (("etcdctl", rev - 2), ("securekv", rev - 1)):
        out = server.run(tool, "compaction", str(r))
        assert (out.stdout, out.returncode) == (f"compacted revision {r}\n", 0), out.stderr
    same(server, "compaction", str(rev - 2))
    same(server, "compaction", str(rev + 100))
    same(server, "get", "a/1", "--rev", "1")
    for tool_out in [_stream(server, tool, "watch", "a/1", "--rev", "1", lines=0, interrupt=False)
                     for tool in ("etcdctl", "securekv")]:
        _, rc, err = tool_out
        assert rc == 5
        assert error_lines(err) == ["watch was canceled (etcdserver: mvcc: required revision has been compacted)",
                                    "Error: watch is canceled by the server"]
    same(server, "defrag")
