"""Type=notify: `securekv serve` says READY=1 only once TLS clients can connect, pings WATCHDOG=1,
and says STOPPING=1 on SIGTERM.

The member runs from configs/single-member.yaml rendered for this machine (loopback, free ports,
certificates from securekv.pki under tmp) and installed with `securekv install systemd --root`,
with NOTIFY_SOCKET pointing at a datagram socket the
test owns — exactly what systemd does for a Type=notify unit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deploy_helpers import EXEC, REPO, free_port, localize, tls_handshake

DEADLINE_S = 30


@pytest.fixture
def member_config(tmp_path: Path, cli) -> tuple[Path, dict, Path]:
    """single-member.yaml for this machine, installed by `securekv install systemd --root`."""
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import write_crl

    pki = tmp_path / "pki"
    init_ca(pki)
    issue_cert(pki, "peer", "member-1", hosts=["127.0.0.1"])
    issue_cert(pki, "client", "root")
    write_crl(pki)
    data = localize("single-member.yaml", tmp_path, {2379: free_port(), 2381: free_port()})
    source = tmp_path / "member.yaml"
    source.write_text(yaml.safe_dump(data, sort_keys=False))
    root = tmp_path / "root"
    result = cli("systemd", "--config", str(source), "--root", str(root), "--exec", EXEC)
    assert result.exit_code == 0, result.output
    installed = root / "etc/securekv/securekv.yaml"
    assert yaml.safe_load(installed.read_text()) == data
    return installed, data, pki


PROBE = Path(__file__).with_name("deploy_mdwe_probe.py")


@pytest.mark.parametrize("sandbox", ["plain", "memory-deny-write-execute"])
def test_ready_after_tls_accepts_and_stopping_on_sigterm(tmp_path: Path, member_config, sandbox: str) -> None:
    config_path, data, pki = member_config
    port = int(data["listen-client-urls"].rsplit(":", 1)[1])
    notify_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    # As systemd sets them for WatchdogSec=0.4s: serve must ping WATCHDOG=1 every 0.2 s.
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(REPO), WATCHDOG_USEC="400000")
    argv = [sys.executable, "-m", "securekv", "serve", "--config-file", str(config_path)]
    if sandbox != "plain":  # systemd 252's MemoryDenyWriteExecute= seccomp filter, as the unit sets it
        argv = [sys.executable, str(PROBE), "seccomp", "--exec", *argv]
    proc = subprocess.Popen(
        argv,
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        messages = []
        receiver.settimeout(0.2)
        deadline = time.monotonic() + DEADLINE_S
        while not any("READY=1" in m.splitlines() for m in messages):
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode} before READY=1: {proc.communicate()[1]}")
            assert time.monotonic() < deadline, "no READY=1 within the deadline"
            try:
                messages.append(receiver.recv(4096).decode())
            except TimeoutError:
                continue
        # The moment READY=1 arrives, a mutual-TLS client must get through on the first try.
        assert tls_handshake(port, pki), "READY=1 sent before the client port accepted TLS"
        metrics_port = int(data["listen-metrics-urls"].rsplit(":", 1)[1])
        assert data["listen-metrics-urls"].startswith("https://") and tls_handshake(metrics_port, pki)
        # ... and the member really serves: the real etcdctl writes and reads a key.
        etcdctl = ["etcdctl", f"--endpoints=https://127.0.0.1:{port}", f"--cacert={pki / 'ca.pem'}",
                   f"--cert={pki / 'root.pem'}", f"--key={pki / 'root-key.pem'}"]
        ctl_env = dict(os.environ, ETCDCTL_API="3")
        put = subprocess.run([*etcdctl, "put", "deploy", sandbox], capture_output=True, text=True, env=ctl_env, timeout=20)
        assert put.stdout == "OK\n", put.stderr
        get = subprocess.run([*etcdctl, "get", "deploy"], capture_output=True, text=True, env=ctl_env, timeout=20)
        assert get.stdout == f"deploy\n{sandbox}\n", get.stderr
        assert proc.poll() is None
        receiver.settimeout(DEADLINE_S)
        assert receiver.recv(4096).decode() == "WATCHDOG=1\n"
        proc.send_signal(signal.SIGTERM)
        while True:  # watchdog pings may still be queued ahead of STOPPING=1
            message = receiver.recv(4096).decode()
            if message != "WATCHDOG=1\n":
                break
        assert "STOPPING=1" in message.splitlines(), message
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        receiver.close()
        out, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err
    assert not any("READY=1" in m for m in messages[:-1])
