"""Private keys: generation from a cfssl ``key{algo,size}`` spec, PEM encoding (optionally
passphrase-protected) and loading with clear errors.

Unencrypted ECDSA/RSA keys are written in the traditional OpenSSL form (``EC PRIVATE KEY`` /
``RSA PRIVATE KEY``) exactly like cfssljson, so tools that expect cfssl output keep working.
Encrypted keys and Ed25519 keys use PKCS#8, the only form with a sound KDF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from securekv.errors import UsageError

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey]

_CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1, 521: ec.SECP521R1}
_RSA_SIZES = (2048, 3072, 4096, 8192)
KEY_ALGOS = ("ecdsa", "rsa", "ed25519")


@attrs.frozen
class KeySpec:
    """A validated key request: ``algo`` in KEY_ALGOS, ``size`` in bits (None for ed25519)."""

    algo: str = "ecdsa"
    size: int | None = 256


def key_spec(algo: str | None, size: int | None) -> KeySpec:
    """Validate and default a key request (ECDSA P-256 unless told otherwise)."""
    algo = (algo or "ecdsa").lower()
    if algo not in KEY_ALGOS:
        raise UsageError(f"unknown key algorithm {algo!r}; use one of {', '.join(KEY_ALGOS)}")
    if algo == "ecdsa":
        size = size or 256
        if size not in _CURVES:
            raise UsageError(f"invalid ECDSA key size {size}; use 256, 384 or 521")
    elif algo == "rsa":
        size = size or 2048
        if size not in _RSA_SIZES:
            raise UsageError(f"invalid RSA key size {size}; use 2048, 3072, 4096 or 8192")
    else:
        if size not in (None, 0, 256):
            raise UsageError(f"ed25519 keys have a fixed size; drop the key size {size}")
        size = None
    return KeySpec(algo, size)


def generate_key(spec: KeySpec) -> PrivateKey:
    if spec.algo == "ecdsa":
        return ec.generate_private_key(_CURVES[spec.size]())
    if spec.algo == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)
    return ed25519.Ed25519PrivateKey.generate()


def signing_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    """The digest to sign with: matched to the curve strength; None for Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {384: hashes.SHA384(), 521: hashes.SHA512()}.get(key.curve.key_size, hashes.SHA256())
    return hashes.SHA256()


def describe_key(key: PrivateKey | PublicKey) -> str:
    """``ECDSA P-256``, ``RSA 2048``, ``Ed25519``."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"ECDSA P-{key.curve.key_size}"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"RSA {key.key_size}"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "Ed25519"
    return type(key).__name__


def key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    if passphrase:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    fmt = (
        serialization.PrivateFormat.PKCS8
        if isinstance(key, ed25519.Ed25519PrivateKey)
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    pub = key.public_key() if hasattr(key, "private_bytes") else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_public_key(a: PrivateKey | PublicKey, b: PrivateKey | PublicKey) -> bool:
    return public_pem(a) == public_pem(b)


def is_encrypted_pem(data: bytes) -> bool:
    return b"ENCRYPTED" in data.split(b"\n", 2)[0] or b"Proc-Type: 4,ENCRYPTED" in data


def load_private_key(path: str | Path, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM private key; every failure becomes one UsageError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    encrypted = is_encrypted_pem(data)
    if encrypted and not passphrase:
        raise UsageError(f"key {path} is passphrase-protected; give --passphrase-file")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise UsageError(f"wrong passphrase for key {path}") from None
        raise UsageError(f"{path} is not a PEM private key ({exc})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise UsageError(f"key {path} uses an unsupported algorithm ({type(key).__name__})")
    return key


def read_passphrase_file(path: str | Path) -> bytes:
    """The first line of ``path`` (trailing newline dropped); empty is refused."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read passphrase file {path}: {exc.strerror}") from None
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise UsageError(f"passphrase file {path} is empty")
    return line
