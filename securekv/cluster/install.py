"""Install a verified member bundle: write what differs, own the keys, say so when nothing does.

The order is what keeps "a refused install writes nothing" and "a second install changes
nothing" true: the bundle is read and verified in full (``securekv.cluster.bundle.verify``),
the firewall backend and every target path are checked, and only then are the differing files
written, all at once (``securekv.deploy.install.write_files``). On this machine (no ``--root``)
the service user and data directories are created as ``install systemd`` does, and the
certificates and keys are then handed to the service user (keys stay 0600: the member must read
them, nobody else may).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import attrs

from securekv.cluster import renew_timer
from securekv.cluster.bundle import Verified, install_files, pending, read_bundle, verify
from securekv.deploy import firewall as fw
from securekv.deploy import install as deploy
from securekv.deploy.config import STATE_DIR
from securekv.deploy.firewall import RenderedFile
from securekv.errors import UsageError

NO_FIREWALL = "none"


def check_backend(name: str) -> str | None:
    """A firewall backend, or None for ``none`` (no rules)."""
    if name == NO_FIREWALL:
        return None
    if name not in fw.BACKENDS:
        raise UsageError(f"unknown firewall backend {name!r}; choose one of {', '.join(fw.BACKENDS)} or {NO_FIREWALL}")
    return name


@attrs.frozen
class InstallPlan:
    verified: Verified
    files: tuple[RenderedFile, ...]  # every file the bundle installs, the firewall rules included
    rules: tuple[RenderedFile, ...]  # the firewall rules alone
    backend: str | None
    data_dirs: tuple[str, ...]

    @property
    def user(self) -> str:
        return self.verified.bundle.user


def plan_install(path: str, *, backend: str, passphrase: bytes | None = None, member: str | None = None,
                 ca_fingerprint: str | None = None, root: str | None = None,
                 renew_endpoints: str | None = None) -> InstallPlan:
    """Read, verify and render; raises UsageError (BundleError) before anything is written.
    ``renew_endpoints``: ``https://HOST:PORT,...`` for the renewal unit (default: every member)."""
    chosen = check_backend(backend)
    endpoints = renew_timer.check_endpoints(renew_endpoints) if renew_endpoints is not None else ()
    verified = verify(read_bundle(path, passphrase), member=member, expect_fingerprint=ca_fingerprint)
    rules = tuple(fw.render(chosen, verified.spec)) if chosen is not None else ()
    data_dirs = (STATE_DIR, *verified.config.writable_paths())
    deploy.check_data_dirs(data_dirs, root)
    files = install_files(verified, endpoints) + rules
    for f in files:
        deploy.resolve_under_root(root or "/", f.path)  # refuses a symlink that leaves --root
    return InstallPlan(verified, files, rules, chosen, data_dirs)


def service_owner(user: str) -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


@attrs.frozen
class Outcome:
    written: tuple[Path, ...] = ()
    chowned: tuple[Path, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.written or self.chowned)


def would_write(plan: InstallPlan, root: str | None) -> list[Path]:
    """What a run would write now (``--dry-run``)."""
    target = root or "/"
    to_write, _ = pending(plan.files, target, None)
    return [deploy.resolve_under_root(target, f.path) for f in to_write]


def install(plan: InstallPlan, root: str | None) -> Outcome:
    """Put the bundle in place under ``root`` (staged: files only) or on this machine."""
    if root is not None:
        to_write, _ = pending(plan.files, root, None)
        return Outcome(tuple(deploy.write_files(to_write, root)) if to_write else ())
    deploy.require_root()
    owner = service_owner(plan.user)
    to_write, to_chown = pending(plan.files, "/", owner)
    if owner is not None and not to_write and not to_chown and all(os.path.isdir(d) for d in plan.data_dirs):
        return Outcome()
    written = tuple(deploy.write_files(to_write, "/")) if to_write else ()
    deploy.apply_systemd(deploy.Plan(plan.files), plan.user, plan.data_dirs)  # the user, data dirs, daemon-reload
    owner = service_owner(plan.user)
    if owner is None:
        raise UsageError(f"the service user {plan.user!r} was not created")
    _, to_chown = pending(plan.files, "/", owner)
    for path in to_chown:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)
    return Outcome(written, tuple(to_chown))


def start(plan: InstallPlan) -> list[str]:
    """``--enable --now``: load the firewall rules, then enable and start the member and its
    renewal timer."""
    done = []
    if plan.backend is not None:
        deploy.apply_firewall(plan.backend, plan.verified.spec, plan.rules)
        done.append(f"loaded the {plan.backend} rules: " + "; ".join(fw.describe(plan.verified.spec)))
    deploy.run_systemctl(["daemon-reload"])
    deploy.run_systemctl(["enable", "--now", "securekv.service", renew_timer.TIMER_NAME])
    done.append(f"systemctl enable --now securekv.service {renew_timer.TIMER_NAME}")
    return done
