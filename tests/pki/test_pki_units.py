"""Durations, hosts/SANs and cfssl JSON parsing."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest

from securekv.errors import UsageError
from securekv.pki.cfssl import default_config, load_config, load_csr, parse_config, parse_csr
from securekv.pki.duration import go_hours, parse_duration
from securekv.pki.names import parse_hosts, sans_cover, split_host_port

from pki_helpers import TEMPLATES


@pytest.mark.parametrize(
    "text, expected",
    [
        ("87600h", timedelta(hours=87600)),
        ("90d", timedelta(days=90)),
        ("1y", timedelta(days=365)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "h", "1x", "-1h", "0h", "1 y", "1y2", "200y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


def test_go_hours_round_trip() -> None:
    assert go_hours(timedelta(hours=8760)) == "8760h"
    assert parse_duration(go_hours(timedelta(minutes=90))) == timedelta(minutes=90)


def test_hosts_split_into_ip_and_dns_sans() -> None:
    sans = parse_hosts(["127.0.0.1", "::1", "[fd00::1]", "LocalHost", "*.svc.example.com", "localhost", "spiffe://c/m1"])
    assert sans.ips == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address("fd00::1"))
    assert sans.dns == ("localhost", "*.svc.example.com")
    assert sans.uris == ("spiffe://c/m1",)


@pytest.mark.parametrize(
    "host, message",
    [
        ("", "empty host"),
        ("bad_host", "label 'bad_host'"),
        ("-a.example.com", "label '-a'"),
        ("a..b", "label ''"),
        ("foo.*.example.com", "only as the leftmost label"),
        ("f*o.example.com", "wildcard must be a whole label"),
        ("*.com", "at least two labels"),
        ("1.2.3.999", "all-numeric"),
        ("a" * 64 + ".com", "1-63"),
        ("http://", "malformed URI"),
    ],
)
def test_malformed_hosts(host: str, message: str) -> None:
    with pytest.raises(UsageError, match="malformed") as info:
        parse_hosts([host])
    assert message in str(info.value)


def test_sans_cover_wildcards_one_level() -> None:
    sans = parse_hosts(["*.example.com", "10.0.0.1"])
    assert sans_cover(sans, "a.example.com")
    assert not sans_cover(sans, "a.b.example.com")
    assert not sans_cover(sans, "example.com")
    assert sans_cover(sans, "10.0.0.1") and not sans_cover(sans, "10.0.0.2")


@pytest.mark.parametrize(
    "text, host", [("127.0.0.1:2379", "127.0.0.1"), ("[::1]:2380", "::1"), ("https://node1:2380", "node1"), ("::1", "::1")]
)
def test_split_host_port(text: str, host: str) -> None:
    assert split_host_port(text) == host


def test_shipped_templates_parse() -> None:
    config = load_config(TEMPLATES / "ca-config.json")
    assert set(config.profiles) >= {"server", "peer", "client", "etcd"}
    assert config.profiles["peer"].server_auth and config.profiles["peer"].client_auth
    assert config.profiles["server"].server_auth and not config.profiles["server"].client_auth
    assert config.profiles["client"].client_auth and not config.profiles["client"].server_auth
    assert config == default_config()
    ca = load_csr(TEMPLATES / "ca-csr.json")
    assert ca.cn == "securekv CA" and ca.ca_expiry == timedelta(hours=87600) and ca.key_algo == "ecdsa"
    server = load_csr(TEMPLATES / "server-csr.json")
    assert "127.0.0.1" in server.hosts
    for name in ("peer-csr.json", "client-csr.json"):
        load_csr(TEMPLATES / name)


@pytest.mark.parametrize(
    "obj, message",
    [
        ([], "expected a JSON object"),
        ({"hosts": "a"}, "'hosts' must be a list"),
        ({"names": {}}, "'names' must be a list"),
        ({"key": {"size": "big"}}, "key.size must be an integer"),
        ({"ca": {"pathlen": -1}}, "ca.pathlen"),
        ({"ca": {"expiry": "forever"}}, "invalid"),
    ],
)
def test_bad_csr_json(obj, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_csr(obj)


def test_config_profile_usages_validated() -> None:
    with pytest.raises(UsageError, match="unknown usage 'server auht'"):
        parse_config({"signing": {"profiles": {"x": {"usages": ["server auht"]}}}})
    config = parse_config({"signing": {"default": {"expiry": "24h"}, "profiles": {"x": {"usages": ["client auth"]}}}})
    assert config.profiles["x"].expiry == timedelta(hours=24)
