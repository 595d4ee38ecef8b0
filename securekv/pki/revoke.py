"""Revocation: record revoked serials in ``DIR/revoked.json``; sign ``DIR/crl.pem`` from them.

The record is the source of truth; the CRL is regenerated from it (with an increasing CRL
number) by ``write_crl``, so a lost crl.pem is always recoverable.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securekv.errors import CorruptionError, UsageError
from securekv.pki import keys
from securekv.pki.ca import CRL_FILE, RESERVED_NAMES, REVOKED_FILE, authority_key_id, load_ca
from securekv.pki.files import write_files
from securekv.pki.issue import validate_name
from securekv.pki.verify import issued_by, load_cert_chain, utcnow

REASONS = {flag.name.lower().replace("_", ""): flag for flag in x509.ReasonFlags}
_HEX = re.compile(r"^(0x)?[0-9a-fA-F:]+$")
DEFAULT_NEXT_UPDATE = timedelta(days=7)


@attrs.frozen
class Revocation:
    serial: int
    reason: str
    revoked_at: datetime
    name: str | None = None

    def to_json(self) -> dict:
        return {"serial": format(self.serial, "x"), "reason": self.reason,
                "revoked_at": self.revoked_at.isoformat(), "name": self.name}


@attrs.frozen
class CRLResult:
    path: Path
    number: int
    this_update: datetime
    next_update: datetime
    revoked: int

    def to_json(self) -> dict:
        return {"crl": str(self.path), "number": self.number, "this_update": self.this_update.isoformat(),
                "next_update": self.next_update.isoformat(), "revoked": self.revoked}


def parse_reason(text: str) -> x509.ReasonFlags:
    key = text.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in REASONS:
        names = ", ".join(sorted(f.value for f in x509.ReasonFlags))
        raise UsageError(f"unknown revocation reason {text!r}; use one of {names}")
    return REASONS[key]


def _state(directory: Path) -> dict:
    """The parsed record; every entry is checked so a damaged file is one clear error."""
    path = directory / REVOKED_FILE
    if not path.exists():
        return {"crl_number": 0, "revoked": []}
    damaged = CorruptionError(f"revocation record {path} is damaged; restore it from backup")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise damaged from None
    if not isinstance(data, dict) or not isinstance(data.get("revoked"), list):
        raise damaged
    number = data.get("crl_number", 0)
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise damaged
    try:
        for item in data["revoked"]:
            _entry(item)
    except (TypeError, KeyError, ValueError):
        raise damaged from None
    return data


def _entry(item: dict) -> Revocation:
    reason = x509.ReasonFlags(item["reason"]).value
    when = datetime.fromisoformat(item["revoked_at"])
    if when.tzinfo is None:
        raise ValueError("naive revocation time")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError("name must be a string")
    return Revocation(int(item["serial"], 16), reason, when, name)


def load_revocations(dir: str | os.PathLike) -> list[Revocation]:
    return [_entry(item) for item in _state(Path(dir))["revoked"]]


def revoke(
    dir: str | os.PathLike,
    target: str,
    *,
    reason: str = "unspecified",
    now: datetime | None = None,
) -> Revocation:
    """Record the certificate ``target`` (a NAME in ``dir`` or a hex serial) as revoked."""
    directory = Path(dir)
    ca = load_ca(directory, need_key=False)
    flag = parse_reason(reason)
    name = None
    if target == "ca":  # also valid hex: never let it silently mean serial 0xca
        raise UsageError("refusing to revoke the CA's own certificate; replace the CA instead (for serial CA write 0xca)")
    if target in RESERVED_NAMES:
        raise UsageError(f"{target!r} names one of the CA's own files, not an issued certificate")
    if (directory / f"{target}.pem").exists():
        validate_name(target)
        cert = load_cert_chain(directory / f"{target}.pem")[0]
        if not issued_by(cert, ca.cert):
            raise UsageError(f"{directory / (target + '.pem')} was not issued by the CA in {directory}")
        serial, name = cert.serial_number, target
    elif _HEX.match(target) and target.replace(":", "").removeprefix("0x"):
        serial = int(target.replace(":", "").removeprefix("0x"), 16)
    else:
        raise UsageError(f"{target!r} is neither a certificate name in {directory} nor a hex serial number")
    if serial == ca.cert.serial_number:
        raise UsageError("refusing to revoke the CA's own certificate; replace the CA instead")
    state = _state(directory)
    if any(int(item["serial"], 16) == serial for item in state["revoked"]):
        raise UsageError(f"serial {serial:x} is already revoked")
    record = Revocation(serial, flag.value, utcnow(now), name)
    state["revoked"].append(record.to_json())
    write_files([(directory / REVOKED_FILE, json.dumps(state, indent=2) + "\n", 0o644)])
    return record


def write_crl(
    dir: str | os.PathLike,
    *,
    next_update: timedelta = DEFAULT_NEXT_UPDATE,
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> CRLResult:
    """Sign ``dir/crl.pem`` listing every recorded revocation, with the next CRL number."""
    directory = Path(dir)
    ca = load_ca(directory, passphrase=passphrase)
    state = _state(directory)
    moment = utcnow(now)
    number = int(state.get("crl_number", 0)) + 1
    nxt = moment + next_update
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(moment)
        .next_update(nxt)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_id(ca.cert), critical=False)
    )
    for item in state["revoked"]:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(item["serial"], 16))
            .revocation_date(datetime.fromisoformat(item["revoked_at"]))
        )
        if item["reason"] != x509.ReasonFlags.unspecified.value:
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags(item["reason"])), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca.key, keys.signing_hash(ca.key))
    state["crl_number"] = number
    write_files([
        (directory / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM), 0o644),
        (directory / REVOKED_FILE, json.dumps(state, indent=2) + "\n", 0o644),
    ])
    return CRLResult(directory / CRL_FILE, number, moment, nxt, len(state["revoked"]))
