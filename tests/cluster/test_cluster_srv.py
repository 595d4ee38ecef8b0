"""DNS SRV discovery (etcd's clustering guide): three members bootstrap from
``_etcd-server-ssl._tcp`` records served by a real DNS server (dnsmasq) on loopback, peers are
dialled and their certificates checked by the discovered names, and `securekv ctl
--discovery-srv` finds the client endpoints from ``_etcd-client-ssl._tcp``.

The resolver is named explicitly with $SECUREKV_DNS_RESOLVER (the machine's resolv.conf is
never touched)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_harness import REPO, etcdctl, free_port, make_pki, poll

DOMAIN = "example.test"
NAMES = ["infra0", "infra1", "infra2"]


@pytest.fixture
def dns(tmp_path: Path):
    """dnsmasq on 127.0.0.1:<free port> with no upstream; yields (address, add-records function)."""
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(dnsmasq).exists():
        pytest.fail("dnsmasq is required (Debian dnsmasq-base; scripts/install-and-test.sh installs it)")
    port = free_port()
    procs = []

    def start(records: list[str]) -> str:
        argv = [dnsmasq, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--user=" + _user(),
                *records]
        log = open(tmp_path / "dnsmasq.log", "wb")
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        log.close()
        poll(lambda: "started" in (tmp_path / "dnsmasq.log").read_text(), 10, "dnsmasq to start")
        return f"127.0.0.1:{port}"

    yield start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def test_srv_bootstrap_of_three_members(dns, tmp_path: Path) -> None:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert

    ca = tmp_path / "ca"
    init_ca(ca, cn="srv test CA")
    for name in NAMES:  # every member's certificate names it by its DNS name
        # the member name in CN and URI SAN (issue 12: members bind peer certificates to names)
        issue_cert(ca, "peer", f"{name}-peer", cn=name, hosts=[f"{name}.{DOMAIN}", "127.0.0.1"])
        issue_cert(ca, "server", f"{name}-server", hosts=[f"{name}.{DOMAIN}", "127.0.0.1"])
    issue_cert(ca, "client", "root")
    ports = {n: (free_port(), free_port()) for n in NAMES}  # client, peer
    records = []
    for n, (client, peer) in ports.items():
        records += [f"--host-record={n}.{DOMAIN},127.0.0.1",
                    f"--srv-host=_etcd-server-ssl._tcp.{DOMAIN},{n}.{DOMAIN},{peer},0,0",
                    f"--srv-host=_etcd-client-ssl._tcp.{DOMAIN},{n}.{DOMAIN},{client},0,0"]
    resolver = dns(records)
    env = dict(os.environ, PYTHONPATH=str(REPO), SECUREKV_DNS_RESOLVER=resolver)
    procs = {}
    try:
        for n, (client, peer) in ports.items():
            argv = [sys.executable, "-m", "securekv", "serve", "--name", n, "--data-dir", str(tmp_path / n),
                    "--discovery-srv", DOMAIN, "--initial-cluster-token", "srv-token",
                    "--initial-advertise-peer-urls", f"https://{n}.{DOMAIN}:{peer}",
                    "--listen-peer-urls", f"https://127.0.0.1:{peer}",
                    "--advertise-client-urls", f"https://{n}.{DOMAIN}:{client}",
                    "--listen-client-urls", f"https://127.0.0.1:{client}",
                    "--cert-file", str(ca / f"{n}-server.pem"), "--key-file", str(ca / f"{n}-server-key.pem"),
                    "--trusted-ca-file", str(ca / "ca.pem"), "--client-cert-auth",
                    "--peer-cert-file", str(ca / f"{n}-peer.pem"), "--peer-key-file", str(ca / f"{n}-peer-key.pem"),
                    "--peer-trusted-ca-file", str(ca / "ca.pem"), "--peer-client-cert-auth"]
            with open(tmp_path / f"{n}.log", "wb") as log:
                procs[n] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

        class P:  # what etcdctl() needs of a PKI
            pass

        pki = P()
        pki.ca, pki.client_cert, pki.client_key = ca / "ca.pem", ca / "root.pem", ca / "root-key.pem"
        endpoints = ",".join(f"https://127.0.0.1:{c}" for c, _ in ports.values())

        def healthy() -> bool:
            for n, p in procs.items():
                assert p.poll() is None, (tmp_path / f"{n}.log").read_text()[-3000:]
            r = etcdctl(endpoints, pki, "endpoint", "health", check=False, command_timeout="3s")
            return r.returncode == 0

        poll(healthy, 90, "the three SRV-bootstrapped members to be healthy", interval=0.5)
        members = json.loads(etcdctl(endpoints, pki, "member", "list", "-w", "json").stdout)["members"]
        assert sorted(m["name"] for m in members) == NAMES
        for m in members:  # peer URLs are the discovered names, as etcd records them
            assert m["peerURLs"] == [f"https://{m['name']}.{DOMAIN}:{ports[m['name']][1]}"]
        for n in NAMES:
            text = (tmp_path / f"{n}.log").read_text()
            assert "got bootstrap from DNS for etcd-server" in text

        # securekv ctl finds the client endpoints from _etcd-client-ssl._tcp and verifies each
        # server certificate against its discovered name.
        ctl = [sys.executable, "-m", "securekv", "ctl", "--discovery-srv", DOMAIN, "--cacert", str(pki.ca),
               "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        r = subprocess.run([*ctl, "put", "srv", "ok"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr
        r = subprocess.run([*ctl, "endpoint", "health"], capture_output=True, text=True, env=env,
                           timeout=60)
        assert r.returncode == 0 and r.stderr.count("is healthy") + r.stdout.count("is healthy") == 3, r
        assert etcdctl(endpoints, pki, "get", "srv", "--print-value-only").stdout.strip() == "ok"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=20)


def test_srv_errors_are_clear(dns, tmp_path: Path) -> None:
    resolver = dns([f"--srv-host=_etcd-server-ssl._tcp.{DOMAIN},other.{DOMAIN},2380,0,0",
                    f"--host-record=other.{DOMAIN},127.0.0.9"])
    env = dict(os.environ, PYTHONPATH=str(REPO), SECUREKV_DNS_RESOLVER=resolver)
    peer = free_port()
    base = [sys.executable, "-m", "securekv", "serve", "--name", "me", "--data-dir", str(tmp_path / "me"),
            "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer}", "--listen-peer-urls",
            f"https://127.0.0.1:{peer}", "--peer-auto-tls"]
    r = subprocess.run([*base, "--discovery-srv", DOMAIN], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and 'cannot find local etcd member "me" in SRV records' in r.stderr, r.stderr
    r = subprocess.run([*base, "--discovery-srv", "nothing.test"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 1 and "error querying DNS SRV records for _etcd-server-ssl" in r.stderr, r.stderr
    r = subprocess.run([*base, "--discovery-srv", DOMAIN, "--initial-cluster", f"me=https://127.0.0.1:{peer}"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "multiple discovery or bootstrap flags are set" in r.stderr
    assert not (tmp_path / "me").exists()
