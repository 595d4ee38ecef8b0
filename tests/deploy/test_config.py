"""Install-time validation of member configs (etcd config-file keys)."""

from __future__ import annotations

import copy

import pytest
import yaml

from securekv.deploy.config import parse_config, validate_config
from securekv.errors import UsageError

from deploy_helpers import CONFIGS

SHIPPED = ["single-member.yaml", "cluster-member-1.yaml", "cluster-member-2.yaml", "cluster-member-3.yaml"]


def base() -> dict:
    return yaml.safe_load((CONFIGS / "cluster-member-1.yaml").read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name: str) -> None:
    config = parse_config((CONFIGS / name).read_bytes(), source=name)
    assert config.name.startswith("member-")
    assert config.data_dir.startswith("/var/lib/securekv/")
    assert config.writable_paths() == ()


def test_cluster_configs_agree_on_the_cluster() -> None:
    configs = [yaml.safe_load((CONFIGS / f"cluster-member-{i}.yaml").read_text()) for i in (1, 2, 3)]
    assert len({c["initial-cluster"] for c in configs}) == 1
    assert len({c["initial-cluster-token"] for c in configs}) == 1
    assert sorted(c["name"] for c in configs) == ["member-1", "member-2", "member-3"]
    for c in configs:  # TLS with client certificates on every port
        for section in ("client-transport-security", "peer-transport-security"):
            assert c[section]["client-cert-auth"] is True
        for key in ("listen-client-urls", "listen-peer-urls", "advertise-client-urls", "initial-advertise-peer-urls"):
            assert all(u.startswith("https://") for u in c[key].split(","))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_use_tls_on_every_port(name: str) -> None:
    data = yaml.safe_load((CONFIGS / name).read_text())
    urls = [u for key, value in data.items() if key.endswith("-urls") for u in value.split(",")]
    urls += [entry.split("=", 1)[1] for entry in data.get("initial-cluster", "").split(",") if entry]
    assert urls and all(u.startswith("https://") for u in urls), urls
    env = (CONFIGS / "securekv.env").read_text()
    assert "http://" not in env


def test_env_example_uses_known_flags() -> None:
    from securekv.config.options import OPTIONS

    suffixes = {o.env_suffix for o in OPTIONS}
    names = []
    for line in (CONFIGS / "securekv.env").read_text().splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("SECUREKV_") and "=" in line:
            names.append(line.split("=", 1)[0][len("SECUREKV_"):])
    assert names and set(names) <= suffixes, set(names) - suffixes


def test_readme_documents_every_key() -> None:
    from securekv.deploy.config import TLS_KEYS, TOP_LEVEL_KEYS

    readme = (CONFIGS / "README.md").read_text()
    for key in [*TOP_LEVEL_KEYS, *TLS_KEYS]:
        assert f"`{key}`" in readme, key


def edit(change) -> dict:
    data = copy.deepcopy(base())
    change(data)
    return data


