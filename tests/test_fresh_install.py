"""What a new user gets: a clean copy of the repository installed into a fresh virtual
environment (newest releases of every dependency, nothing from this machine's interpreter), then
`securekv serve` on its embedded default, driven by the real etcdctl and the PyPI etcd3 client
through the streaming RPCs that broke with trio 0.35 (watch, lease keep-alive).

The copy holds exactly what `git clone` would plus uncommitted work (git's own file list), so
the test checks the package metadata, the declared dependencies and the shipped data files the
way `pip install .` sees them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ports import free_port

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 60


def _clean_copy(dest: Path) -> None:
    """The repository as a clone has it (tracked + new, unignored files), without build debris."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if not source.is_file():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("the fresh-install test needs git and a git checkout of securekv")
    base = tmp_path_factory.mktemp("fresh")
    clone = base / "securekv"
    _clean_copy(clone)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # A user's environment: none of this test run's PYTHONPATH or virtual environment leaks in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(clone)],
                             capture_output=True, text=True, env=env, timeout=900)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def _wait_ready(receiver: socket.socket, proc: subprocess.Popen) -> None:
    receiver.settimeout(0.25)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"securekv serve exited with {proc.returncode} before READY=1:\n{proc.communicate()[1]}")
        assert time.monotonic() < deadline, "no READY=1 from securekv serve"
        try:
            if "READY=1" in receiver.recv(4096).decode().splitlines():
                return
        except TimeoutError:
            continue


def test_fresh_venv_install_serves_watch_and_keepalive(fresh_venv: Path, tmp_path: Path) -> None:
    python = fresh_venv / "bin" / "python"
    versions = subprocess.run([str(python), "-c", "import trio, grpc; print(trio.__version__, grpc.__version__)"],
                              capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    port = free_port()
    notify = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(NOTIFY_SOCKET=str(notify), SECUREKV_LISTEN_CLIENT_URLS=f"https://127.0.0.1:{port}")
    # The console script the user runs, from a directory outside the repository.
    proc = subprocess.Popen([str(fresh_venv / "bin" / "securekv"), "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(receiver, proc)
        pki = tmp_path / "default.securekv" / "pki"
        tls = [f"--endpoints=https://127.0.0.1:{port}", f"--cacert={pki / 'ca.pem'}",
               f"--cert={pki / 'root.pem'}", f"--key={pki / 'root-key.pem'}"]
        ctl_env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
        # etcdctl watch: a stream that must see a put made after it opened.
        with subprocess.Popen(["/usr/bin/etcdctl", *tls, "watch", "fresh/", "--prefix"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ctl_env) as watch:
            try:
                got: list[str] = []
                reader = threading.Thread(target=lambda: got.extend(watch.stdout.readline() for _ in range(3)))
                reader.start()
                deadline = time.monotonic() + 20
                while reader.is_alive() and time.monotonic() < deadline:
                    put = subprocess.run(["/usr/bin/etcdctl", *tls, "put", "fresh/a", "1"], capture_output=True,
                                         text=True, env=ctl_env, timeout=20)
                    assert put.stdout == "OK\n", put.stderr
                    reader.join(0.5)
                assert [line.strip() for line in got] == ["PUT", "fresh/a", "1"], (got, versions)
            finally:
                watch.kill()
                watch.communicate(timeout=10)
        _etcd3_watch_and_keepalive(port, pki)
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.terminate()
        receiver.close()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert "TypeError" not in err, err


ETCD3_SCRIPT = r"""
import sys, threading
import etcd3

port, pki = int(sys.argv[1]), sys.argv[2]
client = etcd3.client(host="127.0.0.1", port=port, ca_cert=pki + "/ca.pem", cert_cert=pki + "/root.pem",
                      cert_key=pki + "/root-key.pem", timeout=10)
events, cancel = client.watch("fresh/etcd3")
client.put("fresh/etcd3", "v")
got = []
reader = threading.Thread(target=lambda: got.append(next(events)), daemon=True)
reader.start()
reader.join(20)
cancel()
assert got and got[0].value == b"v", "etcd3's watch received nothing"
lease = client.lease(30)
replies = list(client.refresh_lease(lease.id))
assert replies and replies[0].TTL > 0, replies
assert lease.remaining_ttl > 0
client.close()
print("etcd3 watch and keepalive ok")
"""


def _etcd3_watch_and_keepalive(port: int, pki: Path) -> None:
    """The PyPI etcd3 client (needs protobuf's pure-Python backend with current protobuf)."""
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", ETCD3_SCRIPT, str(port), str(pki)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "etcd3 watch and keepalive ok"
