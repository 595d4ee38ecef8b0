"""/metrics diffed against the real etcd 3.4: the same names, types and labels for what
securekv has, securekv's extras under securekv_*, and every metric etcd's own alert rules,
Grafana dashboard and mixin (as Debian ships them) query."""

from __future__ import annotations

import gzip
import json
import re
import urllib.request
from pathlib import Path

import pytest

from server_harness import Member

DOCS = Path("/usr/share/doc/etcd-server")
# etcd 3.4 metrics securekv does not export, and why (docs/server.md repeats this list).
EXCEPTIONS = {
    "etcd_server_go_version": "securekv is not a Go program",
    "etcd_debugging_disk_backend_commit_rebalance_duration_seconds": "bbolt internals; the backend is sqlite",
    "etcd_debugging_disk_backend_commit_spill_duration_seconds": "bbolt internals; the backend is sqlite",
    "etcd_debugging_disk_backend_commit_write_duration_seconds": "bbolt internals; the backend is sqlite",
    "etcd_debugging_mvcc_total_put_size_in_bytes": "securekv does not add up the size of every put",
    "etcd_debugging_store_expires_total": "the v2 store does not exist (the v2 API is not served)",
    "etcd_debugging_store_reads_total": "the v2 store does not exist",
    "etcd_debugging_store_watch_requests_total": "the v2 store does not exist",
    "etcd_debugging_store_watchers": "the v2 store does not exist",
    "etcd_debugging_store_writes_total": "the v2 store does not exist",
    "etcd_grpc_proxy_cache_hits_total": "no grpc-proxy inside a member",
    "etcd_grpc_proxy_cache_keys_total": "no grpc-proxy inside a member",
    "etcd_grpc_proxy_cache_misses_total": "no grpc-proxy inside a member",
    "etcd_grpc_proxy_events_coalescing_total": "no grpc-proxy inside a member",
    "etcd_grpc_proxy_watchers_coalescing_total": "no grpc-proxy inside a member",
}
LABELS = {"grpc_code", "grpc_method", "grpc_service", "grpc_type"}
RUNTIME = re.compile(r"^(go_|promhttp_|process_|python_)")
# Only with --metrics extensive, in etcd and in securekv.
EXTENSIVE = {"grpc_server_handling_seconds"}


