"""``pki check``: audit every certificate and key in a directory against its CA."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

import attrs
from cryptography import x509

from securekv.errors import UsageError
from securekv.pki import keys
from securekv.pki.ca import CA_CERT, CA_CHAIN, CA_KEY, CRL_FILE, ROOT_CERT
from securekv.pki.names import cert_sans, parse_ip, sans_cover, validate_dns_name
from securekv.pki.revoke import load_revocations
from securekv.pki.verify import is_ca, load_cert_chain, utcnow, verify_chain

ERROR = "error"
WARNING = "warning"
#: A CRL whose nextUpdate is this close is reported (servers keep enforcing an expired CRL, but
#: certificates revoked after it are not refused until a fresh one is published).
CRL_WARN = timedelta(hours=48)


@attrs.frozen
class Problem:
    file: str
    severity: str
    message: str


@attrs.frozen
class CheckReport:
    dir: Path  # what was checked: a PKI directory, or (kind "bundle") a bundle file or a plan's directory
    checked: tuple[str, ...]
    problems: tuple[Problem, ...]
    kind: str = "dir"

    @property
    def ok(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)

    def to_json(self) -> dict:
        return {self.kind: str(self.dir), "ok": self.ok, "checked": list(self.checked),
                "problems": [attrs.asdict(p) for p in self.problems]}


def check_dir(
    dir: str | os.PathLike,
    *,
    warn: timedelta = timedelta(days=30),
    hosts: Iterable[str] = (),
    now: datetime | None = None,
) -> CheckReport:
    """Check every ``*.pem`` certificate in ``dir`` (see docs/pki.md for the list of checks).

    ``hosts`` must be covered by the SANs of every certificate that has serverAuth.
    Errors make ``ok`` false; warnings (expiring within ``warn``) do not.
    """
    directory = Path(dir)
    if not directory.is_dir():
        raise UsageError(f"directory {directory} does not exist")
    host_list = check_hosts(hosts)
    ca_path = directory / CA_CERT
    if not ca_path.exists():
        raise UsageError(f"no CA certificate {ca_path}: nothing to check against")
    moment = utcnow(now)
    problems: list[Problem] = []
    checked: list[str] = []
    anchor_path = directory / ROOT_CERT if (directory / ROOT_CERT).exists() else ca_path
    anchors = load_cert_chain(anchor_path)
    ca_cert = load_cert_chain(ca_path)[0]
    revoked = {r.serial: r for r in load_revocations(directory)}

    def add(path: Path, severity: str, message: str) -> None:
        problems.append(Problem(path.name, severity, message))

    cert_files = sorted(p for p in directory.glob("*.pem") if not p.name.endswith("-key.pem")
                        and p.name not in (CRL_FILE, CA_CHAIN, ROOT_CERT))
    for path in cert_files:
        checked.append(path.name)
        try:
            chain = load_cert_chain(path)
        except UsageError as exc:
            add(path, ERROR, str(exc))
            continue
        leaf = chain[0]
        if path.name == CA_CERT and not is_ca(leaf):
            add(path, ERROR, "is not a CA certificate (basicConstraints CA:FALSE); nothing can chain to it")
        if path.name != CA_CERT and ca_cert not in chain[1:]:
            chain = chain + [ca_cert]
        for severity, message in check_cert(chain, anchors, anchor_path.name, moment=moment, warn=warn,
                                            hosts=host_list):
            add(path, severity, message)
        if leaf.serial_number in revoked:
            add(path, ERROR, f"revoked ({revoked[leaf.serial_number].reason})")
        key_path = directory / (CA_KEY if path.name == CA_CERT else f"{path.stem}-key.pem")
        if not key_path.exists():
            if path.name != CA_CERT:
                add(path, ERROR, f"no key file {key_path.name}")
        else:
            checked.append(key_path.name)
            mode = stat.S_IMODE(key_path.stat().st_mode)
            if mode & 0o077:
                add(key_path, ERROR, f"key readable by group/other (mode {mode:04o}); run chmod 600 {key_path}")
            try:
                key = keys.load_private_key(key_path)
                if not keys.same_public_key(key, leaf.public_key()):
                    add(key_path, ERROR, f"key does not match certificate {path.name}")
            except UsageError as exc:
                if "passphrase-protected" not in str(exc):
                    add(key_path, ERROR, str(exc))
    crl_path = directory / CRL_FILE
    if crl_path.exists():
        checked.append(crl_path.name)
        for severity, message in _check_crl(crl_path, anchors + [ca_cert], set(revoked), moment):
            add(crl_path, severity, message)
    return CheckReport(directory, tuple(checked), tuple(problems))


def check_hosts(hosts: Iterable[str]) -> list[str]:
    """``--hosts`` as a list, each a valid IP literal or DNS name (UsageError otherwise)."""
    host_list = [h.strip() for h in hosts]
    for host in host_list:
        if not host:
            raise UsageError("malformed host '': empty host name (check for a stray comma)")
        if parse_ip(host) is None:
            validate_dns_name(host)
    return host_list


def check_cert(chain: list[x509.Certificate], anchors: list[x509.Certificate], anchor_name: str, *,
               moment: datetime, warn: timedelta, hosts: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The checks every certificate gets, wherever it is kept (a PKI directory, a member bundle):
    it chains to ``anchors`` and is valid now, it is not within ``warn`` of its end, and a server
    certificate covers ``hosts``. Returns (severity, message) pairs."""
    out: list[tuple[str, str]] = []
    leaf = chain[0]
    try:
        verify_chain(chain, anchors, now=moment)
    except UsageError as exc:
        out.append((ERROR, f"does not chain to {anchor_name}: {exc}"))
    if moment <= leaf.not_valid_after_utc and leaf.not_valid_after_utc - moment <= warn:
        left = leaf.not_valid_after_utc - moment
        out.append((WARNING, f"expires in {_short(left)} ({leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ})"))
    host_list = list(hosts)
    if host_list and not is_ca(leaf) and _server_auth(leaf):
        sans = cert_sans(leaf)
        missing = [h for h in host_list if not sans_cover(sans, h)]
        if missing:
            out.append((ERROR, f"SANs ({', '.join(sans.as_strings()) or 'none'}) do not cover {', '.join(missing)}"))
    return out


