"""`securekv install` never leaves a half-written file: a write failing midway changes nothing.

The failure is injected deterministically (the second file's write gets ENOSPC) through the
`os` module that securekv.fsutil uses, so every earlier file was already staged when it hits.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import securekv.fsutil
from deploy_helpers import CONFIGS, EXEC, snapshot

SINGLE = str(CONFIGS / "single-member.yaml")


class FullDisk:
    """`os` as fsutil sees it, except that the write of the ``fail_at``-th file fails."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.opened = fail_at, 0

    def __getattr__(self, name: str):
        return getattr(os, name)

    def open(self, *args, **kwargs):
        self.opened += 1
        return os.open(*args, **kwargs)

    def write(self, fd: int, data) -> int:
        if self.opened >= self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_failed_write_into_a_fresh_root_leaves_no_trace(tmp_path: Path, cli, monkeypatch, fail_at: int) -> None:
    monkeypatch.setattr(securekv.fsutil, "os", FullDisk(fail_at))
    root = tmp_path / "root"
    result = cli("systemd", "--config", SINGLE, "--root", str(root), "--exec", EXEC)
    assert result.exit_code == 1, result.output
    assert result.output == "Error: cannot write: [Errno 28] No space left on device\n"
    assert not root.exists()  # not even the directories it had created
    assert list(tmp_path.iterdir()) == []


def test_failed_reinstall_keeps_the_previous_files_whole(tmp_path: Path, cli, monkeypatch) -> None:
    root = tmp_path / "root"
    assert cli("systemd", "--config", SINGLE, "--root", str(root), "--exec", EXEC).exit_code == 0
    before = snapshot(root)
    monkeypatch.setattr(securekv.fsutil, "os", FullDisk(3))  # unit and config staged, sysusers fails
    result = cli("systemd", "--config", str(CONFIGS / "cluster-member-2.yaml"), "--root", str(root), "--exec", EXEC,
                 "--user", "kv")
    assert result.exit_code == 1, result.output
    assert snapshot(root) == before  # old contents, and no temp file left behind


def test_failed_firewall_write_leaves_no_trace(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setattr(securekv.fsutil, "os", FullDisk(2))  # securekv.rules staged, securekv6.rules fails
    root = tmp_path / "root"
    root.mkdir()
    result = cli("firewall", "--backend", "iptables", "--peers", "10.0.0.11", "--clients", "10.0.0.0/24", "--root", str(root))
    assert result.exit_code == 1, result.output
    assert snapshot(root) == {}
