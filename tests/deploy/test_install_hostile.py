"""Issue 12, rendered files: hostile values never reach a unit, a config or a firewall rule.

A data-dir with a newline could add ``ExecStartPre=+...`` (root, outside the sandbox); a space
could make ``ReadWritePaths=`` cover ``/``; ``..`` and symlinks point paths elsewhere than they
say; a symlinked ``--root`` would make a staged install overwrite the build machine's files.
Each is refused with one line, exit status 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy_helpers import CONFIGS, EXEC, run_securekv, snapshot
from securekv.deploy.values import systemd_word
from securekv.errors import UsageError

SINGLE = CONFIGS / "single-member.yaml"
CLUSTER = CONFIGS / "cluster-member-1.yaml"


def _set(data: dict, key: str, value) -> None:
    if "." in key:
        section, sub = key.split(".", 1)
        data[section] = dict(data.get(section) or {}, **{sub: value})
    else:
        data[key] = value


HOSTILE = [
    ("data-dir newline", SINGLE, "data-dir", "/var/lib/x\nExecStartPre=+/bin/sh -c id", "must not contain whitespace"),
    ("data-dir space", SINGLE, "data-dir", "/srv/data /", "must not contain whitespace"),
    ("data-dir tab", SINGLE, "data-dir", "/srv/da\tta", "must not contain whitespace"),
    ("data-dir dotdot", SINGLE, "data-dir", "/var/lib/securekv/../../../etc", "normalised absolute path"),
    ("data-dir root", SINGLE, "data-dir", "/", "must not be the root directory"),
    ("data-dir control", SINGLE, "data-dir", "/srv/a\x1bb", "control character (U+001B)"),
    ("data-dir quote", SINGLE, "data-dir", '/srv/a"b', "must not contain quotes or backslashes"),
    ("wal-dir newline", SINGLE, "wal-dir", "/srv/wal\n[Service]", "must not contain whitespace"),
    ("backup-dir space", SINGLE, "backup-dir", "/srv/backups /", "must not contain whitespace"),
    ("backup-dir relative", SINGLE, "backup-dir", "backups", "must be an absolute path"),
    ("key-file newline", SINGLE, "client-transport-security.key-file", "/etc/k.pem\nExecStartPre=+/x",
     "must not contain whitespace"),
    ("key-file relative", SINGLE, "client-transport-security.key-file", "etc/k.pem", "must be an absolute path"),
    ("name newline", SINGLE, "name", "m1\nExecStartPre=+/x", "name must be 1-128 letters"),
    ("name space", SINGLE, "name", "m 1", "name must be 1-128 letters"),
    ("token newline", CLUSTER, "initial-cluster-token", "t\nx", "must not contain whitespace"),
    ("url newline", SINGLE, "advertise-client-urls", "https://10.0.0.11:2379\nExecStartPre=+/x",
     "must not contain whitespace"),
    ("url bad host", SINGLE, "advertise-client-urls", "https://exa_mple..com:2379", "malformed host"),
    ("cluster name", CLUSTER, "initial-cluster",
     "member 1=https://10.0.0.11:2380,member-2=https://10.0.0.12:2380", "initial-cluster member name"),
    ("allowed-cn newline", CLUSTER, "peer-transport-security.allowed-cn", "m1\nm2", "must not contain whitespace"),
    ("allowed-hostname", CLUSTER, "peer-transport-security.allowed-hostname", "a b", "must not contain whitespace"),
    ("skip client certs", SINGLE, "insecure-skip-client-cert-auth", True, "is refused by securekv install"),
    ("skip peer certs", CLUSTER, "peer-insecure-skip-client-cert-auth", True, "is refused by securekv install"),
    ("peer auto-tls", CLUSTER, "peer-transport-security.auto-tls", True, "auto-tls is refused"),
]


@pytest.mark.parametrize("label, source, key, value, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_config_values_are_refused_and_nothing_written(tmp_path: Path, cli, label, source, key, value,
                                                               message) -> None:
    data = yaml.safe_load(source.read_text())
    _set(data, key, value)
    if key == "peer-transport-security.auto-tls":
        for k in ("cert-file", "key-file"):
            data["peer-transport-security"].pop(k)
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump(data))
    root = tmp_path / "root"
    (root / "etc/securekv").mkdir(parents=True)
    (root / "etc/securekv/securekv.yaml").write_text("previous: content\n")
    before = snapshot(root)
    result = cli("systemd", "--config", str(config), "--root", str(root), "--exec", EXEC)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert snapshot(root) == before


def test_newline_in_data_dir_with_the_real_command(tmp_path: Path) -> None:
    data = yaml.safe_load(SINGLE.read_text())
    data["data-dir"] = "/var/lib/securekv/x\nExecStartPre=+/bin/touch /tmp/owned"
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump(data))
    root = tmp_path / "root"
    root.mkdir()
    proc = run_securekv("install", "systemd", "--config", str(config), "--root", str(root), "--exec", EXEC)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: ") and "data-dir must not contain whitespace" in proc.stderr
    assert list(root.rglob("*")) == []


@pytest.mark.parametrize("exec_arg", ["/usr/bin/python3\nExecStartPre=+/bin/sh", "/usr/bin/python3 -m\tsecurekv",
                                      "/usr/bin/python3 '-m' securekv", "/usr/bin/env securekv;id"])
def test_hostile_exec_is_refused(tmp_path: Path, cli, exec_arg: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = cli("systemd", "--config", str(SINGLE), "--root", str(root), "--exec", exec_arg)
    assert result.exit_code == 2, result.output
    assert list(root.rglob("*")) == []


def test_root_with_a_symlink_leaving_it_is_refused(tmp_path: Path, cli) -> None:
    outside = tmp_path / "outside-etc"
    (outside / "systemd/system").mkdir(parents=True)
    (outside / "systemd/system/securekv.service").write_text("the build machine's own unit\n")
    before = snapshot(outside)
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to(outside)
    result = cli("systemd", "--config", str(SINGLE), "--root", str(root), "--exec", EXEC)
    assert result.exit_code == 2, result.output
    assert "is a symlink to" in result.output and "outside --root" in result.output
    assert snapshot(outside) == before
    # the target file itself a symlink out of the root
    root2 = tmp_path / "root2"
    (root2 / "etc/systemd/system").mkdir(parents=True)
    (root2 / "etc/systemd/system/securekv.service").symlink_to(outside / "systemd/system/securekv.service")
    result = cli("systemd", "--config", str(SINGLE), "--root", str(root2), "--exec", EXEC)
    assert result.exit_code == 2 and "outside --root" in result.output, result.output
    assert snapshot(outside) == before
    assert not (root2 / "etc/securekv").exists()
    # a symlink that stays inside the root is followed
    root3 = tmp_path / "root3"
    (root3 / "usr/etc").mkdir(parents=True)
    (root3 / "etc").symlink_to("usr/etc")
    result = cli("systemd", "--config", str(SINGLE), "--root", str(root3), "--exec", EXEC)
    assert result.exit_code == 0, result.output
    assert (root3 / "usr/etc/systemd/system/securekv.service").is_file()


def test_data_dir_symlink_leaving_the_root_is_refused(tmp_path: Path, cli) -> None:
    data = yaml.safe_load(SINGLE.read_text())
    data["data-dir"] = "/srv/securekv"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    root = tmp_path / "root"
    (root / "srv").mkdir(parents=True)
    (root / "srv/securekv").symlink_to("/")  # ReadWritePaths= would cover the whole system
    before = snapshot(root)
    result = cli("systemd", "--config", str(config), "--root", str(root), "--exec", EXEC)
    assert result.exit_code == 2 and "outside --root" in result.output, result.output
    assert snapshot(root) == before


def test_firewall_inputs_are_addresses_only(tmp_path: Path, cli) -> None:
    for peers, clients in [("10.0.0.1\n-A INPUT -j ACCEPT", "10.0.0.0/24"), ("10.0.0.1", "10.0.0.0/24 0.0.0.0/0"),
                           ("10.0.0.1;reboot", "10.0.0.0/24")]:
        result = cli("firewall", "--backend", "nftables", "--peers", peers, "--clients", clients,
                     "--root", str(tmp_path / "fw"))
        assert result.exit_code == 2, result.output
        assert not (tmp_path / "fw").exists()


@pytest.mark.parametrize("value, exec_line, word", [
    ("/srv/data", False, "/srv/data"),
    ("/srv/100%", False, "/srv/100%%"),
    ("--x=$HOME", True, "--x=$$HOME"),
    ("--x=$HOME", False, "--x=$HOME"),
    ("has space", False, '"has space"'),
    ('q"uote\\', True, '"q\\"uote\\\\"'),
])
def test_systemd_word_quotes_per_systemd(value: str, exec_line: bool, word: str) -> None:
    assert systemd_word(value, exec_line=exec_line) == word


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\x7fb", "a\u2028b"])
def test_systemd_word_refuses_what_cannot_be_written(value: str) -> None:
    with pytest.raises(UsageError):
        systemd_word(value)
