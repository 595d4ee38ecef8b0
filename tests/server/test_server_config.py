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
        "peer-transport-security:\n  auto-tls: true\n"
    )
    c = resolve({}, {"ETCD_CONFIG_FILE": str(cfg)})
    assert c.cert_file == str(cert) and c.key_file == str(key) and c.trusted_ca_file == str(ca)
    assert c.client_cert_auth and c.peer_auto_tls and not c.embedded_pki
    assert [u.port for u in c.listen_client_urls] == [1234, 1235]


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
