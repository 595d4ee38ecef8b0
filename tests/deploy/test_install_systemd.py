"""`securekv install systemd`: the rendered unit passes systemd's own checks; bad input writes nothing."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_helpers import CONFIGS, EXEC, snapshot
from securekv.deploy.systemd import UnitOptions, render_unit

SINGLE = str(CONFIGS / "single-member.yaml")


def unit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=30
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


@pytest.fixture
def installed(tmp_path: Path, cli) -> Path:
    root = tmp_path / "root"
    result = cli("systemd", "--config", SINGLE, "--root", str(root), "--exec", EXEC)
    assert result.exit_code == 0, result.output
    return root


def test_install_under_root_writes_unit_config_and_sysusers(installed: Path) -> None:
    unit = installed / "etc/systemd/system/securekv.service"
    config = installed / "etc/securekv/securekv.yaml"
    sysusers = installed / "etc/sysusers.d/securekv.conf"
    assert sorted(p for p in snapshot(installed) if not p.endswith("/")) == [
        "etc/securekv/securekv.yaml",
        "etc/systemd/system/securekv.service",
        "etc/sysusers.d/securekv.conf",
    ]
    for path in (unit, config, sysusers):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert yaml.safe_load(config.read_text()) == yaml.safe_load(Path(SINGLE).read_text())
    assert 'u securekv - "securekv member" /var/lib/securekv /usr/sbin/nologin' in sysusers.read_text()
    lines = unit_lines(unit.read_text())
    assert "ExecStart=/usr/bin/env securekv serve --config-file /etc/securekv/securekv.yaml" in lines
    for directive in [
        "Type=notify", "WatchdogSec=30s", "User=securekv", "Group=securekv", "StateDirectory=securekv", "ConfigurationDirectory=securekv",
        "Restart=on-failure", "LimitNOFILE=65536", "UMask=0077", "NoNewPrivileges=yes", "ProtectSystem=strict",
        "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectClock=yes",
        "ProtectHostname=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "RestrictNamespaces=yes",
        "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service", "SystemCallArchitectures=native", "CapabilityBoundingSet=",
        "AmbientCapabilities=", "PrivateUsers=yes", "ProcSubset=pid", "ProtectProc=invisible", "DevicePolicy=closed",
    ]:
        assert directive in lines, directive


def test_systemd_analyze_verify_accepts_the_unit(installed: Path) -> None:
    unit = installed / "etc/systemd/system/securekv.service"
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""


def test_security_exposure_is_ok_and_far_below_debians_etcd_unit(installed: Path) -> None:
    ours = exposure(installed / "etc/systemd/system/securekv.service")
    theirs = exposure(Path("/lib/systemd/system/etcd.service"))  # from Debian's etcd-server
    assert ours <= 2.0, ours
    assert theirs >= 9.0 and theirs - ours >= 7.0, (ours, theirs)


def test_rendering_is_deterministic_and_reinstall_is_a_no_op(installed: Path, cli) -> None:
    before = snapshot(installed)
    result = cli("systemd", "--config", SINGLE, "--root", str(installed), "--exec", EXEC)
    assert result.exit_code == 0, result.output
    assert snapshot(installed) == before


def test_dry_run_prints_everything_and_changes_nothing(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = cli("systemd", "--config", SINGLE, "--root", str(root), "--exec", EXEC, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"--- would write {root}/etc/systemd/system/securekv.service (mode 0644)" in result.output
    assert "Type=notify" in result.output and "name: member-1" in result.output
    assert snapshot(root) == {}
    # Without --root the dry run also lists the live-system steps, and still touches nothing.
    result = cli("systemd", "--config", SINGLE, "--exec", EXEC, "--dry-run", "--user", "kv")
    assert result.exit_code == 0, result.output
    assert "--- would write /etc/systemd/system/securekv.service" in result.output
    assert "--- would create system user and group 'kv'" in result.output
    assert "--- would create directory /var/lib/securekv (mode 0700, owner kv:kv)" in result.output
    assert "User=kv" in result.output


def test_custom_user_and_data_dir_outside_the_state_directory(tmp_path: Path, cli) -> None:
    data = yaml.safe_load(Path(SINGLE).read_text())
    data["data-dir"] = "/srv/securekv/data"
    data["wal-dir"] = "/srv/fast/wal"
    config = tmp_path / "member.yaml"
    config.write_text(yaml.safe_dump(data))
    root = tmp_path / "root"
    assert cli("systemd", "--config", str(config), "--root", str(root), "--user", "kv", "--exec", EXEC).exit_code == 0
    lines = unit_lines((root / "etc/systemd/system/securekv.service").read_text())
    assert "User=kv" in lines and "Group=kv" in lines
    assert "ReadWritePaths=/srv/securekv/data" in lines and "ReadWritePaths=/srv/fast/wal" in lines
    assert 'u kv - "securekv member"' in (root / "etc/sysusers.d/securekv.conf").read_text()
    proc = subprocess.run(["systemd-analyze", "verify", str(root / "etc/systemd/system/securekv.service")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_load_credentials_keeps_private_keys_out_of_the_service_users_reach(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    config = CONFIGS / "cluster-member-2.yaml"
    result = cli("systemd", "--config", str(config), "--root", str(root), "--exec", EXEC, "--load-credentials")
    assert result.exit_code == 0, result.output
    unit = root / "etc/systemd/system/securekv.service"
    lines = unit_lines(unit.read_text())
    assert "LoadCredential=client.key:/etc/securekv/pki/member-2-key.pem" in lines
    assert "LoadCredential=peer.key:/etc/securekv/pki/member-2-key.pem" in lines
    installed = yaml.safe_load((root / "etc/securekv/securekv.yaml").read_text())
    assert installed["client-transport-security"]["key-file"] == "/run/credentials/securekv.service/client.key"
    assert installed["peer-transport-security"]["key-file"] == "/run/credentials/securekv.service/peer.key"
    assert installed["client-transport-security"]["cert-file"] == "/etc/securekv/pki/member-2.pem"
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_percent_and_dollar_in_paths_are_escaped() -> None:
    text = render_unit(UnitOptions(exec_start=("/opt/sk%v/bin/securekv", "--x=$HOME"), writable_paths=("/srv/100%",)))
    assert "ExecStart=/opt/sk%%v/bin/securekv --x=$$HOME serve" in text
    assert "ReadWritePaths=/srv/100%%" in text


BAD = [
    ("unknown key", ["--config", "{bad_config}"], "unknown top-level key 'listen-client-url'"),
    ("missing file", ["--config", "{tmp}/nope.yaml"], "cannot read config file"),
    ("bad user", ["--config", SINGLE, "--user", "Root!"], "--user 'Root!' is not a valid system user name"),
    ("root user", ["--config", SINGLE, "--user", "root"], "is not a valid system user name"),
    ("relative exec", ["--config", SINGLE, "--exec", "securekv"], "must be an absolute path"),
    ("exec in home", ["--config", SINGLE, "--exec", "/root/.local/bin/securekv"], "ProtectHome=/PrivateTmp= hide"),
    ("no keys to load", ["--config", "{auto_tls_config}", "--load-credentials"], "--load-credentials needs a key-file"),
    ("port twice", ["--config", "{dup_config}"], "port 2379 is used twice: listen-client-urls and listen-metrics-urls both bind"),
    ("yaml syntax", ["--config", "{broken_config}"], "broken.yaml: not valid YAML at line 2"),
    ("not a config", ["--config", str(CONFIGS / "securekv.env")], "the config must be a YAML mapping"),
    ("empty exec", ["--config", SINGLE, "--exec", ""], "ExecStart needs a program"),
]


@pytest.mark.parametrize("label, args, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path: Path, cli, label: str, args: list[str], message: str) -> None:
    data = yaml.safe_load(Path(SINGLE).read_text())
    bad = dict(data, **{"listen-client-url": "https://10.0.0.11:2379"})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    auto = dict(data)
    auto["client-transport-security"] = {"auto-tls": True, "client-cert-auth": True,
                                         "trusted-ca-file": "/etc/securekv/pki/ca.pem"}
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(auto))
    root = tmp_path / "root"
    (root / "etc/securekv").mkdir(parents=True)
    (root / "etc/securekv/securekv.yaml").write_text("previous: content\n")
    before = snapshot(root)
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump(dict(data, **{"listen-metrics-urls": "https://127.0.0.1:2379"})))
    (tmp_path / "broken.yaml").write_text("name: a\n  bad: [\n")
    subst = {"bad_config": str(tmp_path / "bad.yaml"), "tmp": str(tmp_path), "auto_tls_config": str(tmp_path / "auto.yaml"),
             "dup_config": str(tmp_path / "dup.yaml"), "broken_config": str(tmp_path / "broken.yaml")}
    argv = [a.format(**subst) for a in args]
    if "--exec" not in argv:
        argv += ["--exec", EXEC]
    result = cli("systemd", *argv, "--root", str(root))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert snapshot(root) == before
