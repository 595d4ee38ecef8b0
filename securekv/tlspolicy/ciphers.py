"""``--cipher-suites``: etcd's (Go's) TLS cipher suite names → an OpenSSL cipher string.

A pure function, so every place that builds a TLS context (client port, peer port) calls the
same rule. etcd takes Go's names (``tls.CipherSuites()`` and ``tls.InsecureCipherSuites()``,
plus the two short ChaCha20 aliases) and refuses any other name with ``unexpected TLS cipher
suite "X"``; so do we. securekv's floor stays: TLS 1.2 suites must be forward secret (ECDHE)
and AEAD, so a known but weaker suite (CBC, RC4, 3DES, RSA key exchange) is left out with a
warning instead of weakening the port, and a list of only weak suites is refused. TLS 1.3
names are accepted and, as in Go, do not change the TLS 1.3 suites (all of which are AEAD).
"""

from __future__ import annotations

from typing import Iterable

# Go name -> OpenSSL name, TLS 1.2 suites securekv accepts.
STRONG: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
# Names Go knows that securekv leaves out: no forward secrecy, or not AEAD.
WEAK = frozenset({
    "TLS_RSA_WITH_RC4_128_SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA", "TLS_RSA_WITH_AES_128_CBC_SHA256", "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "TLS_ECDHE_RSA_WITH_RC4_128_SHA", "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
})
TLS13 = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})

# No --cipher-suites: forward-secret AEAD only, in OpenSSL's preference order.
DEFAULT = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384:!CBC"


def cipher_string(names: Iterable[str]) -> str:
    """The OpenSSL cipher string for ``--cipher-suites`` (in the order given); ValueError if unusable."""
    return select(names)[0]


def select(names: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """(OpenSSL cipher string, weak names left out). Empty input = securekv's default set."""
    given = [n.strip() for n in names if n.strip()]
    if not given:
        return DEFAULT, ()
    chosen: list[str] = []
    weak: list[str] = []
    tls13 = False
    for name in given:
        if name in STRONG:
            if STRONG[name] not in chosen:
                chosen.append(STRONG[name])
        elif name in WEAK:
            weak.append(name)
        elif name in TLS13:
            tls13 = True
        else:
            raise ValueError(f'unexpected TLS cipher suite "{name}"')
    if not chosen and not tls13:
        raise ValueError("none of the listed suites is forward secret and AEAD (" + ", ".join(weak)
                         + "); securekv does not offer CBC, RC4, 3DES or RSA key exchange")
    if not chosen:  # TLS 1.3 names only: TLS 1.2 keeps securekv's default set
        return DEFAULT, tuple(weak)
    return ":".join(chosen), tuple(weak)


__all__ = ["DEFAULT", "cipher_string", "select"]
