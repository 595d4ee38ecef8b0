"""docs/disaster-recovery.md, executed: every ``dr:…`` block of the page runs as written, in order,
against real processes (securekv members with mutual TLS on loopback, the real etcdctl).

Plain blocks run as one bash script each (``set -euo pipefail``) with the page's variables set to
this machine's values; ``start`` blocks are the members' start commands (one per host, normally
under systemd): all lines of the block are started at once and the test waits for each
member's READY=1 on its own NOTIFY_SOCKET, as ``systemctl start`` does. Between blocks the test
does what the page asks of the operator in prose (stop a member, lose two hosts) and checks the
outcome: every key there, members agree on ``endpoint hashkv``.
"""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_harness import ETCDCTL, PEER_CN, REPO, ClusterPKI, free_port

DOC = REPO / "docs" / "disaster-recovery.md"
READY_DEADLINE = 90.0
KEYS = 40


def doc_blocks() -> dict[str, tuple[str, bool]]:
    """name -> (shell text, is a start block), in page order."""
    text = DOC.read_text()
    found = re.findall(r"<!-- dr:([\w-]+)( start)? -->\n```sh\n(.*?)```", text, re.S)
    return {name: (body, bool(start)) for name, start, body in found}


def convention_names() -> set[str]:
    text = DOC.read_text().split("## Conventions", 1)[1]
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    names: set[str] = set()
    for line in block.splitlines():
        if line.startswith("export "):
            names |= set(re.findall(r"(?:^export |\s)([A-Z][A-Z0-9_]+)=", line))
    return names


def commands(body: str) -> list[str]:
    """Shell lines with backslash continuations joined, comments and blank lines dropped."""
    out, cur = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.lstrip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


