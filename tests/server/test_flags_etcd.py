"""Every etcd 3.4 flag is implemented, accepted with a warning, or refused with a reason.

The flag list is the real ``/usr/bin/etcd --help`` (Debian etcd-server 3.4) plus the flags
etcd parses without listing them in its help; the ``ETCD_*`` names come from etcd's own
configuration guide as Debian ships it. A config file with the keys of etcd's sample config
and an env file in etcd's format start a member (or fail with the specific reason).
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from securekv.config import resolve
from securekv.config.options import BY_FLAG, COMMAND_FLAGS, IGNORED, IMPLEMENTED, OPTIONS, REFUSED
from securekv.errors import UsageError
from server_harness import ETCD, REPO, Certs, free_port

# Flags another branch implements (issue 18 leaves it to it); empty once merged.
PENDING: dict[str, str] = {}
# Parsed by etcd 3.4 (etcdmain/config.go) but left out of its --help text.
HIDDEN = ("enable-grpc-gateway", "unsafe-no-fsync", "experimental-enable-lease-checkpoint-persist")
# Listed in the 3.4 configuration guide as deprecated, but no longer flags in 3.4.
GONE_FROM_34 = {"CA_FILE", "PEER_CA_FILE"}


def etcd_help_flags() -> list[str]:
    out = subprocess.run([ETCD, "--help"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    flags = re.findall(r"^\s+--([a-z0-9-]+)", text, flags=re.M)
    flags += re.findall(r"^\s+etcd (--[a-z0-9-]+)", text, flags=re.M)
    return sorted({f.lstrip("-") for f in flags})


def classify(flag: str) -> str:
    if flag in COMMAND_FLAGS:
        return "command"
    if flag in BY_FLAG:
        return BY_FLAG[flag].support
    if flag in PENDING:
        return f"pending ({PENDING[flag]})"
    return "UNCLASSIFIED"


def test_every_etcd_help_flag_is_classified() -> None:
    flags = etcd_help_flags()
    assert len(flags) >= 80, flags  # the parse found the whole help text
    assert {"name", "enable-v2", "cipher-suites", "version", "config-file"} <= set(flags)
    unclassified = [f for f in [*flags, *HIDDEN] if classify(f) == "UNCLASSIFIED"]
    assert not unclassified, unclassified


def test_pending_flags_are_not_in_the_table_twice() -> None:
    # A pending flag added by its own branch appears in OPTIONS exactly once after the merge.
    flags = [o.flag for o in OPTIONS]
    assert len(flags) == len(set(flags))


def test_ignored_and_refused_flags_say_why() -> None:
    for option in OPTIONS:
        if option.support in (IGNORED, REFUSED):
            assert len(option.reason) > 20, option.flag
        else:
            assert option.support == IMPLEMENTED


def test_etcd_configuration_guide_env_names() -> None:
    guide = Path("/usr/share/doc/etcd-server/op-guide/configuration.md.gz")
    if not guide.exists():
        pytest.skip("etcd-server's documentation is not installed")
    names = set(re.findall(r"env variable: ETCD_([A-Z0-9_]+)", gzip.decompress(guide.read_bytes()).decode()))
    assert len(names) > 60
    known = {o.env_suffix for o in OPTIONS} | {"CONFIG_FILE"} | {f.replace("-", "_").upper() for f in PENDING}
    assert names - GONE_FROM_34 <= known, sorted(names - GONE_FROM_34 - known)


def test_docs_table_classifies_every_flag() -> None:
    docs = (REPO / "docs" / "server.md").read_text()
    for option in OPTIONS:
        row = re.search(rf"^\| `--{re.escape(option.flag)}` \| ([a-z]+) \|", docs, flags=re.M)
        assert row is not None, f"docs/server.md has no row for --{option.flag}"
        assert row.group(1) == option.support, option.flag


def test_refused_flag_names_the_reason_and_touches_nothing(tmp_path: Path) -> None:
    data = tmp_path / "d"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for args in (["--enable-v2"], ["--proxy", "on"], ["--discovery", "https://discovery.example/abc"]):
        proc = subprocess.run([sys.executable, "-m", "securekv", "serve", "--data-dir", str(data), *args],
                              capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "is not supported:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not data.exists()
    proc = subprocess.run([sys.executable, "-m", "securekv", "serve", "--enable-v2=false", "--version"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "etcd Version: 3.4.23" in proc.stdout


def test_env_yaml_and_flag_name_the_same_option(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max-wals: 9\nstrict-reconfig-check: false\ncors: https://a.example\n"
                   "grpc-keepalive-min-time: 2000000000\nexperimental-corrupt-check-time: 3m\n")
    c = resolve({}, {"ETCD_ENABLE_PPROF": "true", "ETCD_LOG_OUTPUTS": "stdout"}, str(cfg))
    assert c.strict_reconfig_check is False
    assert c.grpc_keepalive_min_time == 2.0  # YAML durations are nanoseconds, as etcd's
    assert c.experimental_corrupt_check_time == 180.0
    assert c.log_outputs == ("stdout",)
    warnings = "\n".join(c.warnings)
    assert "--max-wals=9 (from file) has no effect" in warnings
    assert "--enable-pprof=true (from env) has no effect" in warnings
    assert "--cors=https://a.example (from file) has no effect" in warnings
    c = resolve({"max_wals": "5", "enable_pprof": "false"}, {})  # etcd's defaults: nothing to say
    assert not c.warnings
    c = resolve({"debug": "true"}, {"ETCD_UNKNOWN_THING": "secret-value"})
    assert c.log_level == "debug"
    assert any("ETCD_UNKNOWN_THING" in w and "secret-value" not in w for w in c.warnings)


@pytest.mark.parametrize(("flags", "message"), [
    ({"enable_v2": "true"}, "--enable-v2=true (from flag) is not supported: the v2 API is not served"),
    ({"unsafe_no_fsync": "true"}, "never acknowledges a write before it is fsynced"),
    ({"cipher_suites": "TLS_FOO"}, 'unexpected TLS cipher suite "TLS_FOO"'),
    ({"cipher_suites": "TLS_RSA_WITH_AES_128_CBC_SHA"}, "none of the listed suites"),
    ({"logger": "glog"}, "'zap' or 'capnslog'"),
    ({"log_outputs": "systemd/journal,stderr"}, "cannot be combined"),
    ({"auto_compaction_mode": "revision", "auto_compaction_retention": "1h"}, "number of revisions"),
    ({"grpc_keepalive_min_time": "5"}, "missing unit"),
    ({"discovery_srv": "example.com", "initial_cluster": "default=https://127.0.0.1:2380"},
     "multiple discovery or bootstrap flags are set"),
])
def test_bad_values_are_one_clear_error(flags: dict, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve(flags, {})


def test_cipher_suite_names_map_to_openssl() -> None:
    from securekv.tlspolicy.ciphers import DEFAULT, select

    assert select([]) == (DEFAULT, ())
    assert select(["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"]) == (
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305", ())
    assert select(["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_128_CBC_SHA"]) == (
        "ECDHE-RSA-AES128-GCM-SHA256", ("TLS_RSA_WITH_AES_128_CBC_SHA",))
    assert select(["TLS_AES_128_GCM_SHA256"]) == (DEFAULT, ())  # TLS 1.3 names: no TLS 1.2 change, as Go
    c = resolve({"cipher_suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}, {})
    assert any("left out TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA" in w for w in c.warnings)


def test_cipher_suites_restrict_the_client_port(make_member) -> None:
    from test_server_tls import s_client

    m = make_member("securekv", extra=["--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"])
    c = m.certs
    ok = s_client(m.port, c, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384", cert=c.client_cert,
                  key=c.client_key)
    assert b'{"health":"true"}' in ok.stdout, ok.stderr
    refused = s_client(m.port, c, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", cert=c.client_cert,
                       key=c.client_key)
    assert b'{"health":"true"}' not in refused.stdout
    assert "rejected connection" in m.output()  # etcd's handshake failure line


def _peer_cert(certs: Certs, name: str, out: Path) -> tuple[str, str]:
    """A member's own peer certificate (issue 12: --peer-auto-tls without a CA is refused, and
    the certificate names the member)."""
    from securekv.pki.issue import issue_cert

    out.mkdir(exist_ok=True)
    issued = issue_cert(certs.dir, "peer", name, hosts=["127.0.0.1"], out_dir=out)
    return str(issued.cert_path), str(issued.key_path)


def _sample_config(certs: Certs, port: int, peer: int, data: Path, tls: bool) -> str:
    """The keys and values of etcd 3.4's etcd.conf.yml.sample; ``tls`` = the operator's edits
    for a secure member (URLs, TLS files); everything else as in the sample."""
    scheme = "https" if tls else "http"
    peer_cert, peer_key = _peer_cert(certs, "default", data.parent / "peer-pki") if tls else (None, None)
    sample = {
        "name": "default", "data-dir": str(data), "wal-dir": None, "snapshot-count": 10000,
        "heartbeat-interval": 100, "election-timeout": 1000, "quota-backend-bytes": 0,
        "listen-peer-urls": f"{scheme}://127.0.0.1:{peer}", "listen-client-urls": f"{scheme}://127.0.0.1:{port}",
        "max-snapshots": 5, "max-wals": 5, "cors": None,
        "initial-advertise-peer-urls": f"{scheme}://127.0.0.1:{peer}",
        "advertise-client-urls": f"{scheme}://127.0.0.1:{port}",
        "discovery": None, "discovery-fallback": "proxy", "discovery-proxy": None, "discovery-srv": None,
        "initial-cluster": None, "initial-cluster-token": "etcd-cluster", "initial-cluster-state": "new",
        "strict-reconfig-check": False, "enable-v2": not tls, "enable-pprof": True, "proxy": "off",
        "proxy-failure-wait": 5000, "proxy-refresh-interval": 30000, "proxy-dial-timeout": 1000,
        "proxy-write-timeout": 5000, "proxy-read-timeout": 0,
        "client-transport-security": {"cert-file": str(certs.server_cert) if tls else None,
                                      "key-file": str(certs.server_key) if tls else None,
                                      "client-cert-auth": tls, "trusted-ca-file": str(certs.ca) if tls else None,
                                      "auto-tls": False},
        "peer-transport-security": {"cert-file": peer_cert, "key-file": peer_key, "client-cert-auth": False,
                                    "trusted-ca-file": str(certs.ca) if tls else None, "auto-tls": False},
        "debug": False, "logger": "zap", "log-outputs": ["stderr"], "force-new-cluster": False,
        "auto-compaction-mode": "periodic", "auto-compaction-retention": "1",
        "cipher-suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
    }
    return yaml.safe_dump(sample, sort_keys=False)


def _run_until_ready(argv: list[str], env: dict, cwd: Path) -> str:
    """Start a member, wait for etcd's readiness line, stop it with SIGTERM; its whole log.

    Reads the pipe's file descriptor directly: selecting on a buffered text pipe and then
    calling readline() leaves lines that arrived in the same read in Python's buffer, where
    select() never sees them (the readiness line was missed that way under load)."""
    import os
    import selectors
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "securekv", "serve", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, cwd=cwd)
    received = bytearray()
    deadline = time.monotonic() + 60
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline and b"serving client traffic securely" not in received:
            if not sel.select(timeout=1):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            received += chunk
    finally:
        sel.close()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        received += rest
    return received.decode(errors="replace")


def test_etcd_sample_config_starts_or_names_the_reason(tmp_path: Path, certs: Certs) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    port, peer = free_port(), free_port()
    cfg = tmp_path / "etcd.conf.yml"
    # As shipped (http://, enable-v2: true): refused with the reason, nothing created.
    cfg.write_text(_sample_config(certs, port, peer, tmp_path / "plain", tls=False))
    proc = subprocess.run([sys.executable, "-m", "securekv", "serve", "--config-file", str(cfg)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "--enable-v2=true (from file) is not supported" in proc.stderr, proc.stderr
    assert not (tmp_path / "plain").exists()
    # With the operator's TLS edits: starts, honours what it implements, warns about the rest.
    cfg.write_text(_sample_config(certs, port, peer, tmp_path / "secure", tls=True))
    out = _run_until_ready(["--config-file", str(cfg)], env, tmp_path)
    assert "serving client traffic securely" in out, out
    assert "--enable-pprof=true (from file) has no effect" in out
    assert "is not supported" not in out
    # the sample writes peer client-cert-auth: false; securekv keeps member certificates required
    assert "--peer-client-cert-auth=false (from file) is ignored" in out


def test_etcd_env_file_starts_a_member(tmp_path: Path, certs: Certs) -> None:
    port, peer = free_port(), free_port()
    env_file = tmp_path / "etcd.env"
    env_file.write_text("\n".join([
        "# /etc/default/etcd, as an etcd operator writes it",
        "ETCD_NAME=infra0",
        f"ETCD_DATA_DIR={tmp_path / 'infra0.etcd'}",
        f"ETCD_LISTEN_CLIENT_URLS=https://127.0.0.1:{port}",
        f"ETCD_ADVERTISE_CLIENT_URLS=https://127.0.0.1:{port}",
        f"ETCD_LISTEN_PEER_URLS=https://127.0.0.1:{peer}",
        f"ETCD_INITIAL_ADVERTISE_PEER_URLS=https://127.0.0.1:{peer}",
        f"ETCD_INITIAL_CLUSTER=infra0=https://127.0.0.1:{peer}",
        "ETCD_INITIAL_CLUSTER_STATE=new",
        "ETCD_INITIAL_CLUSTER_TOKEN=etcd-cluster-1",
        f"ETCD_CERT_FILE={certs.server_cert}",
        f"ETCD_KEY_FILE={certs.server_key}",
        f"ETCD_TRUSTED_CA_FILE={certs.ca}",
        "ETCD_CLIENT_CERT_AUTH=true",
        f"ETCD_PEER_CERT_FILE={_peer_cert(certs, 'infra0', tmp_path / 'peer-pki')[0]}",
        f"ETCD_PEER_KEY_FILE={tmp_path / 'peer-pki' / 'infra0-key.pem'}",
        f"ETCD_PEER_TRUSTED_CA_FILE={certs.ca}",
        "ETCD_PEER_CLIENT_CERT_AUTH=true",
        "ETCD_AUTO_COMPACTION_RETENTION=1",
        "ETCD_QUOTA_BACKEND_BYTES=8589934592",
        "ETCD_HEARTBEAT_INTERVAL=100",
        "ETCD_ELECTION_TIMEOUT=1000",
        "ETCD_ENABLE_V2=false",
        "ETCD_LOGGER=zap",
        "ETCD_LOG_LEVEL=info",
        "ETCD_METRICS=basic",
    ]) + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for line in env_file.read_text().splitlines():  # what systemd's EnvironmentFile= does
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    out = _run_until_ready([], env, tmp_path)
    assert "serving client traffic securely" in out and '"name":"infra0"' in out, out
    assert "has no effect" not in out and "unrecognized environment variable" not in out, out