def _check_crl(path: Path, issuers: list[x509.Certificate], recorded: set[int],
               moment: datetime) -> list[tuple[str, str]]:
    """What a server loading this CRL would refuse, and how soon it expires."""
    from securekv.tlspolicy.crl import build_revocation_list, split_crl_file

    try:
        crls = split_crl_file(path.read_bytes(), path.name)
        revocations = build_revocation_list(crls, issuers, path.name, str(path))
    except UsageError as exc:
        return [(ERROR, f"servers would refuse to start with it: {exc}")]
    out: list[tuple[str, str]] = []
    nxt = revocations.next_update
    if nxt is not None and moment > nxt:
        out.append((ERROR, f"expired {_short(moment - nxt)} ago (nextUpdate {nxt:%Y-%m-%d %H:%M:%SZ}); servers "
                           "keep enforcing it but log an error every minute; run `securekv pki crl`"))
    elif nxt is not None and nxt - moment <= CRL_WARN:
        out.append((WARNING, f"expires in {_short(nxt - moment)} (nextUpdate {nxt:%Y-%m-%d %H:%M:%SZ}); "
                             "run `securekv pki crl` before then"))
    listed = {serial for _issuer, serial in revocations.revoked}
    missing = recorded - listed
    if missing:
        out.append((WARNING, f"{len(missing)} revoked certificate(s) in revoked.json are not in the CRL yet; "
                             "run `securekv pki crl`"))
    return out


def _server_auth(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in list(eku)


def format_report(report: CheckReport) -> str:
    if not report.problems:
        return f"OK: {len(report.checked)} {_noun(report)} in {report.dir} checked, no problems"
    width = max(len("FILE"), *(len(p.file) for p in report.problems))
    lines = [f"{'FILE':<{width}}  {'SEVERITY':<8}  PROBLEM"]
    lines += [f"{p.file:<{width}}  {p.severity:<8}  {p.message}" for p in report.problems]
    errors = sum(p.severity == ERROR for p in report.problems)
    lines.append(f"{errors} error(s), {len(report.problems) - errors} warning(s) in {len(report.checked)} "
                 f"{_noun(report)}")
    return "\n".join(lines)


def _noun(report: CheckReport) -> str:
    return "files" if report.kind == "dir" else "items"


def _short(left: timedelta) -> str:
    days, rest = divmod(int(left.total_seconds()), 86400)
    return f"{days}d{rest // 3600}h" if days else f"{rest // 3600}h{rest % 3600 // 60}m"
