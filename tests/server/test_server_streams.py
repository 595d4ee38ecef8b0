"""Watch, lease, lock and election through the real etcdctl (same scenario on etcd)."""

from __future__ import annotations

import json
import subprocess
import time

from server_harness import ETCDCTL, clean_stderr


def _spawn(member, *args: str) -> subprocess.Popen:
    c = member.certs
    argv = [ETCDCTL, "--endpoints", member.endpoint, "--cacert", str(c.ca), "--cert", str(c.client_cert),
            "--key", str(c.client_key), *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


def _reap(proc: subprocess.Popen | None) -> None:
    """Stop a tool still running and close its pipes (an open pipe is a leaked file)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def _read_lines(proc: subprocess.Popen, n: int, timeout: float = 15) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < n and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
    return lines


def test_watch_history_and_live_events(server) -> None:
    server.ctl("put", "w/a", "1")
    server.ctl("put", "w/b", "2")
    server.ctl("del", "w/a")
    watch = _spawn(server, "watch", "w/", "--prefix", "--rev", "2", "--prev-kv")
    try:
        history = _read_lines(watch, 11)
        # With --prev-kv, DELETE prints the previous kv, then the tombstone (key, empty value).
        assert history == ["PUT", "w/a", "1", "PUT", "w/b", "2", "DELETE", "w/a", "1", "w/a", ""]
        server.ctl("put", "w/c", "3")
        assert _read_lines(watch, 3) == ["PUT", "w/c", "3"]
    finally:
        _reap(watch)


def test_watch_compacted_revision_is_canceled(server) -> None:
    for i in range(4):
        server.ctl("put", "c", str(i))
    server.ctl("compaction", "4")
    proc = subprocess.run([*_spawn_args(server), "watch", "c", "--rev", "2"], capture_output=True, text=True,
                          timeout=20, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 5
    assert "etcdserver: mvcc: required revision has been compacted" in proc.stdout + proc.stderr


def _spawn_args(member) -> list[str]:
    c = member.certs
    return [ETCDCTL, "--endpoints", member.endpoint, "--cacert", str(c.ca), "--cert", str(c.client_cert),
            "--key", str(c.client_key)]


def test_lease_lifecycle(server) -> None:
    out = server.ctl("lease", "grant", "30").stdout
    assert out.startswith("lease ") and out.rstrip().endswith("granted with TTL(30s)")
    lease = out.split()[1]
    server.ctl("put", "lk1", "v", "--lease", lease)
    server.ctl("put", "lk2", "v", "--lease", lease)
    ttl = server.ctl("lease", "timetolive", lease, "--keys").stdout
    assert f"lease {lease} granted with TTL(30s)" in ttl and ("attached keys([lk1 lk2])" in ttl or "attached keys([lk2 lk1])" in ttl)  # etcd: map order
    assert lease in server.ctl("lease", "list").stdout
    keep = server.ctl("lease", "keep-alive", "--once", lease).stdout
    assert keep.strip() == f"lease {lease} keepalived with TTL(30)"
    rev_before = json.loads(server.ctl("get", "x", "-w", "json").stdout)["header"]["revision"]
    assert server.ctl("lease", "revoke", lease).stdout.strip() == f"lease {lease} revoked"
    after = json.loads(server.ctl("get", "lk", "--prefix", "-w", "json").stdout)
    assert "kvs" not in after and after["header"]["revision"] == rev_before + 1  # one revision for both
    gone = server.ctl("lease", "timetolive", "1234").stdout
    assert gone.strip() == "lease 0000000000001234 already expired"
    bad = server.ctl("lease", "revoke", "1234", check=False)
    assert clean_stderr(bad.stderr) == "Error: failed to revoke lease (etcdserver: requested lease not found)"
    short = server.ctl("lease", "grant", "1").stdout
    assert "granted with TTL(2s)" in short  # raised to the minimum TTL


def test_lease_expiry_deletes_keys(server) -> None:
    lease = server.ctl("lease", "grant", "2").stdout.split()[1]
    server.ctl("put", "ephemeral", "v", "--lease", lease)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.ctl("get", "ephemeral").stdout == "":
            break
        time.sleep(0.25)
    assert server.ctl("get", "ephemeral").stdout == ""


def test_lock_and_elect(server) -> None:
    out = server.ctl("lock", "mylock", "echo", "inside").stdout
    assert out.strip() == "inside"
    holder = _spawn(server, "lock", "L")
    waiter = None
    try:
        first = _read_lines(holder, 1)
        assert first and first[0].startswith("L/")
        waiter = _spawn(server, "lock", "L", "echo", "second")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the waiter has queued its own key...
            if len(server.ctl("get", "L/", "--prefix", "--keys-only").stdout.split()) == 2:
                break
            time.sleep(0.1)
        assert len(server.ctl("get", "L/", "--prefix", "--keys-only").stdout.split()) == 2
        assert waiter.poll() is None  # ...and still waits while L is held
        holder.terminate()
        holder.wait(timeout=10)
        out, err = waiter.communicate(timeout=20)
        assert out.strip() == "second", err
    finally:
        for proc in (holder, waiter):
            _reap(proc)
    elect = _spawn(server, "elect", "E", "p1")
    try:
        assert _read_lines(elect, 2)[0].startswith("E/")
        leader = server.ctl("elect", "-l", "E", timeout=5, check=False)
    except subprocess.TimeoutExpired as exc:
        leader = exc
    finally:
        elect.terminate()
        elect.wait(timeout=10)
        _reap(elect)
    text = leader.stdout if isinstance(leader.stdout, str) else (leader.stdout or b"").decode()
    assert "p1" in text
