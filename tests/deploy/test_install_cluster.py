"""The three cluster member configs, rendered by `securekv install systemd --root` (one temporary
root per member, loopback addresses), start a working 3-member cluster from the installed
`/etc/securekv/securekv.yaml` files — each member saying READY=1 on its own notify socket once
it has joined, as systemd would see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from deploy_helpers import EXEC, REPO, NotifyReceiver, free_port, localize

DEADLINE_S = 60


def etcdctl(endpoint: str, pki: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["etcdctl", f"--endpoints={endpoint}", f"--cacert={pki / 'ca.pem'}", f"--cert={pki / 'root.pem'}",
         f"--key={pki / 'root-key.pem'}", *args],
        capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=30,
    )


def test_rendered_cluster_configs_start_three_members(tmp_path: Path, cli) -> None:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import write_crl

    pki = tmp_path / "pki"
    init_ca(pki)
    for i in (1, 2, 3):
        issue_cert(pki, "peer", f"member-{i}", hosts=["127.0.0.1"])
    issue_cert(pki, "client", "root")
    write_crl(pki)
    ports = {(f"10.0.0.1{i}", p): free_port() for i in (1, 2, 3) for p in (2379, 2380)}
    installed, endpoints = [], []
    for i in (1, 2, 3):
        data = localize(f"cluster-member-{i}.yaml", tmp_path, ports)
        # All members share 127.0.0.1 here: the shipped extra https://127.0.0.1:2379 listener
        # and the metrics port 2381 would collide, so each member keeps its own only.
        data["listen-client-urls"] = data["advertise-client-urls"]
        data["listen-metrics-urls"] = f"http://127.0.0.1:{free_port()}"
        source = tmp_path / f"member-{i}.yaml"
        source.write_text(yaml.safe_dump(data, sort_keys=False))
        root = tmp_path / f"root-{i}"
        result = cli("systemd", "--config", str(source), "--root", str(root), "--exec", EXEC)
        assert result.exit_code == 0, result.output
        config = root / "etc/securekv/securekv.yaml"
        assert yaml.safe_load(config.read_text()) == data
        installed.append(config)
        endpoints.append(data["advertise-client-urls"])

    procs: list[subprocess.Popen] = []
    receivers = [NotifyReceiver(tmp_path / f"notify-{i}.sock") for i in (1, 2, 3)]
    try:
        for config, receiver, i in zip(installed, receivers, (1, 2, 3)):
            env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=str(receiver.path))
            log = open(tmp_path / f"member-{i}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "securekv", "serve", "--config-file", str(config)],
                                          stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
            log.close()
        for i, (proc, receiver) in enumerate(zip(procs, receivers), 1):
            try:
                message, sender = receiver.recv(DEADLINE_S)
            except TimeoutError:
                raise AssertionError(f"member-{i} sent no READY=1:\n{(tmp_path / f'member-{i}.log').read_text()[-3000:]}")
            assert "READY=1" in message.splitlines() and sender == proc.pid, message
        members = json.loads(etcdctl(endpoints[0], pki, "member", "list", "-w", "json").stdout)["members"]
        assert sorted(m["name"] for m in members) == ["member-1", "member-2", "member-3"]
        health = etcdctl(",".join(endpoints), pki, "endpoint", "health")
        assert health.returncode == 0 and (health.stdout + health.stderr).count("is healthy") == 3, health
        assert etcdctl(endpoints[0], pki, "put", "installed", "cluster").stdout == "OK\n"
        assert etcdctl(endpoints[2], pki, "get", "installed", "--print-value-only").stdout == "cluster\n"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=20)
        for receiver in receivers:
            receiver.close()
    for i in (1, 2, 3):
        assert (tmp_path / "data" / f"member-{i}" / "member").is_dir()
