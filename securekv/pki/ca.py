"""Certificate authorities on disk: create a root or intermediate CA, and load one to sign with.

Directory layout (cfssljson ``-bare`` names)::

    ca.pem          the CA certificate
    ca-key.pem      its private key (0600; PKCS#8-encrypted with a passphrase if asked)
    ca-config.json  cfssl signing config: profiles server, peer, client, etcd
    ca-chain.pem    intermediates only: this CA then its parent intermediates (appended to leaves)
    root-ca.pem     intermediates only: the root that clients trust
"""

from __future__ import annotations

import ipaddress
import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securekv.errors import UsageError
from securekv.fsutil import fsync_dir
from securekv.pki import keys
from securekv.pki.cfssl import DEFAULT_CA_EXPIRY, CSRSpec, default_config_json, load_csr
from securekv.pki.files import check_targets, write_files
from securekv.pki.names import build_subject, validate_dns_name
from securekv.pki.verify import is_ca, load_cert_chain, load_certs_pem, utcnow

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_CONFIG = "ca-config.json"
CA_CHAIN = "ca-chain.pem"
ROOT_CERT = "root-ca.pem"
CRL_FILE = "crl.pem"
REVOKED_FILE = "revoked.json"
RESERVED_NAMES = frozenset({"ca", "ca-chain", "root-ca", "crl", "ca-config", "revoked"})

DEFAULT_CA_CN = "securekv CA"
BACKDATE = timedelta(minutes=5)  # as cfssl: tolerate small clock skew between machines


@attrs.frozen
class CA:
    """A loaded CA. ``chain`` is what follows a leaf in its PEM (empty for a root)."""

    dir: Path
    cert: x509.Certificate
    key: keys.PrivateKey | None
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate

    @property
    def is_root(self) -> bool:
        return not self.chain


@attrs.frozen
class CAResult:
    dir: Path
    cert_path: Path
    key_path: Path
    config_path: Path
    certificate: x509.Certificate
    key_description: str
    intermediate: bool
    chain_path: Path | None = None
    root_path: Path | None = None
    encrypted: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def to_json(self) -> dict:
        return {
            "dir": str(self.dir),
            "cert": str(self.cert_path),
            "key": str(self.key_path),
            "config": str(self.config_path),
            "chain": str(self.chain_path) if self.chain_path else None,
            "root": str(self.root_path) if self.root_path else None,
            "subject": self.certificate.subject.rfc4514_string(),
            "serial": format(self.certificate.serial_number, "x"),
            "key_algo": self.key_description,
            "encrypted": self.encrypted,
            "intermediate": self.intermediate,
            "not_before": self.certificate.not_valid_before_utc.isoformat(),
            "not_after": self.not_after.isoformat(),
            "warnings": list(self.warnings),
        }


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _as_csr(csr: CSRSpec | str | os.PathLike | None) -> CSRSpec:
    if csr is None:
        return CSRSpec()
    if isinstance(csr, CSRSpec):
        return csr
    return load_csr(csr)


def _check_can_write(directory: Path, names: Iterable[str], force: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a directory")
    if not force:
        existing = [n for n in names if (directory / n).exists()]
        if existing:
            raise UsageError(f"{directory} already holds a CA ({', '.join(existing)}); pass --force to replace it")


def _ensure_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        fsync_dir(directory.parent)


def ca_extensions(
    builder: x509.CertificateBuilder,
    public_key: keys.PublicKey,
    issuer_cert: x509.Certificate | None,
    pathlen: int | None,
    constraints: x509.NameConstraints | None,
) -> x509.CertificateBuilder:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    builder = builder.add_extension(ski, critical=False)
    if issuer_cert is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    else:
        aki = authority_key_id(issuer_cert)
    builder = builder.add_extension(aki, critical=False)
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    return builder


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())


def validity(
    now: datetime, expiry: timedelta, ceiling: datetime | None, what: str, floor: datetime | None = None
) -> tuple[datetime, datetime, str | None]:
    """NotBefore/NotAfter for ``expiry`` from ``now``; clamp to ``ceiling`` with a warning.

    Policy (docs/pki.md): a certificate never outlives its issuer. A request past the issuer's
    NotAfter is clamped to it and a warning is returned; an expired issuer is refused.
    """
    not_before = now - BACKDATE
    not_after = not_before + expiry
    if ceiling is None:
        return not_before, not_after, None
    if floor is not None and now < floor:
        raise UsageError(f"the {what} is not valid until {floor:%Y-%m-%d %H:%M:%SZ}; check the system clock")
    if ceiling <= now:
        raise UsageError(f"the {what} expired on {ceiling:%Y-%m-%d %H:%M:%SZ}; it cannot sign anything")
    if not_after > ceiling:
        return not_before, ceiling, (
            f"requested expiry ends {not_after:%Y-%m-%d %H:%M:%SZ}, after the {what}'s NotAfter; "
            f"clamped to {ceiling:%Y-%m-%d %H:%M:%SZ}"
        )
    return not_before, not_after, None


