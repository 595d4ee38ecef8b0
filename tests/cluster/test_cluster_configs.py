"""The three shipped cluster config files (configs/cluster-member-{1,2,3}.yaml), rendered for this
machine with the deployment tests' `localize` (loopback addresses, free ports, files under tmp),
start a working 3-member cluster with `--config-file` alone — for securekv and, as a check of
the files themselves, for the real etcd."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster_harness import ETCD, REPO, START_DEADLINE, ClusterPKI, etcdctl, free_port, poll


def _deploy_helpers():
    if "deploy_helpers" in sys.modules:
        return sys.modules["deploy_helpers"]
    spec = importlib.util.spec_from_file_location("deploy_helpers", REPO / "tests" / "deploy" / "deploy_helpers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["deploy_helpers"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def processes():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=20)


def test_cluster_rendered_configs_start_three_members(kind: str, tmp_path: Path, processes) -> None:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import write_crl

    localize = _deploy_helpers().localize
    pki_dir = tmp_path / "pki"
    init_ca(pki_dir)
    for i in (1, 2, 3):
        issue_cert(pki_dir, "peer", f"member-{i}", hosts=["127.0.0.1", "localhost"])
    issue_cert(pki_dir, "client", "root")
    write_crl(pki_dir)
    pki = ClusterPKI(ca=pki_dir / "ca.pem", server_cert=pki_dir / "member-1.pem", server_key=pki_dir / "member-1-key.pem",
                     peer_cert=pki_dir / "member-1.pem", peer_key=pki_dir / "member-1-key.pem",
                     client_cert=pki_dir / "root.pem", client_key=pki_dir / "root-key.pem",
                     intruder_cert=Path(), intruder_key=Path(), foreign_ca=Path(), foreign_cert=Path(), foreign_key=Path())

    ports = {(f"10.0.0.1{i}", p): free_port() for i in (1, 2, 3) for p in (2379, 2380)}
    configs, endpoints = [], []
    for i in (1, 2, 3):
        data = localize(f"cluster-member-{i}.yaml", tmp_path, ports)
        # The shipped extra listener https://127.0.0.1:2379 collapses onto the member's own address
        # here (all members share 127.0.0.1), and the metrics port must differ per member.
        data["listen-client-urls"] = data["advertise-client-urls"]
        data["listen-metrics-urls"] = f"http://127.0.0.1:{free_port()}"
        path = tmp_path / f"member-{i}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        configs.append(path)
        endpoints.append(data["advertise-client-urls"])
        assert data["peer-transport-security"]["client-cert-auth"] is True
        assert data["listen-peer-urls"].startswith("https://127.0.0.1:")

    env = dict(os.environ, PYTHONPATH=str(REPO))
    for i, path in enumerate(configs, 1):
        argv = [ETCD, "--config-file", str(path)] if kind == "etcd" else \
            [sys.executable, "-m", "securekv", "serve", "--config-file", str(path)]
        log = open(tmp_path / f"member-{i}.log", "wb")
        processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        log.close()

    def healthy(i: int) -> bool:
        p = processes[i]
        if p.poll() is not None:
            raise RuntimeError(f"member-{i + 1} exited with {p.returncode}:\n"
                               f"{(tmp_path / f'member-{i + 1}.log').read_text(errors='replace')[-3000:]}")
        return etcdctl(endpoints[i], pki, "endpoint", "health", check=False, command_timeout="3s").returncode == 0

    for i in range(3):
        try:
            poll(lambda: healthy(i), START_DEADLINE, f"member-{i + 1} to report healthy", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / f'member-{i + 1}.log').read_text(errors='replace')[-3000:]}")

    members = json.loads(etcdctl(endpoints[0], pki, "member", "list", "-w", "json").stdout)["members"]
    assert sorted(m.get("name", "") for m in members) == ["member-1", "member-2", "member-3"]
    assert all(m["peerURLs"][0].startswith("https://127.0.0.1:") for m in members)
    health = etcdctl(endpoints[0], pki, "endpoint", "health", "--cluster")
    assert (health.stdout + health.stderr).count("is healthy") == 3
    assert etcdctl(endpoints[0], pki, "put", "from-config", "yes").stdout.strip() == "OK"
    assert etcdctl(endpoints[2], pki, "get", "from-config", "--print-value-only").stdout.strip() == "yes"
    # Every member's data dir is where the config put it.
    for i in (1, 2, 3):
        assert (tmp_path / "data" / f"member-{i}" / "member").is_dir()
