"""Issue 12, bounded work per request: a read's response is capped (--max-response-bytes, with
grpc-go's error for an answer above the send limit) before it is built, and one identity's
leases are capped (--max-leases-per-identity). Real member, real etcdctl and curl."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from server_harness import Certs, Member

pytestmark = pytest.mark.timeout(120)

LIMIT = 64 * 1024
TOO_LARGE = "grpc: trying to send message larger than max ("


def curl(m: Member, path: str, body: dict) -> tuple[int, dict]:
    c = m.certs
    out = subprocess.run(["curl", "-sS", "--cacert", str(c.ca), "--cert", str(c.client_cert), "--key",
                          str(c.client_key), "-w", "\n%{http_code}", "-d", json.dumps(body),
                          f"https://127.0.0.1:{m.port}{path}"], capture_output=True, text=True, timeout=30)
    text, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(text)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_range_and_txn_responses_above_the_limit_are_refused_before_they_are_built(make_member) -> None:
    m = make_member(extra=["--max-response-bytes", str(LIMIT)])
    value = "v" * 1000
    ops = "\n".join(f"put big/{i:03d} {value}" for i in range(100))  # ~100 KB under big/
    assert "SUCCESS" in m.ctl("txn", stdin=f"\n{ops}\n\n\n").stdout
    # The whole prefix is more than the limit: etcd's (grpc-go's) error, nothing sent.
    r = m.ctl("get", "--prefix", "big/", check=False)
    assert r.returncode != 0 and TOO_LARGE in r.stderr and f"vs. {LIMIT})" in r.stderr, r.stderr
    # Paging with --limit (what clients do) and keys only fit.
    page = m.ctl("get", "--prefix", "big/", "--limit", "20", "-w", "json")
    got = json.loads(page.stdout)
    assert len(got["kvs"]) == 20 and got["more"] is True and got["count"] == 100
    assert m.ctl("get", "--prefix", "big/", "--keys-only").stdout.count("big/") == 100
    # A read-only txn's ranges share one budget: two halves that fit alone do not fit together.
    half = "get big/000 big/050\n"
    assert m.ctl("txn", stdin=f"\n{half}\n\n").returncode == 0
    r = m.ctl("txn", stdin=f"\n{half}get big/050 big/100\n\n\n", check=False)
    assert r.returncode != 0 and TOO_LARGE in r.stderr, r.stderr
    # The JSON gateway answers the same error (RESOURCE_EXHAUSTED = HTTP 429, code 8).
    code, body = curl(m, "/v3/kv/range", {"key": b64(b"big/"), "range_end": b64(b"big0")})
    assert code == 429 and body["code"] == 8 and body["message"].startswith(TOO_LARGE), (code, body)
    code, body = curl(m, "/v3/kv/range", {"key": b64(b"big/"), "range_end": b64(b"big0"), "limit": 10})
    assert code == 200 and len(body["kvs"]) == 10
    # The member is unharmed.
    assert m.ctl("put", "after", "ok").stdout.strip() == "OK"


def test_leases_per_identity_are_capped(make_member, certs: Certs, tmp_path: Path) -> None:
    from securekv.pki.issue import issue_cert

    issue_cert(certs.dir, "client", "bob", out_dir=tmp_path)
    bob = (tmp_path / "bob.pem", tmp_path / "bob-key.pem")
    m = make_member(extra=["--max-leases-per-identity", "3"])
    ids = [m.ctl("lease", "grant", "60").stdout.split()[1] for _ in range(3)]
    r = m.ctl("lease", "grant", "60", check=False)
    assert r.returncode != 0 and "securekv: too many leases for this client identity" in r.stderr, r.stderr
    # Another identity has its own count.
    assert "granted with TTL" in m.ctl("lease", "grant", "60", cert=bob[0], key=bob[1]).stdout
    # A revoked lease frees its slot.
    m.ctl("lease", "revoke", ids[0])
    assert "granted with TTL" in m.ctl("lease", "grant", "60").stdout
    r = m.ctl("lease", "grant", "60", check=False)
    assert r.returncode != 0 and "too many leases" in r.stderr, r.stderr
    assert len(m.ctl("lease", "list").stdout.strip().splitlines()) == 1 + 4  # header + 3 of root's + bob's
