"""`securekv install systemd --backup-timer`: the rendered securekv-backup.service/.timer pass
systemd's own checks, bad input writes nothing, values are quoted per systemd's rules, and the
service's ExecStart really takes an encrypted backup from a live member inside the sandbox its
unit describes (deploy_unit_sandbox.py, as for the member's own unit)."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_helpers import CONFIGS, EXEC, REPO, NotifyReceiver, free_port, localize, snapshot
from securekv.deploy.backup_timer import credential_source, quote_arg
from securekv.errors import UsageError

SINGLE = str(CONFIGS / "single-member.yaml")
TIMER_ARGS = ["--backup-timer", "daily", "--backup-dir", "/var/backups/securekv", "--backup-key-file",
              "/etc/securekv/backup.key", "--backup-client-cert", "/etc/securekv/pki/backup.pem",
              "--backup-client-key", "/etc/securekv/pki/backup-key.pem"]


def exposure(unit: Path) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                          text=True, timeout=30)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


def test_timer_units_render_and_verify(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    result = cli("systemd", "--config", SINGLE, "--root", str(root), "--exec", EXEC, *TIMER_ARGS)
    assert result.exit_code == 0, result.output
    units = root / "etc/systemd/system"
    service, timer = units / "securekv-backup.service", units / "securekv-backup.timer"
    proc = subprocess.run(["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    assert exposure(service) <= 2.0
    lines = service.read_text().splitlines()
    assert "Type=oneshot" in lines and "User=securekv" in lines and "ReadWritePaths=/var/backups/securekv" in lines
    assert "LoadCredential=snapshot.key:/etc/securekv/backup.key" in lines
    assert "LoadCredential=client.key:/etc/securekv/pki/backup-key.pem" in lines
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/usr/bin/env securekv ctl --endpoints https://10.0.0.11:2379 --cacert /etc/securekv/pki/ca.pem "
        '--cert /etc/securekv/pki/backup.pem --key "%d/client.key" snapshot save --backup-dir /var/backups/securekv '
        '--retain 7 --encryption-key-file "%d/snapshot.key"')
    assert "OnCalendar=daily" in timer.read_text() and "Persistent=yes" in timer.read_text()
    # the member's own files are unchanged by the option
    plain = tmp_path / "plain"
    assert cli("systemd", "--config", SINGLE, "--root", str(plain), "--exec", EXEC).exit_code == 0
    for name in ("etc/systemd/system/securekv.service", "etc/securekv/securekv.yaml"):
        assert (plain / name).read_bytes() == (root / name).read_bytes()


@pytest.mark.parametrize("change, message", [
    (("--backup-timer", "every tuesday"), "Failed to parse calendar specification"),
    (("--backup-timer", "daily\nExecStartPre=/bin/sh"), "is not a systemd calendar expression"),
    (("--backup-dir", "relative/dir"), "must be an absolute path"),
    (("--backup-key-file", "/etc/k\nUser=root"), "must not contain whitespace"),
    (("--backup-dir", "/var/backups/../../etc"), "must be a normalised absolute path"),
    (("--backup-client-key", ""), "--backup-timer needs --backup-dir, --backup-key-file"),
])
def test_bad_timer_input_writes_nothing(tmp_path: Path, cli, change: tuple[str, str], message: str) -> None:
    args = list(TIMER_ARGS)
    i = args.index(change[0])
    args[i + 1] = change[1]
    root = tmp_path / "root"
    root.mkdir()
    result = cli("systemd", "--config", SINGLE, "--root", str(root), "--exec", EXEC, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert snapshot(root) == {}


def test_quoting_follows_systemd_rules() -> None:
    assert quote_arg("/var/backups/kv") == "/var/backups/kv"
    assert quote_arg("/srv/my backups") == '"/srv/my backups"'
    assert quote_arg('/srv/a"b\\c') == '"/srv/a\\"b\\\\c"'
    assert quote_arg("/srv/100%") == '"/srv/100%%"' and quote_arg("/srv/$HOME") == '"/srv/$$HOME"'
    assert quote_arg("/srv/$HOME", command_line=False) == '"/srv/$HOME"'  # no variable expansion there
    assert credential_source("/etc/k%ey") == "/etc/k%%ey"
    for bad in ("/srv/a\nb", "/srv/\x00"):
        with pytest.raises(UsageError):
            quote_arg(bad)
    with pytest.raises(UsageError):
        credential_source(" /etc/key")


# -- live: the service's command inside its sandbox ---------------------------------------------
SANDBOX = Path(__file__).with_name("deploy_unit_sandbox.py")
UNSHARE = ("unshare", "--mount", "--uts", "--propagation", "private")


def _service_user() -> str:
    import grp

    for name in ("daemon", "www-data", "backup"):
        try:
            if grp.getgrnam(name).gr_gid == pwd.getpwnam(name).pw_gid:
                return name
        except KeyError:
            continue
    pytest.skip("no system account with a same-named group")


@pytest.mark.skipif(os.geteuid() != 0, reason="building the sandbox needs root")
def test_backup_service_takes_an_encrypted_backup_inside_its_sandbox(tmp_path: Path, cli) -> None:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.snapcrypt import backupdir, files
    from securekv.snapcrypt.keys import keygen, read_key_file

    pki = tmp_path / "pki"
    init_ca(pki)
    issue_cert(pki, "peer", "member-1", hosts=["127.0.0.1"])
    issue_cert(pki, "client", "root")
    pki.chmod(0o755)  # certificates readable; the keys stay 0600 root, reached only via LoadCredential=
    data = localize("single-member.yaml", tmp_path, {2379: free_port(), 2381: free_port()})
    data.pop("client-crl-file", None)
    source = tmp_path / "member.yaml"
    source.write_text(yaml.safe_dump(data, sort_keys=False))
    key = tmp_path / "keys" / "backup.key"
    key.parent.mkdir()
    keygen(key)
    user = _service_user()
    state = tmp_path / "state"
    backups = state / "backups"
    root = tmp_path / "root"
    result = cli("systemd", "--config", str(source), "--root", str(root), "--exec", EXEC, "--user", user,
                 "--backup-timer", "hourly", "--backup-dir", str(backups), "--backup-key-file", str(key),
                 "--backup-client-cert", str(pki / "root.pem"), "--backup-client-key", str(pki / "root-key.pem"),
                 "--backup-retain", "3")
    assert result.exit_code == 0, result.output
    unit = root / "etc/systemd/system/securekv-backup.service"
    # as apply_systemd creates it: 0700, owned by the service user
    entry = pwd.getpwnam(user)
    backups.mkdir(parents=True)
    os.chown(backups, entry.pw_uid, entry.pw_gid)
    os.chmod(backups, 0o700)

    notify = tmp_path / "notify.sock"
    receiver = NotifyReceiver(notify)
    with open(tmp_path / "member.log", "wb") as log:
        member = subprocess.Popen([sys.executable, "-m", "securekv", "serve", "--config-file", str(source)],
                                  env={**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(notify)},
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        while "READY=1" not in receiver.recv(30)[0].splitlines():
            pass
        exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
        argv = shlex.split(exec_start[len("ExecStart="):].replace("%d", "/run/credentials/securekv.service"))
        assert argv[:2] == EXEC.split()
        argv = [sys.executable, "-m", "securekv", *argv[2:]]  # the unit names the installed program
        keep = [pki, key.parent, Path(sys.prefix), Path(sys.base_prefix), REPO]
        cmd = [*UNSHARE, sys.executable, str(SANDBOX), str(unit), "--state-dir", str(state),
               *[x for path in keep for x in ("--keep", str(path))], "--", *argv]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
        for _ in range(2):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.startswith(f"Snapshot saved at {backups}/securekv-backup-")
            assert "MemoryDenyWriteExecute" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        member.terminate()
        member.wait(timeout=30)
        receiver.close()
    kept = backupdir.list_backups(backups)
    assert len(kept) == 2
    for path in kept:
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (entry.pw_uid, 0o600)
        status = files.status(path, read_key_file(str(key)))
        assert status.verified and status.total_key and status.header.revision >= 1


def test_member_backup_dir_in_the_config_is_writable_under_the_unit(tmp_path: Path, cli) -> None:
    data = yaml.safe_load(Path(SINGLE).read_text())
    data.update({"backup-dir": "/srv/backups/securekv", "backup-encryption-key-file": "/etc/securekv/backup.key",
                 "backup-interval": "6h", "backup-retain": 4})
    config = tmp_path / "member.yaml"
    config.write_text(yaml.safe_dump(data))
    root = tmp_path / "root"
    result = cli("systemd", "--config", str(config), "--root", str(root), "--exec", EXEC)
    assert result.exit_code == 0, result.output
    assert "ReadWritePaths=/srv/backups/securekv" in (root / "etc/systemd/system/securekv.service").read_text()
    assert yaml.safe_load((root / "etc/securekv/securekv.yaml").read_text())["backup-retain"] == 4
