"""`securekv install systemd` without --root: the live path writes the files, creates the system
user with systemd-sysusers and the data directories (0700, owned by that user).

It runs for real, in a private mount namespace whose /etc is a copy and whose /var/lib is an
empty tmpfs, so the machine's own users and directories are never touched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_helpers import CONFIGS, EXEC, REPO

SCRIPT = r"""
set -eu
mount -t tmpfs tmpfs "$TMP/etc"
cp -a /etc/. "$TMP/etc/"
mount --bind "$TMP/etc" /etc
mount -t tmpfs tmpfs /var/lib
install() { PYTHONPATH="$REPO" "$PYTHON" -m securekv install systemd --config "$CONFIG" --exec "$EXEC" --user skvtest; }
install > "$TMP/first.out"
install > "$TMP/second.out"
getent passwd skvtest | cut -d: -f6,7
getent group skvtest | cut -d: -f1
stat -c '%n %U:%G %a' /var/lib/securekv /var/lib/securekv-wal
stat -c '%n %U:%G %a' /etc/systemd/system/securekv.service /etc/securekv/securekv.yaml /etc/sysusers.d/securekv.conf
grep -c '^skvtest:' /etc/passwd
"""


@pytest.mark.skipif(sys.platform != "linux", reason="mount namespaces")
def test_live_install_creates_user_and_directories(tmp_path: Path) -> None:
    data = yaml.safe_load((CONFIGS / "single-member.yaml").read_text())
    data["wal-dir"] = "/var/lib/securekv-wal"  # outside the StateDirectory: created by install too
    config = tmp_path / "member.yaml"
    config.write_text(yaml.safe_dump(data))
    (tmp_path / "etc").mkdir()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMP": str(tmp_path), "REPO": str(REPO), "PYTHON": sys.executable,
           "CONFIG": str(config), "EXEC": EXEC}
    host_passwd = Path("/etc/passwd").read_bytes()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", SCRIPT],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "/var/lib/securekv:/usr/sbin/nologin",
        "skvtest",
        "/var/lib/securekv skvtest:skvtest 700",
        "/var/lib/securekv-wal skvtest:skvtest 700",
        "/etc/systemd/system/securekv.service root:root 644",
        "/etc/securekv/securekv.yaml root:root 644",
        "/etc/sysusers.d/securekv.conf root:root 644",
        "1",  # the second run created no second user
    ]
    first = (tmp_path / "first.out").read_text()
    assert "wrote /etc/systemd/system/securekv.service" in first
    assert first.endswith("next: systemctl enable --now securekv.service\n")
    assert (tmp_path / "second.out").read_text() == first
    assert Path("/etc/passwd").read_bytes() == host_passwd  # the machine's own users untouched