def scrape(m: Member) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def families(text: str) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """name -> (type, label-name sets of its samples, minus histogram ``le``)."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    out: dict[str, tuple[str, set[frozenset[str]]]] = {name: (kind, set()) for name, kind in types.items()}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        assert match, line
        name = match.group(1)
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or "")) - {"le"}
        family = name if name in out else re.sub(r"_(bucket|sum|count)$", "", name)
        assert family in out, f"sample {name} has no # TYPE line"
        out[family][1].add(labels)
    return out


def exercise(m: Member) -> dict[str, tuple[str, set[frozenset[str]]]]:
    m.ctl("put", "k", "v")
    m.ctl("get", "k")
    m.ctl("endpoint", "health")
    return families(scrape(m))


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, certs) -> dict:
    result = {}
    for kind in ("etcd", "securekv"):
        m = Member(kind, tmp_path_factory.mktemp(kind) / "data", certs, ["--metrics", "extensive"])
        try:
            m.start()
            result[kind] = exercise(m)
        finally:
            m.kill()
    return result


def test_metric_names_match_etcd(both: dict) -> None:
    etcd = {n for n in both["etcd"] if not RUNTIME.match(n)}
    ours = {n for n in both["securekv"] if not RUNTIME.match(n)}
    missing = etcd - ours - set(EXCEPTIONS)
    assert not missing, f"etcd exports these and securekv does not: {sorted(missing)}"
    stale = set(EXCEPTIONS) - etcd
    assert not stale, f"the real etcd no longer exports {sorted(stale)}: fix EXCEPTIONS"
    extra = {n for n in ours - etcd if not n.startswith("securekv_")}
    assert not extra, f"securekv-only metrics must be named securekv_*: {sorted(extra)}"
    assert EXTENSIVE <= etcd and EXTENSIVE <= ours


def test_metric_types_and_labels_match_etcd(both: dict) -> None:
    for name, (kind, labelsets) in both["etcd"].items():
        if RUNTIME.match(name) or name in EXCEPTIONS:
            continue
        our_kind, our_labels = both["securekv"][name]
        assert our_kind == kind, (name, kind, our_kind)
        etcd_names = set().union(*labelsets) if labelsets else set()
        our_names = set().union(*our_labels) if our_labels else set()
        if our_labels:  # a family with samples has etcd's label names
            assert our_names == etcd_names, (name, etcd_names, our_names)


def test_grpc_labels_name_service_and_type(both: dict) -> None:
    # etcd labels every RPC with its service and type; dashboards group by them.
    assert frozenset({"grpc_code", "grpc_method", "grpc_service", "grpc_type"}) in \
        both["securekv"]["grpc_server_handled_total"][1]


def test_no_basic_histograms_unless_extensive(make_member) -> None:
    m = make_member("securekv", name="basic")
    m.ctl("put", "k", "v")
    names = families(scrape(m))
    assert "grpc_server_handling_seconds" not in names
    assert "grpc_server_handled_total" in names
    text = scrape(m)
    assert re.search(r'^grpc_server_handled_total\{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",'
                     r'grpc_type="unary"\} 1.0$', text, flags=re.M), text
    assert re.search(r"^etcd_server_has_leader 1.0$", text, flags=re.M)
    assert re.search(r"^etcd_debugging_mvcc_keys_total 1.0$", text, flags=re.M)
    assert re.search(r"^etcd_mvcc_put_total 1.0$", text, flags=re.M)
    assert re.search(r"^etcd_server_health_success \d", text, flags=re.M)  # etcd's name, no _total
    assert re.search(r"^etcd_disk_wal_fsync_duration_seconds_bucket\{le=\"0.001\"\} ", text, flags=re.M)


def _upstream_queries() -> list[str]:
    texts = []
    for path in ("op-guide/etcd3_alert.rules.yml.gz", "op-guide/grafana.json.gz", "etcd-mixin/mixin.libsonnet.gz"):
        f = DOCS / path
        if f.exists():
            texts.append(gzip.decompress(f.read_bytes()).decode())
    return texts


def test_upstream_alerts_and_dashboards_find_their_metrics(both: dict) -> None:
    texts = _upstream_queries()
    if not texts:
        pytest.skip("etcd-server's documentation (alert rules, dashboard) is not installed")
    wanted = set()
    for text in texts:
        for name in re.findall(r"\b((?:etcd|grpc|process)_[a-z_]+)", text):
            wanted.add(re.sub(r"_(bucket|sum|count)$", "", name))
    wanted -= {"etcd_selector", *LABELS}
    # v2 HTTP metrics: the real etcd 3.4 does not export them either (old rules).
    v2 = {n for n in wanted if n.startswith("etcd_http_")}
    assert not v2 & set(both["etcd"])
    # Peer metrics exist only in a cluster (tests/cluster/test_cluster_metrics.py).
    peer = {n for n in wanted if n.startswith("etcd_network_peer_")}
    missing = wanted - v2 - peer - set(both["securekv"])
    assert not missing, sorted(missing)
    rules = texts[0]
    for label in ("grpc_type", "grpc_service", "grpc_method", "grpc_code"):
        assert label in rules


def test_dashboard_json_parses(both: dict) -> None:
    f = DOCS / "op-guide/grafana.json.gz"
    if not f.exists():
        pytest.skip("etcd-server's documentation is not installed")
    exprs: list[str] = []

    def walk(node: object) -> None:  # every "expr" of every panel target, whatever the nesting
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(gzip.decompress(f.read_bytes())))
    assert len(exprs) > 5
    for expr in exprs:
        for name in re.findall(r"\b((?:etcd|grpc)_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if not base.startswith("etcd_network_peer_") and base not in LABELS:
                assert base in both["securekv"], (base, expr)