BAD = [
    ("unknown key", lambda d: d.update({"listen-client-url": "https://1.2.3.4:2379"}), "unknown top-level key 'listen-client-url'; did you mean 'listen-client-urls'?"),
    ("unknown tls key", lambda d: d["client-transport-security"].update({"crt-file": "/x"}), "unknown key in client-transport-security: 'crt-file'"),
    ("int as string", lambda d: d.update({"max-txn-ops": "128"}), "max-txn-ops must be an integer, got str '128'"),
    ("bool as string", lambda d: d["client-transport-security"].update({"client-cert-auth": "yes"}), "client-transport-security.client-cert-auth must be true or false"),
    ("plain http client", lambda d: d.update({"listen-client-urls": "http://10.0.0.11:2379"}), "listen-client-urls: http://10.0.0.11:2379 is not https://"),
    ("malformed url", lambda d: d.update({"advertise-client-urls": "https://10.0.0.11:99999"}), "advertise-client-urls: malformed URL"),
    ("no port", lambda d: d.update({"advertise-client-urls": "https://10.0.0.11"}), "has no port"),
    ("listen on a name", lambda d: d.update({"listen-peer-urls": "https://member-1.example:2380"}), "must use an IP address"),
    ("metrics http public", lambda d: d.update({"listen-metrics-urls": "http://10.0.0.11:2381"}), "plain http:// on a non-loopback address"),
    ("port twice", lambda d: d.update({"listen-metrics-urls": "https://10.0.0.11:2379"}), "port 2379 is used twice"),
    ("wildcard port twice", lambda d: d.update({"listen-metrics-urls": "http://127.0.0.1:2380", "listen-peer-urls": "https://0.0.0.0:2380"}), "port 2380 is used twice"),
    ("relative path", lambda d: d.update({"data-dir": "data"}), "data-dir must be an absolute path"),
    ("no key", lambda d: d["client-transport-security"].pop("key-file"), "cert-file and key-file must be given together"),
    ("no mtls", lambda d: d["client-transport-security"].update({"client-cert-auth": False}), "client-cert-auth must be true"),
    ("cluster without me", lambda d: d.update({"name": "member-9"}), "initial-cluster does not list this member's name 'member-9'"),
    ("cluster mismatch", lambda d: d.update({"initial-advertise-peer-urls": "https://10.0.0.99:2380"}), "initial-cluster lists member-1="),
    ("election too short", lambda d: d.update({"election-timeout": 300}), "election-timeout (300 ms) must be at least 5 times"),
    ("state", lambda d: d.update({"initial-cluster-state": "old"}), "initial-cluster-state must be one of new, existing"),
    ("plaintext opt-out", lambda d: d.update({"insecure-allow-plaintext": True}), "insecure-allow-plaintext is refused"),
    ("not a mapping", lambda d: d.clear(), "required key 'name' is missing"),
]


@pytest.mark.parametrize("label, change, message", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_clear_error(label: str, change, message: str) -> None:
    with pytest.raises(UsageError) as info:
        validate_config(edit(change))
    assert message in str(info.value)


def test_yaml_syntax_error_names_file_and_line() -> None:
    with pytest.raises(UsageError, match=r"broken.yaml: not valid YAML at line 2"):
        parse_config(b"name: a\n  bad: [\n", source="broken.yaml")


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(UsageError, match="must be a YAML mapping"):
        parse_config(b"- a\n- b\n")


def test_cluster_configs_rendered_for_loopback_pass_serves_own_loader(tmp_path) -> None:
    """The three member configs, on loopback with files under tmp, resolve with serve's loader."""
    from deploy_helpers import free_port, localize

    from securekv.config import resolve
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import write_crl

    pki = tmp_path / "pki"
    init_ca(pki)
    for i in (1, 2, 3):
        issue_cert(pki, "peer", f"member-{i}", hosts=["127.0.0.1"])
    write_crl(pki)
    ports = {(f"10.0.0.1{i}", p): free_port() for i in (1, 2, 3) for p in (2379, 2380)}
    ports[("127.0.0.1", 2381)] = free_port()
    configs = []
    for i in (1, 2, 3):
        data = localize(f"cluster-member-{i}.yaml", tmp_path, ports)
        data["listen-client-urls"] = data["advertise-client-urls"]  # the shipped extra 127.0.0.1:2379 would clash
        data["listen-metrics-urls"] = f"http://127.0.0.1:{free_port()}"
        path = tmp_path / f"member-{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        parse_config(path.read_bytes(), source=str(path))
        configs.append(resolve({}, {}, str(path)))
    assert {c.name for c in configs} == {"member-1", "member-2", "member-3"}
    assert len({str(c.listen_peer_urls[0]) for c in configs}) == 3
    assert all(c.peer_client_cert_auth and c.client_cert_auth for c in configs)
    assert all(c.peer_crl_file.endswith("crl.pem") for c in configs)
