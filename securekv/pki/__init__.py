"""securekv's built-in PKI: CAs, leaf certificates, revocation, checks and auto-TLS.

Public API (see docs/pki.md)::

    from securekv.pki.ca import init_ca, init_intermediate, load_ca, trust_anchor
    from securekv.pki.issue import issue_cert
    from securekv.pki.autotls import ensure_self_signed
    from securekv.pki.local import ensure_local_pki
    from securekv.pki.revoke import revoke, write_crl, load_revocations
    from securekv.pki.verify import load_cert_chain, verify_chain
    from securekv.pki.check import check_dir
    from securekv.pki.info import cert_info, file_info
    from securekv.pki.tls import server_context, client_context
    from securekv.pki.duration import parse_duration

Every function takes an explicit ``now`` (aware UTC datetime; default: the wall clock) so tests
and the simulator control time. Errors are ``securekv.errors.UsageError`` with one clear line.
"""
