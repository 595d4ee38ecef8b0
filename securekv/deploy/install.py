"""Plan and carry out ``securekv install``: validate everything, then write all files at once.

The split is deliberate: ``plan_*`` functions are pure (input → list of files and actions) so
``--dry-run``/``--print`` show exactly what a real run would do, and a validation error can
never come after the first byte is written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import attrs

from securekv.deploy import firewall as fw
from securekv.deploy.config import STATE_DIR, load_config_file
from securekv.deploy.systemd import (
    CONFIG_PATH,
    SYSUSERS_PATH,
    UNIT_PATH,
    UnitOptions,
    check_exec_start,
    check_user,
    credential_config,
    render_config,
    render_sysusers,
    render_unit,
)
from securekv.errors import UsageError
from securekv.fsutil import atomic_write_many


@attrs.frozen
class Plan:
    files: tuple[fw.RenderedFile, ...]
    # Human-readable steps a real (non --root) install performs after writing the files.
    actions: tuple[str, ...] = ()


def default_exec_start() -> tuple[str, ...]:
    """The console script next to this interpreter if installed, else ``python -m securekv``."""
    script = Path(sys.executable).parent / "securekv"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "securekv")


def plan_systemd(
    config_file: str,
    user: str = "securekv",
    exec_start: Sequence[str] | None = None,
    load_credentials: bool = False,
) -> Plan:
    user = check_user(user)
    config = load_config_file(config_file)
    argv = check_exec_start(tuple(exec_start) if exec_start is not None else default_exec_start())
    data = dict(config.data)
    credentials: tuple[tuple[str, str], ...] = ()
    if load_credentials:
        if not config.key_files:
            raise UsageError(f"{config_file}: --load-credentials needs a key-file in client- or peer-transport-security")
        data, credentials = credential_config(config)
    unit = render_unit(
        UnitOptions(
            exec_start=argv,
            user=user,
            config_file=CONFIG_PATH,
            writable_paths=config.writable_paths(),
            credentials=credentials,
        )
    )
    files = (
        fw.RenderedFile(UNIT_PATH, unit, 0o644),
        fw.RenderedFile(CONFIG_PATH, render_config(data), 0o644),
        fw.RenderedFile(SYSUSERS_PATH, render_sysusers(user), 0o644),
    )
    dirs = [STATE_DIR, *config.writable_paths()]
    actions = (
        f"create system user and group {user!r} (systemd-sysusers {SYSUSERS_PATH})",
        *[f"create directory {d} (mode 0700, owner {user}:{user})" for d in dirs],
        "systemctl daemon-reload",
    )
    return Plan(files, actions)


def plan_firewall(backend: str, spec: fw.FirewallSpec) -> Plan:
    return Plan(tuple(fw.render(fw.check_backend(backend), spec)))


# --------------------------------------------------------------------------- writing


def under_root(root: str, path: str) -> Path:
    return Path(root) / path.lstrip("/")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_under_root(root: str, path: str) -> Path:
    """Where ``path`` of the target system lands under ``root``, following symlinks that stay
    inside ``root`` and refusing any that leave it (``root/etc -> /etc`` would make a staged
    install overwrite the build machine's own files)."""
    root_real = Path(os.path.realpath(root))
    current = root_real
    for part in Path(path.lstrip("/")).parts:
        candidate = current / part
        if candidate.is_symlink():
            resolved = Path(os.path.realpath(candidate))
            if not _inside(resolved, root_real):
                raise UsageError(f"cannot write {under_root(root, path)}: {candidate} is a symlink to {resolved}, "
                                 f"outside --root {root}")
            current = resolved
        else:
            current = candidate
    return current


def check_data_dirs(paths: Sequence[str], root: str | None) -> None:
    """The unit makes ``paths`` writable and a live install chowns them: none may hide a symlink
    (``data-dir: /srv/data`` with ``/srv/data -> /`` would make ReadWritePaths= cover ``/``)."""
    for path in paths:
        if root is not None:
            resolve_under_root(root, path)
            continue
        probe = Path("/")
        for part in Path(path.lstrip("/")).parts:
            probe = probe / part
            if probe.is_symlink():
                raise UsageError(f"data directory {path}: {probe} is a symlink (to {os.readlink(probe)}); "
                                 "name the real directory")
            if not probe.exists():
                break


def write_files(files: Sequence[fw.RenderedFile], root: str) -> list[Path]:
    """Write every file under ``root`` (DESTDIR convention) all-or-nothing.

    Directories this call creates are removed again if writing fails, so a failed run leaves
    the tree exactly as it found it. Symlinks that lead out of ``root`` are refused before
    anything is written.
    """
    targets = [(resolve_under_root(root, f.path), f.content, f.mode) for f in files]
    for target, _, _ in targets:
        if target.exists() and not target.is_file():
            raise UsageError(f"cannot write {target}: it exists and is not a regular file")
    created: list[Path] = []
    try:
        for target, _, _ in targets:
            missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
            for directory in reversed(missing):
                directory.mkdir(mode=0o755)
                created.append(directory)
        atomic_write_many(targets)
    except BaseException:
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError:
                pass
        raise
    return [t for t, _, _ in targets]


def describe(plan: Plan, root: str | None) -> str:
    lines: list[str] = []
    for f in plan.files:
        where = under_root(root, f.path) if root else Path(f.path)
        lines.append(f"--- would write {where} (mode {f.mode:04o})")
        lines.append(f.content.rstrip("\n"))
    if not root:
        for action in plan.actions:
            lines.append(f"--- would {action}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- applying on a live system


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UsageError(f"{tool} not found: install it, or use --print / --root to only render the rules")
    return path


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> int:
    proc = subprocess.run(argv, input=stdin, text=True, capture_output=True)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise UsageError(f"{' '.join(argv)} failed (exit {proc.returncode}): {detail}")
    return proc.returncode


def apply_firewall(backend: str, spec: fw.FirewallSpec, files: Sequence[fw.RenderedFile]) -> None:
    """Load the rules into the running firewall. Only called without --root/--print."""
    if backend == "nftables":
        _run([_need("nft"), "-f", "/dev/stdin"], files[0].content)
    elif backend == "iptables":
        for tool, f in (("iptables", files[0]), ("ip6tables", files[1])):
            _run([_need(f"{tool}-restore"), "-w", "--noflush"], f.content)
            if _run([_need(tool), "-w", "-C", "INPUT", "-j", fw.CHAIN], check=False) != 0:
                _run([_need(tool), "-w", "-I", "INPUT", "1", "-j", fw.CHAIN])
    elif backend == "firewalld":
        cmd = _need("firewall-cmd")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{fw.POLICY}.xml"
            path.write_text(files[0].content)
            if _run([cmd, "--permanent", f"--info-policy={fw.POLICY}"], check=False) == 0:
                _run([cmd, "--permanent", f"--delete-policy={fw.POLICY}"])
            _run([cmd, "--permanent", f"--new-policy-from-file={path}", f"--name={fw.POLICY}"])
            _run([cmd, "--reload"])
    elif backend == "ufw":
        cmd = _need("ufw")
        for argv in fw.ufw_commands(spec):
            _run([cmd, *argv[1:]])
    else:  # pragma: no cover - check_backend ran first
        raise UsageError(f"unknown firewall backend {backend!r}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("installing on this system needs root; use --root DIR to stage files or --dry-run")


def apply_systemd(plan: Plan, user: str, data_dirs: Sequence[str]) -> None:
    """Create the service account and data directories on this machine (root only)."""
    require_root()
    if shutil.which("systemd-sysusers"):
        _run(["systemd-sysusers", SYSUSERS_PATH])
    else:
        if _run(["getent", "passwd", user], check=False) != 0:
            _run([_need("useradd"), "--system", "--user-group", "--home-dir", STATE_DIR, "--shell", "/usr/sbin/nologin", user])
    import pwd

    entry = pwd.getpwnam(user)
    check_data_dirs(data_dirs, None)
    for directory in data_dirs:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chown(directory, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        os.chmod(directory, 0o700, follow_symlinks=False)
    if shutil.which("systemctl"):
        _run(["systemctl", "daemon-reload"], check=False)


def run_systemctl(args: Sequence[str]) -> None:
    """``systemctl ARGS`` on this machine (``install bundle --enable --now``)."""
    _run([_need("systemctl"), *args])
