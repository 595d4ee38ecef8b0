"""``pki check --bundle``: the certificates of member bundles, reported like ``pki check --dir``.

Why a check of its own: a plan's bundles are where a cluster's certificates live until they are
installed, and the operator who holds them wants one table of what expires when across the
cluster, with the same ``--warn`` threshold and output as a PKI directory's check. Each
certificate gets the directory check's certificate checks (``securekv.pki.check.check_cert``:
chains to the bundle's CA, valid now, not within ``--warn`` of its end, covers ``--hosts``) and
each key must match its certificate; then the bundle as a whole must pass what ``install
bundle`` verifies (``securekv.cluster.bundle.verify``: config, unit, firewall, peer identity), so
a bundle that checks clean is one that installs.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

from securekv.errors import UsageError
from securekv.cluster.bundle import (BundleError, PEM_FIELDS, bundle_certs, bundle_key, read_bundle, verify)
from securekv.pki import keys
from securekv.pki.check import ERROR, CheckReport, Problem, check_cert, check_hosts
from securekv.pki.verify import utcnow

SUFFIX = ".bundle"


def bundle_files(path: str | os.PathLike) -> list[Path]:
    """``path`` itself, or every ``*.bundle`` in it when it is a directory (a plan's ``--out``)."""
    target = Path(path)
    if target.is_dir():
        found = sorted(target.glob(f"*{SUFFIX}"))
        if not found:
            raise UsageError(f"no *{SUFFIX} files in {target}")
        return found
    if not target.exists():
        raise UsageError(f"bundle {target} does not exist")
    return [target]


def check_bundles(
    path: str | os.PathLike,
    *,
    passphrase: bytes | None = None,
    warn: timedelta = timedelta(days=30),
    hosts: Iterable[str] = (),
    now: datetime | None = None,
) -> CheckReport:
    """Check one bundle, or every bundle of a plan's directory, into one report whose items are
    named ``<bundle file>:<field>`` (``n1.bundle:server-cert``). Errors make ``ok`` false."""
    host_list = check_hosts(hosts)
    moment = utcnow(now)
    checked: list[str] = []
    problems: list[Problem] = []
    for file in bundle_files(path):
        _check_one(file, passphrase, warn, host_list, moment, checked, problems)
    return CheckReport(Path(path), tuple(checked), tuple(problems), kind="bundle")


def _check_one(file: Path, passphrase: bytes | None, warn: timedelta, hosts: list[str], moment: datetime,
               checked: list[str], problems: list[Problem]) -> None:
    checked.append(file.name)
    try:
        bundle = read_bundle(file, passphrase)  # digest, seal, format
    except BundleError as exc:
        problems.append(Problem(file.name, ERROR, str(exc)))
        return
    before = len(problems)

    def add(field: str, severity: str, message: str) -> None:
        problems.append(Problem(f"{file.name}:{field}", severity, message))

    checked.extend(f"{file.name}:{field}" for field in PEM_FIELDS)
    try:
        anchors = bundle_certs(bundle, "ca")
    except BundleError as exc:
        add("ca", ERROR, str(exc))
        return
    for field in ("ca", "server-cert", "peer-cert"):
        try:
            chain = bundle_certs(bundle, field)
        except BundleError as exc:
            add(field, ERROR, str(exc))
            continue
        for severity, message in check_cert(chain, anchors[:1], "the bundle's ca", moment=moment, warn=warn,
                                            hosts=hosts if field == "server-cert" else ()):
            add(field, severity, message)
        if field == "ca":
            continue
        key_field = field.replace("-cert", "-key")
        try:
            if not keys.same_public_key(bundle_key(bundle, key_field), chain[0].public_key()):
                add(key_field, ERROR, f"key does not match certificate {field}")
        except BundleError as exc:
            add(key_field, ERROR, str(exc))
    if any(p.severity == ERROR for p in problems[before:]):
        return  # the whole-bundle verification would stop at the same fault
    try:
        verify(bundle, now=moment)
    except BundleError as exc:
        problems.append(Problem(file.name, ERROR, f"install bundle would refuse it: {exc}"))


__all__ = ["bundle_files", "check_bundles"]
