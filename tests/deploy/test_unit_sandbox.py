"""The real member works under every sandbox directive of the rendered unit.

No systemd runs as PID 1 here, so `deploy_unit_sandbox.py` rebuilds the sandbox from the
rendered `securekv.service` itself (mount namespace, ProtectSystem=strict, PrivateTmp,
ProtectHome, PrivateDevices, ProcSubset, LoadCredential, User=, empty capability sets,
NoNewPrivileges, UMask, and one seccomp filter per SystemCallFilter=/RestrictAddressFamilies=/
RestrictNamespaces=/LockPersonality=/RestrictRealtime=/RestrictSUIDSGID=/MemoryDenyWriteExecute=,
with the syscall sets read from this machine's systemd). First a control proves the sandbox is
in force; then `securekv serve`, installed with `--load-credentials`, runs inside it, says
READY=1 from its main process only once mutual TLS works, serves the real etcdctl, pings the
watchdog and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_helpers import EXEC, REPO, NotifyReceiver, free_port, localize, tls_handshake

SANDBOX = Path(__file__).with_name("deploy_unit_sandbox.py")
DEADLINE_S = 30
UNSHARE = ("unshare", "--mount", "--uts", "--propagation", "private")

if os.geteuid() != 0:  # pragma: no cover - CI and the developers' machines run as root
    pytest.skip("building the sandbox needs root", allow_module_level=True)


def service_user() -> str:
    """A system account whose group has its name (User= and Group= are both the --user)."""
    for name in ("daemon", "www-data", "backup"):
        try:
            if grp.getgrnam(name).gr_gid == pwd.getpwnam(name).pw_gid:
                return name
        except KeyError:
            continue
    pytest.skip("no system account with a same-named group")


@pytest.fixture
def member(tmp_path: Path, cli) -> dict:
    """single-member.yaml for this machine, installed with --load-credentials for a system user."""
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import write_crl

    pki = tmp_path / "pki"
    init_ca(pki)
    issue_cert(pki, "peer", "member-1", hosts=["127.0.0.1"])
    issue_cert(pki, "client", "root")
    write_crl(pki)
    pki.chmod(0o755)  # certificates public; the keys stay 0600 root, reached only via LoadCredential=
    data = localize("single-member.yaml", tmp_path, {2379: free_port(), 2381: free_port()})
    source = tmp_path / "member.yaml"
    source.write_text(yaml.safe_dump(data, sort_keys=False))
    user = service_user()
    root = tmp_path / "root"
    result = cli("systemd", "--config", str(source), "--root", str(root), "--exec", EXEC, "--user", user,
                 "--load-credentials")
    assert result.exit_code == 0, result.output
    config = root / "etc/securekv/securekv.yaml"
    assert yaml.safe_load(config.read_text())["client-transport-security"]["key-file"] == \
        "/run/credentials/securekv.service/client.key"
    # The localized data-dir lies outside /var/lib/securekv, so the unit has ReadWritePaths= for
    # it; a live install creates it like this (apply_systemd: 0700, owned by the service user).
    state = tmp_path / "data"
    entry = pwd.getpwnam(user)
    assert Path(data["data-dir"]).parent == state
    Path(data["data-dir"]).mkdir(parents=True)
    os.chown(data["data-dir"], entry.pw_uid, entry.pw_gid)
    os.chmod(data["data-dir"], 0o700)
    notify = tmp_path / "notify"
    notify.mkdir()
    return {"pki": pki, "config": config, "unit": root / "etc/systemd/system/securekv.service", "state": state,
            "notify": notify, "port": int(data["listen-client-urls"].rsplit(":", 1)[1]), "user": user}


def sandboxed(member: dict, argv: list[str], **env: str) -> list[str]:
    keep = [member["pki"], member["config"].parent, member["notify"], Path(sys.prefix), Path(sys.base_prefix), REPO]
    return [*UNSHARE, sys.executable, str(SANDBOX), str(member["unit"]), "--state-dir", str(member["state"]),
            *[x for path in keep for x in ("--keep", str(path))], "--", *argv]


def base_env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8", **extra}


CONTROL = r"""
import errno, mmap, os, socket, sys
def refused(what, fn, expected):
    try:
        fn()
    except OSError as exc:
        assert exc.errno in expected, (what, exc)
        print("refused", what)
    else:
        raise SystemExit(f"{what} was allowed")