class Site:
    """The page's variables for this machine, and the members started from its start blocks."""

    def __init__(self, base: Path, pki: ClusterPKI) -> None:
        self.base = base
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = base / "logs"
        self.logs.mkdir(parents=True)
        bin_dir = base / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "securekv"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m securekv "$@"\n')
        shim.chmod(0o755)
        url = lambda: f"https://127.0.0.1:{free_port()}"  # noqa: E731
        ports = {f"{m}_{kind}": url() for m in ("M1", "M2", "M3", "M3_NEW", "M4", "M5") for kind in ("CLIENT", "PEER")}
        self.env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(base),
            "ETCDCTL_API": "3", "ETCDCTL_CACERT": str(pki.ca), "ETCDCTL_CERT": str(pki.client_cert),
            "ETCDCTL_KEY": str(pki.client_key),
            "ENDPOINTS": ",".join(ports[f"M{i}_CLIENT"] for i in (1, 2, 3)),
            **ports,
            "DATA": str(base / "data"), "MOVED_DATA": str(base / "newhost" / "m3"), "TOKEN": "dr-doc-token",
            "SERVE_TLS": " ".join([
                "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
                "--trusted-ca-file", str(pki.ca), "--client-cert-auth", "--peer-cert-file", str(pki.peer_cert),
                "--peer-key-file", str(pki.peer_key), "--peer-trusted-ca-file", str(pki.ca),
                "--peer-client-cert-auth", "--peer-cert-allowed-cn", PEER_CN,
                "--heartbeat-interval", "100", "--election-timeout", "1000"]),
            "BACKUP_KEY": str(base / "keys" / "backup.key"), "BACKUP_DIR": str(base / "backups"),
        }
        (base / "keys").mkdir()
        (base / "newhost").mkdir()

    # -- the page -----------------------------------------------------------------------------
    def run(self, name: str) -> str:
        body, start = doc_blocks()[name]
        assert not start, name
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], env=self.env, capture_output=True,
                              text=True, timeout=240, cwd=self.base)
        assert proc.returncode == 0, f"block dr:{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.stdout

    def start_block(self, name: str) -> list[str]:
        body, start = doc_blocks()[name]
        assert start, name
        return self.start(commands(body))

    def start(self, lines: list[str]) -> list[str]:
        """Start every command at once; return when each sent READY=1 (fail if one exits)."""
        pending: dict[socket.socket, tuple[str, subprocess.Popen]] = {}
        try:
            for cmd in lines:
                member = re.search(r"--name (\S+)", cmd).group(1)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                path = self.base / f"notify-{member}-{time.monotonic_ns()}.sock"
                sock.bind(str(path))
                with open(self.logs / f"{member}.log", "ab") as log:
                    proc = subprocess.Popen(["bash", "-c", "exec " + cmd], env={**self.env, "NOTIFY_SOCKET": str(path)},
                                            stdout=log, stderr=subprocess.STDOUT, cwd=self.base)
                self.procs[member] = proc
                pending[sock] = (member, proc)
            deadline = time.monotonic() + READY_DEADLINE
            while pending:
                left = deadline - time.monotonic()
                assert left > 0, f"no READY=1 within {READY_DEADLINE:.0f}s from {[m for m, _ in pending.values()]}"
                readable, _, _ = select.select(list(pending), [], [], min(left, 0.5))
                for sock in readable:
                    if b"READY=1" in sock.recv(4096):
                        pending.pop(sock)
                        sock.close()
                for sock, (member, proc) in list(pending.items()):
                    if proc.poll() is not None:
                        raise AssertionError(f"{member} exited with {proc.returncode}:\n{self.log(member)[-3000:]}")
        finally:
            for sock in pending:
                sock.close()
        return [re.search(r"--name (\S+)", cmd).group(1) for cmd in lines]

    # -- the operator's hands -------------------------------------------------------------------
    def log(self, member: str) -> str:
        path = self.logs / f"{member}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, member: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(member)
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=30)

    def close(self) -> None:
        for member in list(self.procs):
            self.stop(member, signal.SIGKILL)

    def etcdctl(self, endpoints: str, *args: str) -> str:
        proc = subprocess.run([ETCDCTL, "--endpoints", endpoints, "--command-timeout", "10s", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"etcdctl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def endpoints(self, *members: str) -> str:
        return ",".join(self.env[f"{m}_CLIENT"] for m in members)

    def hashkvs(self, *members: str) -> set[tuple[int, int]]:
        out = json.loads(self.etcdctl(self.endpoints(*members), "endpoint", "hashkv", "-w", "json"))
        return {(int(h["HashKV"]["hash"]), int(h["HashKV"]["header"]["revision"])) for h in out}

    def wait_agreed(self, *members: str) -> tuple[int, int]:
        """Poll until every listed member reports the same hashkv at the same revision."""
        deadline = time.monotonic() + 60
        while True:
            seen = self.hashkvs(*members)
            if len(seen) == 1:
                return next(iter(seen))
            assert time.monotonic() < deadline, f"members {members} disagree: {seen}"
            time.sleep(0.3)

    def keys(self, member: str) -> list[str]:
        return self.etcdctl(self.endpoints(member), "get", "dr/", "--prefix", "--keys-only",
                            "--consistency=s").split()


@pytest.fixture
def site(tmp_path: Path, pki: ClusterPKI):
    s = Site(tmp_path, pki)
    try:
        yield s
    finally:
        s.close()


def test_page_variables_are_the_ones_the_test_sets(site: Site) -> None:
    assert convention_names() == {k for k in site.env if k not in ("PATH", "PYTHONPATH", "HOME")}
    names = list(doc_blocks())
    assert names == ["backup", "verify", "restore", "restore-start", "restore-check", "move", "move-start",
                     "move-check", "quorum-start", "quorum-add-m4", "quorum-start-m4", "quorum-add-m5",
                     "quorum-start-m5", "quorum-check"]


def test_disaster_recovery_page(site: Site) -> None:
    env = site.env
    # The cluster the page's backup is taken from: three members on the page's addresses
    # (another data dir and token: the restore makes a new cluster in their place).
    old_cluster = f"m1={env['M1_PEER']},m2={env['M2_PEER']},m3={env['M3_PEER']}"
    site.start([f"securekv serve --name {m} --data-dir {site.base / 'old' / m} --listen-client-urls {env[f'{u}_CLIENT']}"
                f" --advertise-client-urls {env[f'{u}_CLIENT']} --listen-peer-urls {env[f'{u}_PEER']}"
                f" --initial-advertise-peer-urls {env[f'{u}_PEER']} --initial-cluster {old_cluster}"
                f" --initial-cluster-state new --initial-cluster-token old-token $SERVE_TLS"
                for m, u in (("m1", "M1"), ("m2", "M2"), ("m3", "M3"))])
    for i in range(KEYS):
        site.etcdctl(env["M1_CLIENT"], "put", f"dr/{i:03d}", f"value-{i}")
    old_hash = site.wait_agreed("M1", "M2", "M3")

    # 1-2: back up, verify
    site.run("backup")
    backups = sorted((site.base / "backups").glob("securekv-backup-*.snap"))
    assert len(backups) == 1 and backups[0].read_bytes()[:8] == b"SKVSNAP\0"
    verified = site.run("verify")
    assert verified.splitlines()[1].split("|")[1].strip() == "HASH" and "AES-256-GCM" in verified

    # The disaster: the whole cluster is lost.
    for m in ("m1", "m2", "m3"):
        site.stop(m, signal.SIGKILL)

    # 3: restore into a new cluster
    site.run("restore")
    site.start_block("restore-start")
    site.run("restore-check")
    assert site.wait_agreed("M1", "M2", "M3") == old_hash  # the old data at the old revision
    assert all(len(site.keys(u)) == KEYS for u in ("M1", "M2", "M3"))
    site.etcdctl(env["M1_CLIENT"], "put", "dr/after-restore", "1")

    # 4: move m3 to a new host
    site.stop("m3")
    site.etcdctl(env["M1_CLIENT"], "put", "dr/while-m3-away", "1")
    site.run("move")
    site.start_block("move-start")
    listed = site.run("move-check")
    assert env["M3_NEW_PEER"] in listed and env["M3_NEW_CLIENT"] in listed and env["M3_PEER"] not in listed
    site.wait_agreed("M1", "M2", "M3_NEW")
    assert len(site.keys("M3_NEW")) == KEYS + 2

    # 5: two hosts lost for good; m1 alone has no quorum
    site.stop("m2", signal.SIGKILL)
    site.stop("m3", signal.SIGKILL)
    site.stop("m1")
    site.start_block("quorum-start")
    members = site.etcdctl(env["M1_CLIENT"], "member", "list")
    assert [line.split(", ")[2] for line in members.splitlines()] == ["m1"]
    site.run("quorum-add-m4")
    site.start_block("quorum-start-m4")
    site.run("quorum-add-m5")
    site.start_block("quorum-start-m5")
    out = site.run("quorum-check")
    assert sorted(line.split("|")[3].strip() for line in out.splitlines() if re.match(r"^\|\s+[0-9a-f]+\s+\|", line)) == [
        "m1", "m4", "m5"]
    site.wait_agreed("M1", "M4", "M5")
    assert all(len(site.keys(u)) == KEYS + 2 for u in ("M1", "M4", "M5"))
    site.etcdctl(env["M5_CLIENT"], "put", "dr/grown-back", "1")
    assert site.etcdctl(env["M4_CLIENT"], "get", "dr/grown-back", "--print-value-only").strip() == "1"