def name_constraints(permit_dns: Iterable[str], permit_ip: Iterable[str]) -> x509.NameConstraints | None:
    subtrees: list[x509.GeneralName] = []
    for raw in permit_dns:
        name = raw.strip()
        if "*" in name:
            raise UsageError(f"malformed --permit-dns {raw!r}: a name constraint is a domain suffix (example.com), not a wildcard")
        validate_dns_name(name.lstrip("."))
        subtrees.append(x509.DNSName(name.lower()))
    for raw in permit_ip:
        try:
            network = ipaddress.ip_network(raw.strip(), strict=True)
        except ValueError:
            raise UsageError(f"malformed --permit-ip {raw!r}: expected a network like 10.0.0.0/8 or fd00::/8") from None
        subtrees.append(x509.IPAddress(network))
    if not subtrees:
        return None
    return x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None)


def init_ca(
    dir: str | os.PathLike,
    *,
    cn: str | None = None,
    csr: CSRSpec | str | os.PathLike | None = None,
    key_algo: str | None = None,
    key_size: int | None = None,
    expiry: timedelta | None = None,
    pathlen: int | None = None,
    force: bool = False,
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> CAResult:
    """Create a self-signed root CA in ``dir`` (ca.pem, ca-key.pem, ca-config.json).

    Explicit arguments win over the cfssl CSR (``csr``), which wins over the defaults
    (ECDSA P-256, 10 years, CN "securekv CA"). Refuses to replace a CA unless ``force``.
    """
    directory = Path(dir)
    spec = _as_csr(csr)
    _check_can_write(directory, (CA_CERT, CA_KEY), force)
    key_spec = keys.key_spec(key_algo or spec.key_algo, key_size or spec.key_size)
    lifetime = expiry or spec.ca_expiry or DEFAULT_CA_EXPIRY
    subject = build_subject(cn or spec.cn or DEFAULT_CA_CN, spec.names)
    if pathlen is None:
        pathlen = spec.ca_pathlen
    moment = utcnow(now)
    not_before, not_after, _ = validity(moment, lifetime, None, "CA")
    key = keys.generate_key(key_spec)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    builder = ca_extensions(builder, key.public_key(), None, pathlen, None)
    cert = builder.sign(key, keys.signing_hash(key))
    files = [
        (directory / CA_CERT, pem(cert), 0o644),
        (directory / CA_KEY, keys.key_to_pem(key, passphrase), 0o600),
    ]
    config_path = directory / CA_CONFIG
    if not config_path.exists():
        files.append((config_path, json.dumps(default_config_json(), indent=2) + "\n", 0o644))
    check_targets(path for path, _, _ in files)
    _ensure_dir(directory)
    write_files(files)
    _remove_stale(directory, (CA_CHAIN, ROOT_CERT))
    return CAResult(directory, directory / CA_CERT, directory / CA_KEY, config_path, cert,
                    keys.describe_key(key), False, encrypted=bool(passphrase))


def init_intermediate(
    dir: str | os.PathLike,
    parent_dir: str | os.PathLike,
    *,
    cn: str | None = None,
    csr: CSRSpec | str | os.PathLike | None = None,
    key_algo: str | None = None,
    key_size: int | None = None,
    expiry: timedelta | None = None,
    pathlen: int | None = 0,
    permit_dns: Iterable[str] = (),
    permit_ip: Iterable[str] = (),
    force: bool = False,
    passphrase: bytes | None = None,
    parent_passphrase: bytes | None = None,
    now: datetime | None = None,
) -> CAResult:
    """Create an intermediate CA in ``dir`` signed by the CA in ``parent_dir`` (kept offline).

    Optionally name-constrained (critical NameConstraints with the permitted DNS suffixes and
    IP networks). Writes ca-chain.pem (appended to every leaf) and root-ca.pem (the anchor).
    """
    directory = Path(dir)
    parent_path = Path(parent_dir)
    if directory.resolve() == parent_path.resolve():
        raise UsageError("--dir and --parent-dir must differ: an intermediate CA needs its own directory")
    spec = _as_csr(csr)
    _check_can_write(directory, (CA_CERT, CA_KEY), force)
    constraints = name_constraints(permit_dns, permit_ip)
    key_spec = keys.key_spec(key_algo or spec.key_algo, key_size or spec.key_size)
    parent = load_ca(parent_path, passphrase=parent_passphrase)
    parent_limit = parent.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    if parent_limit == 0:
        raise UsageError(f"the CA in {parent_path} has pathlen 0; it cannot sign an intermediate CA")
    if pathlen is None:
        pathlen = spec.ca_pathlen if spec.ca_pathlen is not None else 0
    if parent_limit is not None and pathlen >= parent_limit:
        raise UsageError(f"--pathlen {pathlen} is too long: the CA in {parent_path} allows at most {parent_limit - 1} below this one")
    lifetime = expiry or spec.ca_expiry or timedelta(hours=43800)
    moment = utcnow(now)
    not_before, not_after, warning = validity(moment, lifetime, parent.cert.not_valid_after_utc, "parent CA",
                                             parent.cert.not_valid_before_utc)
    subject = build_subject(cn or spec.cn or "securekv intermediate CA", spec.names)
    key = keys.generate_key(key_spec)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    builder = ca_extensions(builder, key.public_key(), parent.cert, pathlen, constraints)
    cert = builder.sign(parent.key, keys.signing_hash(parent.key))
    chain = (cert,) + parent.chain
    files = [
        (directory / CA_CERT, pem(cert), 0o644),
        (directory / CA_KEY, keys.key_to_pem(key, passphrase), 0o600),
        (directory / CA_CHAIN, b"".join(pem(c) for c in chain), 0o644),
        (directory / ROOT_CERT, pem(parent.root), 0o644),
    ]
    config_path = directory / CA_CONFIG
    if not config_path.exists():
        files.append((config_path, json.dumps(default_config_json(), indent=2) + "\n", 0o644))
    check_targets(path for path, _, _ in files)
    _ensure_dir(directory)
    write_files(files)
    return CAResult(directory, directory / CA_CERT, directory / CA_KEY, config_path, cert, keys.describe_key(key),
                    True, directory / CA_CHAIN, directory / ROOT_CERT, bool(passphrase),
                    (warning,) if warning else ())


def _remove_stale(directory: Path, names: Iterable[str]) -> None:
    removed = False
    for name in names:
        try:
            (directory / name).unlink()
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        fsync_dir(directory)


def load_ca(dir: str | os.PathLike, *, passphrase: bytes | None = None, need_key: bool = True) -> CA:
    """Load the CA in ``dir``; check its files belong together. Raises UsageError otherwise."""
    directory = Path(dir)
    if not directory.is_dir():
        raise UsageError(f"CA directory {directory} does not exist (create one with `securekv pki init --dir {directory}`)")
    cert_path = directory / CA_CERT
    if not cert_path.exists():
        raise UsageError(f"no CA certificate {cert_path} (create one with `securekv pki init --dir {directory}`)")
    cert = load_cert_chain(cert_path)[0]
    if not is_ca(cert):
        raise UsageError(f"{cert_path} is not a CA certificate (basicConstraints CA:FALSE)")
    key = None
    if need_key:
        key_path = directory / CA_KEY
        if not key_path.exists():
            raise UsageError(f"CA key {key_path} is missing")
        key = keys.load_private_key(key_path, passphrase)
        if not keys.same_public_key(key, cert.public_key()):
            raise UsageError(f"CA key {key_path} does not match CA certificate {cert_path}")
    chain: tuple[x509.Certificate, ...] = ()
    root = cert
    chain_path = directory / CA_CHAIN
    if chain_path.exists():
        chain = tuple(load_certs_pem(chain_path.read_bytes(), source=str(chain_path)))
        if chain[0] != cert:
            raise UsageError(f"{chain_path} does not start with {cert_path}; the CA files do not belong together")
        root_path = directory / ROOT_CERT
        if not root_path.exists():
            raise UsageError(f"intermediate CA in {directory} lacks {root_path}")
        root = load_cert_chain(root_path)[0]
    elif cert.issuer != cert.subject:
        raise UsageError(f"{cert_path} is not self-signed and {chain_path} is missing")
    return CA(directory, cert, key, chain, root)


def trust_anchor(dir: str | os.PathLike) -> Path:
    """The file a client should trust for certificates from the CA in ``dir``."""
    directory = Path(dir)
    root = directory / ROOT_CERT
    return root if root.exists() else directory / CA_CERT