state = os.environ["STATE_DIRECTORY"]
open(os.path.join(state, "probe"), "w").write("x")
assert oct(os.stat(os.path.join(state, "probe")).st_mode & 0o777) == "0o600"  # UMask=0077
refused("write /etc", lambda: open("/etc/securekv-probe", "w"), {errno.EROFS})
refused("write the repository", lambda: open(sys.argv[1] + "/probe", "w"), {errno.EROFS})
assert sorted(os.listdir("/root")) == sys.argv[4].split(","), os.listdir("/root")  # ProtectHome=: only what we kept
refused("see the test's tmp", lambda: os.stat(sys.argv[2]), {errno.ENOENT})
refused("read the key in place", lambda: open(sys.argv[3]), {errno.EACCES})
assert open("/run/credentials/securekv.service/client.key").read().startswith("-----BEGIN")
refused("see /proc/sys", lambda: os.stat("/proc/sys/kernel"), {errno.ENOENT})
refused("open a disk", lambda: os.stat("/dev/kmsg"), {errno.ENOENT})
refused("netlink socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW), {errno.EAFNOSUPPORT})
refused("setuid(0)", lambda: os.setuid(0), {errno.EPERM})
refused("W+X memory", lambda: mmap.mmap(-1, 4096, prot=7), {errno.EPERM, errno.EACCES})
refused("sched_setaffinity (@resources)", lambda: os.sched_setaffinity(0, {0}), {errno.EPERM})
refused("suid chmod", lambda: os.chmod(os.path.join(state, "probe"), 0o4700), {errno.EPERM})
refused("sethostname", lambda: socket.sethostname("x"), {errno.EPERM})
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2", status
for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
    assert int(status[cap], 16) == 0, (cap, status[cap])
print("uid", os.getuid(), os.getgid(), os.getgroups())
"""


def test_the_reproduced_sandbox_is_in_force(member: dict, tmp_path: Path) -> None:
    key = member["pki"] / "member-1-key.pem"
    kept_in_root = sorted({p.relative_to("/root").parts[0] for p in (Path(sys.prefix), Path(sys.base_prefix), REPO) if p.is_relative_to("/root")})
    argv = [sys.executable, "-c", CONTROL, str(REPO), str(tmp_path / "member.yaml"), str(key), ",".join(kept_in_root)]
    proc = subprocess.run(sandboxed(member, argv), capture_output=True, text=True, env=base_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    entry = pwd.getpwnam(member["user"])
    assert f"uid {entry.pw_uid} {entry.pw_gid} []" in proc.stdout
    assert proc.stdout.count("refused") == 12, proc.stdout
    assert "SystemCallFilter (" in proc.stderr
    for part in ("RestrictAddressFamilies", "RestrictNamespaces", "LockPersonality", "RestrictRealtime",
                 "RestrictSUIDSGID", "MemoryDenyWriteExecute"):
        assert part in proc.stderr, proc.stderr


def test_serve_works_under_the_units_sandbox(member: dict) -> None:
    receiver = NotifyReceiver(member["notify"] / "notify.sock")
    (member["notify"] / "notify.sock").chmod(0o777)  # like /run/systemd/notify: any service may send
    env = base_env(NOTIFY_SOCKET=str(receiver.path), WATCHDOG_USEC="1000000")
    argv = [sys.executable, "-m", "securekv", "serve", "--config-file", str(member["config"])]
    proc = subprocess.Popen(sandboxed(member, argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pki, port = member["pki"], member["port"]
    try:
        while True:
            try:
                message, sender = receiver.recv(DEADLINE_S)
            except TimeoutError:
                pytest.fail(f"no READY=1 within {DEADLINE_S}s: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")
            assert sender == proc.pid, "a notification from a process other than the main one (NotifyAccess=main)"
            if "READY=1" in message.splitlines():
                break
        assert tls_handshake(port, pki), "READY=1 sent before the client port accepted TLS"
        etcdctl = ["etcdctl", f"--endpoints=https://127.0.0.1:{port}", f"--cacert={pki / 'ca.pem'}",
                   f"--cert={pki / 'root.pem'}", f"--key={pki / 'root-key.pem'}"]
        ctl_env = dict(os.environ, ETCDCTL_API="3")
        put = subprocess.run([*etcdctl, "put", "sandboxed", "yes"], capture_output=True, text=True, env=ctl_env, timeout=20)
        assert put.stdout == "OK\n", put.stderr
        get = subprocess.run([*etcdctl, "get", "sandboxed"], capture_output=True, text=True, env=ctl_env, timeout=20)
        assert get.stdout == "sandboxed\nyes\n", get.stderr

        status = Path(f"/proc/{proc.pid}/status").read_text()
        entry = pwd.getpwnam(member["user"])
        assert f"Uid:\t{entry.pw_uid}\t{entry.pw_uid}\t{entry.pw_uid}\t{entry.pw_uid}" in status
        assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
        assert "CapEff:\t0000000000000000" in status and "CapBnd:\t0000000000000000" in status
        # PrivateUsers=: a user namespace that maps only root and the service user.
        uid_map = [line.split() for line in Path(f"/proc/{proc.pid}/uid_map").read_text().splitlines()]
        assert uid_map == [["0", "0", "1"], [str(entry.pw_uid), str(entry.pw_uid), "1"]], uid_map
        root_mount = next(line for line in Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines()
                          if line.split()[4] == "/")
        assert "ro" in root_mount.split()[5].split(","), root_mount

        assert receiver.recv(DEADLINE_S) == ("WATCHDOG=1\n", proc.pid)
        proc.send_signal(signal.SIGTERM)
        while True:  # watchdog pings may still be queued ahead of STOPPING=1
            message, sender = receiver.recv(DEADLINE_S)
            assert sender == proc.pid
            if message != "WATCHDOG=1\n":
                break
        assert "STOPPING=1" in message.splitlines(), message
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        receiver.close()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err
    # Everything the member wrote is its own and private (StateDirectory= owner, UMask=0077).
    written = list(member["state"].rglob("*"))
    assert any(p.name.endswith(".wal") or "wal" in p.parts for p in written), written
    for path in written:
        info = path.lstat()
        assert info.st_uid == entry.pw_uid and info.st_mode & 0o077 == 0, (path, oct(info.st_mode))


def test_a_directive_without_a_reproduction_fails_the_proof(member: dict, tmp_path: Path) -> None:
    """A directive added to the unit cannot skip the sandbox proof unnoticed."""
    unit = tmp_path / "extended.service"
    unit.write_text(member["unit"].read_text().replace("[Install]", "IPAddressDeny=any\n\n[Install]"))
    proc = subprocess.run([*UNSHARE, sys.executable, str(SANDBOX), str(unit), "--state-dir", str(member["state"]),
                           "--", "/bin/true"], capture_output=True, text=True, env=base_env(), timeout=60)
    assert proc.returncode == 3
    assert proc.stderr == "sandbox: no reproduction for ['IPAddressDeny']\n"
