"""Front ends from etcd's operations guide in front of a 3-member cluster: haproxy (rendered by
`securekv install haproxy`, checked by `haproxy -c`, /health checks over mutual TLS) and
`securekv gateway` (etcd's L4 gateway). Both keep serving the real etcdctl through a member
kill; TLS (and the client certificate) stays end to end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_harness import REPO, Cluster, etcdctl, free_port, poll


def _haproxy() -> str:
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(path).exists():
        pytest.fail("haproxy is required (Debian haproxy; scripts/install-and-test.sh installs it)")
    return path


def _render(c: Cluster, tmp: Path, port: int) -> Path:
    from securekv.deploy import haproxy

    pem = tmp / "health.pem"
    pem.write_bytes(haproxy.health_pem(c.pki.client_cert.read_bytes(), c.pki.client_key.read_bytes()))
    pem.chmod(0o600)
    endpoints = ",".join(f"{n.name}=https://127.0.0.1:{n.client_port}" for n in c.nodes.values())
    cfg = tmp / "securekv.cfg"
    cfg.write_text(haproxy.render(haproxy.make_spec(endpoints, f"127.0.0.1:{port}", str(c.pki.ca), str(pem), 300)))
    return cfg


def test_install_haproxy_output_passes_haproxy_check(tmp_path: Path, pki) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    root = tmp_path / "root"
    argv = [sys.executable, "-m", "securekv", "install", "haproxy", "--endpoints",
            "m1=https://127.0.0.1:2379,m2=https://127.0.0.1:22379,m3=https://node3.example.com:2379",
            "--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
            "--listen-addr", "127.0.0.1:23790", "--health-pem", str(tmp_path / "h.pem")]
    r = subprocess.run([*argv, "--root", str(root)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    cfg = root / "etc/haproxy/securekv.cfg"
    staged_pem = root / str(tmp_path / "h.pem").lstrip("/")
    assert oct(staged_pem.stat().st_mode & 0o777) == "0o600"
    shutil.copy(staged_pem, tmp_path / "h.pem")  # the path the config names
    check = subprocess.run([_haproxy(), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    text = cfg.read_text()
    assert "mode tcp" in text and "check-ssl" in text and "verify required" in text
    assert "verifyhost node3.example.com" in text
    # bad input: one line, nothing written
    for bad, msg in [("m1=https://127.0.0.1:2379\nbind", "expected host:port"), ("m1=https://ev_il:1", "not a valid host name"),
                     ("m1=ftp://h:1", "expected host:port"), ("a b=https://h:1", "member name")]:
        r = subprocess.run([sys.executable, "-m", "securekv", "install", "haproxy", "--endpoints", bad,
                            "--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
                            "--root", str(tmp_path / "bad")], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
        assert not (tmp_path / "bad").exists()
    r = subprocess.run([*argv[:-2], "--cacert", str(tmp_path / "we ird.pem"), "--print"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2 and "absolute path of letters" in r.stderr, r.stderr


def test_haproxy_and_gateway_keep_serving_through_a_member_kill(make_cluster, tmp_path: Path) -> None:
    c: Cluster = make_cluster("securekv")
    lb_port, gw_port = free_port(), free_port()
    cfg = _render(c, tmp_path, lb_port)
    assert subprocess.run([_haproxy(), "-c", "-f", str(cfg)], capture_output=True, timeout=60).returncode == 0
    procs = []
    try:
        with open(tmp_path / "haproxy.log", "wb") as log:
            procs.append(subprocess.Popen([_haproxy(), "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT))
        gw_argv = [sys.executable, "-m", "securekv", "gateway", "start", "--endpoints",
                   ",".join(n.endpoint for n in c.nodes.values()), "--listen-addr", f"127.0.0.1:{gw_port}",
                   "--retry-delay", "1s"]
        with open(tmp_path / "gateway.log", "wb") as log:
            procs.append(subprocess.Popen(gw_argv, stdout=log, stderr=subprocess.STDOUT,
                                          env=dict(os.environ, PYTHONPATH=str(REPO))))
        fronts = {"haproxy": f"https://127.0.0.1:{lb_port}", "gateway": f"https://127.0.0.1:{gw_port}"}

        def serves(endpoint: str, key: str) -> bool:
            r = etcdctl(endpoint, c.pki, "put", key, "v", check=False, command_timeout="3s")
            return r.returncode == 0

        for name, ep in fronts.items():
            poll(lambda ep=ep: serves(ep, "warmup"), 30, f"{name} to serve")
        victim = next(n for n in c.nodes.values() if n is not c.leader())
        victim.kill()
        for i in range(12):  # new connections, spread over the members: none may fail
            for name, ep in fronts.items():
                r = etcdctl(ep, c.pki, "put", f"{name}/{i}", "x", check=False, command_timeout="5s")
                assert r.returncode == 0, (name, i, r.stderr, (tmp_path / f"{name}.log").read_text()[-2000:])
        survivor = next(n for n in c.nodes.values() if n is not victim)
        got = survivor.ctl("get", "haproxy/", "--prefix", "--keys-only").stdout.split()
        assert len(got) == 12 and len(survivor.ctl("get", "gateway/", "--prefix", "--keys-only").stdout.split()) == 12
        gw_log = (tmp_path / "gateway.log").read_text()
        assert "ready to proxy client requests" in gw_log
        # haproxy's health checks took the dead member out
        poll(lambda: "is DOWN" in (tmp_path / "haproxy.log").read_text(), 20, "haproxy to mark the member DOWN")
        # the gateway reactivates a member that comes back
        victim.restart()
        victim.wait_healthy()
        if "deactivated endpoint" in gw_log:
            poll(lambda: '"msg":"activated"' in (tmp_path / "gateway.log").read_text(), 20,
                 "the gateway to reactivate the member")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=15)
