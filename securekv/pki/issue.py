"""Issue leaf certificates from a CA directory, the way ``cfssl gencert -profile=P | cfssljson -bare NAME`` does.

Writes ``DIR/NAME.pem`` (leaf, then the CA's intermediates) and ``DIR/NAME-key.pem`` (0600).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

import attrs
from cryptography import x509

from securekv.errors import UsageError
from securekv.pki import keys
from securekv.pki.ca import CA, CA_CONFIG, RESERVED_NAMES, authority_key_id, load_ca, pem, validity
from securekv.pki.cfssl import CSRSpec, Profile, SigningConfig, default_config, load_config, load_csr
from securekv.pki.files import check_targets, write_files
from securekv.pki.names import SANs, build_subject, parse_hosts
from securekv.pki.usages import build_ext_key_usage, build_key_usage
from securekv.pki.verify import utcnow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@attrs.frozen
class IssuedCert:
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    profile: str
    key_description: str
    sans: SANs
    clamped: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def to_json(self) -> dict:
        return {
            "cert": str(self.cert_path),
            "key": str(self.key_path),
            "profile": self.profile,
            "subject": self.certificate.subject.rfc4514_string(),
            "serial": format(self.certificate.serial_number, "x"),
            "sans": self.sans.as_strings(),
            "key_algo": self.key_description,
            "not_before": self.certificate.not_valid_before_utc.isoformat(),
            "not_after": self.not_after.isoformat(),
            "clamped": self.clamped,
            "warnings": list(self.warnings),
        }


def validate_name(name: str) -> str:
    """NAME becomes the file names NAME.pem / NAME-key.pem: no paths, no clash with CA files."""
    if not _NAME.match(name or ""):
        raise UsageError(f"invalid certificate name {name!r}: use letters, digits, '.', '_' or '-' (no slashes)")
    if name in RESERVED_NAMES or name.endswith("-key"):
        raise UsageError(f"invalid certificate name {name!r}: it would clash with the CA's own files")
    return name


def _signing_config(directory: Path, config: SigningConfig | str | os.PathLike | None) -> tuple[SigningConfig, str]:
    if isinstance(config, SigningConfig):
        return config, "signing config"
    if config is not None:
        return load_config(config), str(config)
    path = directory / CA_CONFIG
    if path.exists():
        return load_config(path), str(path)
    return default_config(), "built-in signing config"


def issue_cert(
    dir: str | os.PathLike,
    profile: str,
    name: str,
    *,
    hosts: Iterable[str] | None = None,
    uris: Iterable[str] = (),
    cn: str | None = None,
    csr: CSRSpec | str | os.PathLike | None = None,
    config: SigningConfig | str | os.PathLike | None = None,
    expiry: timedelta | None = None,
    key_algo: str | None = None,
    key_size: int | None = None,
    passphrase: bytes | None = None,
    out_dir: str | os.PathLike | None = None,
    now: datetime | None = None,
    ca: CA | None = None,
) -> IssuedCert:
    """Issue ``NAME`` with ``profile`` from the CA in ``dir``; see the module docstring.

    CN defaults to the CSR's CN, then to NAME (a client cert's CN is its RBAC identity).
    ``hosts`` replaces the CSR's hosts when given. Profiles with "server auth" need a host.
    The ``peer`` profile also names the member: CN = the member name, plus the URI SAN
    ``securekv://member/<name>`` (``securekv.tlspolicy.member_uri``) that the peer port binds to
    the member ID a connection claims (docs/peer.md).
    Everything is validated before any file is written.
    """
    directory = Path(dir)
    target = Path(out_dir) if out_dir is not None else directory
    validate_name(name)
    spec = csr if isinstance(csr, CSRSpec) else (load_csr(csr) if csr is not None else CSRSpec())
    if ca is None:
        ca = load_ca(directory, passphrase=passphrase)
    signing, source = _signing_config(directory, config)
    prof: Profile = signing.profile(profile, source=source)
    if prof.is_ca:
        raise UsageError(f"profile {profile!r} issues CA certificates; use `securekv pki init --intermediate`")
    host_list = list(hosts) if hosts is not None else list(spec.hosts)
    subject_cn = cn or spec.cn or name
    uri_list = list(uris)
    if profile == "peer":
        from securekv.tlspolicy.identity import MEMBER_URI_PREFIX, member_uri

        if not any(u.strip().startswith(MEMBER_URI_PREFIX) for u in [*uri_list, *host_list]):
            uri_list.append(member_uri(subject_cn))
    sans = parse_hosts(host_list, uri_list)
    if prof.server_auth and not (sans.dns or sans.ips):
        raise UsageError(f"profile {profile!r} includes server auth and needs at least one host (--hosts name,ip,...)")
    check_name_constraints(ca, sans)
    key_spec = keys.key_spec(key_algo or spec.key_algo, key_size or spec.key_size)
    subject = build_subject(subject_cn, spec.names)
    if not target.is_dir():
        raise UsageError(f"output directory {target} does not exist")
    check_targets((target / f"{name}.pem", target / f"{name}-key.pem"))
    moment = utcnow(now)
    not_before, not_after, warning = validity(moment, expiry or prof.expiry, ca.cert.not_valid_after_utc, "CA",
                                             ca.cert.not_valid_before_utc)
    key = keys.generate_key(key_spec)
    cert = build_leaf(ca, subject, key.public_key(), sans, prof.usages, not_before, not_after)
    files = [
        (target / f"{name}.pem", pem(cert) + b"".join(pem(c) for c in ca.chain), 0o644),
        (target / f"{name}-key.pem", keys.key_to_pem(key), 0o600),
    ]
    write_files(files)
    return IssuedCert(files[0][0], files[1][0], cert, ca.chain, profile, keys.describe_key(key), sans,
                      warning is not None, (warning,) if warning else ())


def build_leaf(
    ca: CA,
    subject: x509.Name,
    public_key: keys.PublicKey,
    sans: SANs,
    usages: tuple[str, ...],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """Sign a leaf: CA:FALSE (critical), KeyUsage (critical), EKU, SANs, SKI/AKI."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_id(ca.cert), critical=False)
    )
    ku = build_key_usage(usages)
    if ku is not None:
        builder = builder.add_extension(ku, critical=True)
    eku = build_ext_key_usage(usages)
    if eku is not None:
        builder = builder.add_extension(eku, critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans.general_names()), critical=len(subject) == 0)
    return builder.sign(ca.key, keys.signing_hash(ca.key))


def check_name_constraints(ca: CA, sans: SANs) -> None:
    """Refuse SANs that a name-constrained CA in the chain does not permit (clients would too)."""
    for cert in ca.chain or (ca.cert,):
        try:
            nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        permitted = nc.permitted_subtrees or []
        dns_ok = [str(n.value).lower().lstrip(".") for n in permitted if isinstance(n, x509.DNSName)]
        nets = [n.value for n in permitted if isinstance(n, x509.IPAddress)]
        for name in sans.dns:
            bare = name[2:] if name.startswith("*.") else name
            if dns_ok and not any(bare == d or bare.endswith("." + d) for d in dns_ok):
                raise UsageError(f"host {name!r} is outside the CA's name constraints (permitted DNS: {', '.join(dns_ok)})")
        for ip in sans.ips:
            if nets and not any(ip.version == n.version and ip in n for n in nets):
                raise UsageError(f"host {ip} is outside the CA's name constraints (permitted IP: {', '.join(map(str, nets))})")
