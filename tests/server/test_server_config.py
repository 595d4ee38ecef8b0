"""Configuration precedence (flags > SECUREKV_* > ETCD_* > YAML > defaults) and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from securekv.config import resolve
from securekv.errors import UsageError


def test_defaults_are_the_embedded_tls_member() -> None:
    c = resolve({}, {})
    assert c.name == "default"
    assert c.data_dir == "default.securekv"
    assert [str(u) for u in c.listen_client_urls] == ["https://127.0.0.1:2379"]
    assert c.embedded_pki
    assert c.initial_cluster == (("default", "https://127.0.0.1:2380"),)
    assert c.max_request_bytes == 1572864 and c.max_txn_ops == 128


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: fromfile\nmax-txn-ops: 7\nsnapshot-count: 9\nlog-level: warn\n")
    env = {"SECUREKV_MAX_TXN_OPS": "8", "ETCD_MAX_TXN_OPS": "99", "ETCD_SNAPSHOT_COUNT": "10"}
    c = resolve({"max_txn_ops": "6"}, env, str(cfg))
    assert c.max_txn_ops == 6 and c.sources["max_txn_ops"] == "flag"
    c = resolve({}, env, str(cfg))
    assert c.max_txn_ops == 8 and c.sources["max_txn_ops"] == "env"  # SECUREKV_ before ETCD_
    assert c.snapshot_count == 10  # ETCD_ accepted
    assert c.name == "fromfile" and c.log_level == "warn"
    assert c.data_dir == "fromfile.securekv"


def test_yaml_nested_transport_security(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for p in (cert, key, ca):
        p.write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "listen-client-urls: https://127.0.0.1:1234,https://[::1]:1235\n"
        "client-transport-security:\n"
        f"  cert-file: {cert}\n  key-file: {key}\n  trusted-ca-file: {ca}\n  client-cert-auth: true\n"
        "peer-transport-security:\n"
        f"  cert-file: {cert}\n  key-file: {key}\n  trusted-ca-file: {ca}\n  client-cert-auth: true\n"
        "  allowed-cn: peers\n"
    )
    c = resolve({}, {"ETCD_CONFIG_FILE": str(cfg)})
    assert c.cert_file == str(cert) and c.key_file == str(key) and c.trusted_ca_file == str(ca)
    assert c.client_cert_auth and c.peer_client_cert_auth and not c.embedded_pki
    assert c.peer_cert_file == str(cert) and c.peer_cert_allowed_cn == "peers"
    assert [u.port for u in c.listen_client_urls] == [1234, 1235]


def test_client_certificates_required_on_https_unless_opted_out(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for p in (cert, key, ca):
        p.write_text("x")
    tls = {"cert_file": str(cert), "key_file": str(key)}
    # etcd's default (no --client-cert-auth, no CA) would serve anonymous clients: refused
    with pytest.raises(UsageError, match="https:// client URLs require client certificates"):
        resolve(tls, {})
    with pytest.raises(UsageError, match="https:// client URLs require client certificates"):
        resolve({"auto_tls": "true"}, {})
    # a CA is enough: certificates are then required whether --client-cert-auth is given or not
    assert resolve({**tls, "trusted_ca_file": str(ca)}, {}).client_cert_auth
    # an explicit false (etcd's sample config writes the default out) is ignored, with a warning
    c = resolve({**tls, "trusted_ca_file": str(ca), "client_cert_auth": "false"}, {})
    assert c.client_cert_auth and any("--client-cert-auth=false (from flag) is ignored" in w for w in c.warnings)
    c = resolve({**tls, "trusted_ca_file": str(ca)}, {"ETCD_CLIENT_CERT_AUTH": "false"})
    assert c.client_cert_auth and any("from ETCD_CLIENT_CERT_AUTH" in w or "from env" in w for w in c.warnings)
    # the explicit opt-out
    c = resolve({**tls, "insecure_skip_client_cert_auth": "true"}, {})
    assert not c.client_cert_auth and c.insecure_skip_client_cert_auth
    assert not resolve({"auto_tls": "true", "insecure_skip_client_cert_auth": "true"}, {}).client_cert_auth
    with pytest.raises(UsageError, match="contradict"):
        resolve({**tls, "trusted_ca_file": str(ca), "client_cert_auth": "true",
                 "insecure_skip_client_cert_auth": "true"}, {})
    with pytest.raises(UsageError, match="embedded default always requires client certificates"):
        resolve({"insecure_skip_client_cert_auth": "true"}, {})
    # the metrics listener on https follows the same rule (it shares the client port's TLS)
    with pytest.raises(UsageError, match="require client certificates"):
        resolve({**tls, "listen_client_urls": "http://127.0.0.1:1", "insecure_allow_plaintext": "true",
                 "listen_metrics_urls": "https://10.1.2.3:9000"}, {})


def test_peer_certificates_always_required(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for p in (cert, key, ca):
        p.write_text("x")
    peer = {"peer_cert_file": str(cert), "peer_key_file": str(key), "peer_trusted_ca_file": str(ca)}
    assert resolve(peer, {}).sources  # --peer-client-cert-auth not needed: always on
    c = resolve({**peer, "peer_client_cert_auth": "false"}, {})
    assert any("--peer-client-cert-auth=false (from flag) is ignored" in w for w in c.warnings)
    resolve({**peer, "peer_client_cert_auth": "false", "peer_insecure_skip_client_cert_auth": "true"}, {})
    with pytest.raises(UsageError, match="--peer-auto-tls makes self-signed peer certificates"):
        resolve({"cert_file": str(cert), "key_file": str(key), "trusted_ca_file": str(ca), "peer_auto_tls": "true"}, {})
    resolve({"peer_auto_tls": "true"}, {})  # the embedded default: peer certificate from its own CA
    resolve({"cert_file": str(cert), "key_file": str(key), "trusted_ca_file": str(ca), "peer_auto_tls": "true",
             "peer_insecure_skip_client_cert_auth": "true"}, {})
    with pytest.raises(UsageError, match="mutually exclusive"):
        resolve({**peer, "peer_cert_allowed_cn": "a", "peer_cert_allowed_hostname": "b"}, {})
    with pytest.raises(UsageError, match="--peer-auto-tls and --peer-cert-file"):
        resolve({**peer, "peer_auto_tls": "true"}, {})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"listen_client_urls": "http://127.0.0.1:2379"}, "--insecure-allow-plaintext"),
        ({"listen_peer_urls": "http://127.0.0.1:2380"}, "refusing plaintext"),
        ({"listen_metrics_urls": "http://10.1.2.3:9000"}, "only allowed on loopback"),
        ({"listen_client_urls": "https://127.0.0.1"}, "a port is required"),
        ({"initial_cluster_state": "old"}, "'new' or 'existing'"),
        ({"cert_file": "/nonexistent.pem"}, "must be given together"),
        ({"max_txn_ops": "abc"}, "invalid integer"),
        ({"client_cert_auth": "maybe"}, "invalid boolean"),
        ({"initial_cluster": "other=https://127.0.0.1:2380"}, "no entry for this member"),
        ({"heartbeat_interval": "500"}, "at least 5 times"),
    ],
)
def test_bad_input_is_one_clear_error(flags: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve(flags, {})


def test_plaintext_allowed_only_with_opt_out() -> None:
    c = resolve({"listen_client_urls": "http://127.0.0.1:2379", "insecure_allow_plaintext": "true"}, {})
    assert not c.listen_client_urls[0].is_tls
    c = resolve({"listen_metrics_urls": "http://127.0.0.1:9000"}, {})
    assert c.listen_metrics_urls[0].is_loopback


def test_bad_yaml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="mapping"):
        resolve({}, {}, str(cfg))
    with pytest.raises(UsageError, match="cannot read config file"):
        resolve({}, {}, str(tmp_path / "missing.yaml"))


def test_member_ids_follow_etcds_formula() -> None:
    from securekv.server.ids import cluster_id, member_id

    m = member_id(["http://127.0.0.1:23800"], "etcd-cluster")
    assert m == 0x2E1259D415F2A040
    assert cluster_id([m]) == 0x48276A8F75B6A87
