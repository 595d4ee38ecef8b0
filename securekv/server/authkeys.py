"""The token provider for ``--auth-token``: key files read (or generated) here, at the edge.

``simple`` needs nothing. ``jwt`` takes etcd's ``pub-key``/``priv-key``/``sign-method``
options: key files are PEM (RSA, ECDSA, Ed25519), except for HS* where ``priv-key`` holds the
shared secret itself, as in etcd. ``pub-key`` alone verifies tokens other members sign (etcd's
verify-only mode). With no key files at all securekv makes a key pair itself, once, under
``<data-dir>/auth/`` (private key 0600, written atomically): Ed25519 (``EdDSA``, the default
sign method) or ECDSA on the curve ``ES256``/``ES384``/``ES512`` names. Each member then signs
with its own key, so a token is only good on the member that issued it (clients log in again
on ``invalid auth token``); give every member the same key files to share tokens.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from securekv.auth.tokens import TOKEN_SIMPLE, JWTTokens, SimpleTokens, TokenProvider, TokenSpec
from securekv.errors import UsageError
from securekv.fsutil import atomic_write

_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_HMAC_MIN = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_RSA_BITS = 2048


def token_provider(spec: TokenSpec, data_dir: str | Path, simple_ttl: float) -> TokenProvider:
    if spec.kind == TOKEN_SIMPLE:
        return SimpleTokens(random.SystemRandom(), float(simple_ttl))
    method = spec.sign_method
    if not spec.pub_key and not spec.priv_key:
        method = method or "EdDSA"
        private = _generated(Path(data_dir) / "auth", method)
        return JWTTokens(method, private, private.public_key(), spec.ttl)
    if not method:
        raise UsageError("--auth-token jwt with key files needs sign-method=... (auth: invalid auth signature method)")
    if method in _HMAC_MIN:
        secret = _read(spec.priv_key or spec.pub_key)
        if len(secret) < _HMAC_MIN[method]:
            raise UsageError(f"--auth-token {method} secret {spec.priv_key or spec.pub_key} is {len(secret)} bytes; "
                             f"use at least {_HMAC_MIN[method]} random bytes")
        return JWTTokens(method, secret, secret, spec.ttl)
    private = _load_private(spec.priv_key) if spec.priv_key else None
    public = _load_public(spec.pub_key) if spec.pub_key else None
    for key, path in ((private, spec.priv_key), (public, spec.pub_key)):
        if key is not None:
            _check_type(method, key, path)
    if private is not None and public is not None and _pub_bytes(private.public_key()) != _pub_bytes(public):
        raise UsageError(f"--auth-token: {spec.pub_key} is not the public key of {spec.priv_key} "
                         "(auth: public and private keys don't match)")
    return JWTTokens(method, private, public, spec.ttl)


def _generated(directory: Path, method: str) -> Any:
    """The member's own JWT key for ``method``: loaded if made before, else made now (0600)."""
    if method == "EdDSA":
        name = "jwt-ed25519"
    elif method in _EC_CURVES:
        name = f"jwt-{method.lower()}"
    else:
        raise UsageError(f"--auth-token jwt,sign-method={method} needs priv-key/pub-key files "
                         "(securekv only generates EdDSA and ES256/ES384/ES512 keys)")
    path = directory / f"{name}.key"
    if path.exists():
        key = _load_private(str(path))
        _check_type(method, key, str(path))
        return key
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate() if method == "EdDSA" else ec.generate_private_key(_EC_CURVES[method]())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(path, pem, 0o600)
    atomic_write(directory / f"{name}.pub", _pub_bytes(key.public_key()), 0o644)
    return key


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--auth-token: cannot read {path}: {exc.strerror or exc}") from None


def _load_private(path: str) -> Any:
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--auth-token priv-key {path} is not an unencrypted PEM private key ({exc})") from None


def _load_public(path: str) -> Any:
    try:
        return serialization.load_pem_public_key(_read(path))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--auth-token pub-key {path} is not a PEM public key ({exc})") from None


def _pub_bytes(public: Any) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_type(method: str, key: Any, path: str) -> None:
    ok = {
        "Ed": (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey),
        "ES": (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey),
        "RS": (rsa.RSAPrivateKey, rsa.RSAPublicKey),
        "PS": (rsa.RSAPrivateKey, rsa.RSAPublicKey),
    }[method[:2]]
    if not isinstance(key, ok):
        raise UsageError(f"--auth-token sign-method={method} does not match the key in {path}")
    if method in _EC_CURVES and not isinstance(key.curve, _EC_CURVES[method]):
        raise UsageError(f"--auth-token sign-method={method} needs a {_EC_CURVES[method].name} key, {path} is "
                         f"{key.curve.name}")
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size < MIN_RSA_BITS:
        raise UsageError(f"--auth-token key {path} is RSA {key.key_size}; use at least {MIN_RSA_BITS} bits")


__all__ = ["token_provider"]
