"""Log lines diffed against the real etcd 3.4 on the same machine (`--logger zap` and
`capnslog`), and the `--log-outputs` targets (file, journald's native socket)."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
from pathlib import Path

import pytest

from server_harness import Member
from test_server_tls import s_client

# msg -> the zap fields etcd 3.4 writes with it, which securekv must write too.
WATCHED_ZAP = {
    "starting an etcd server": {"etcd-version", "name", "data-dir"},
    "starting local member": {"local-member-id", "cluster-id"},
    "added member": {"cluster-id", "local-member-id", "added-peer-id", "added-peer-peer-urls"},
    "serving metrics": {"address"},
    "raft.node: ID elected leader ID at term N": set(),
    "published local member to cluster through raft": {"local-member-id", "local-member-attributes",
                                                        "request-path", "cluster-id", "publish-timeout"},
    "enabled capabilities for version": {"cluster-version"},
    "serving client traffic securely": {"address"},
    "rejected connection": {"remote-addr", "server-name", "error"},
    "received signal; shutting down": {"signal"},
    "closing etcd server": {"name", "data-dir", "advertise-peer-urls", "advertise-client-urls"},
    "closed etcd server": {"name", "data-dir"},
}
# etcd 3.4 writes this one only with capnslog (3.5 with zap too); securekv writes it with both.
SECUREKV_ONLY = {"ready to serve client requests"}
# capnslog texts (after "pkg: "), IDs, numbers and addresses normalised.
WATCHED_CAPNSLOG = [
    "etcdserver: starting member ID in cluster ID",
    "etcdserver/membership: added member ID [URL] to cluster ID",
    "etcdserver: published {Name:m1 ClientURLs:[URL]} to cluster ID",
    "etcdserver/api: enabled capabilities for version N",
    "embed: ready to serve client requests",
    "embed: serving client requests on ADDR",
    'embed: rejected connection from "ADDR" (error "E", ServerName "")',
    "pkg/osutil: received terminated signal, shutting down...",
]


def _norm(text: str) -> str:
    text = re.sub(r"https?://(\[[0-9a-f:]+\]|[0-9a-z.-]+):\d+", "URL", text)
    text = re.sub(r"\b\d+\.\d+\.\d+\.\d+:\d+\b", "ADDR", text)
    text = re.sub(r"\b[0-9a-f]{12,16}\b", "ID", text)
    return re.sub(r"\b\d+(\.\d+)?\b", "N", text)


def _exercise(m: Member) -> str:
    """Start-up, one refused TLS handshake (no client certificate), SIGTERM; the log."""
    m.ctl("endpoint", "health")
    s_client(m.port, m.certs)
    m.stop()
    return m.output()


def _zap_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_zap_lines_match_etcd(make_member) -> None:
    logs = {kind: _zap_lines(_exercise(make_member(kind, name=kind, extra=["--logger", "zap"])))
            for kind in ("etcd", "securekv")}
    for kind, lines in logs.items():
        assert lines, kind
        for entry in lines:
            assert list(entry)[:4] == ["level", "ts", "caller", "msg"], (kind, entry)
            assert entry["level"] in ("debug", "info", "warn", "error", "fatal"), entry
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d{4})", entry["ts"]), entry
    by_msg = {kind: {} for kind in logs}
    for kind, lines in logs.items():
        for entry in lines:
            by_msg[kind].setdefault(_norm(entry["msg"]) if entry["msg"].startswith("raft.node") else entry["msg"],
                                    entry)
    for msg, fields in WATCHED_ZAP.items():
        assert msg in by_msg["etcd"], f"the real etcd no longer logs {msg!r}: fix the test's list"
        assert msg in by_msg["securekv"], f"securekv does not log {msg!r}"
        etcd_fields = set(by_msg["etcd"][msg]) - {"level", "ts", "caller", "msg"}
        ours = set(by_msg["securekv"][msg]) - {"level", "ts", "caller", "msg"}
        assert fields <= etcd_fields, (msg, etcd_fields)
        assert fields <= ours, (msg, ours)
        assert by_msg["etcd"][msg]["level"] == by_msg["securekv"][msg]["level"], msg
    for msg in SECUREKV_ONLY:
        assert msg not in by_msg["etcd"] and msg in by_msg["securekv"]
    assert by_msg["securekv"]["received signal; shutting down"]["signal"] == "terminated"
    assert by_msg["securekv"]["enabled capabilities for version"]["cluster-version"] == "3.4"


def test_capnslog_lines_match_etcd(make_member) -> None:
    seen = {}
    for kind in ("etcd", "securekv"):
        text = _exercise(make_member(kind, name=kind, extra=["--logger", "capnslog"]))
        lines = set()
        for line in text.splitlines():
            match = re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} [DINWEC] \| (.*)$", line)
            if match:
                body = match.group(1)
                body = re.sub(r'\(error "[^"]*"', '(error "E"', body)
                lines.add(_norm(body) if "rejected" not in body else re.sub(r'"\d[\d.:]+"', '"ADDR"', body))
        seen[kind] = lines
    for want in WATCHED_CAPNSLOG:
        want = want if "rejected" in want else _norm(want)
        assert want in seen["etcd"], f"the real etcd no longer logs {want!r}: {sorted(seen['etcd'])}"
        assert want in seen["securekv"], f"securekv does not log {want!r}: {sorted(seen['securekv'])}"


def test_log_outputs_file_and_journal(make_member, tmp_path: Path) -> None:
    sock_path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(sock_path)
    journal.settimeout(0.2)
    datagrams: list[bytes] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            try:
                datagrams.append(journal.recv(1 << 20))
            except socket.timeout:
                continue

    reader = threading.Thread(target=collect)
    reader.start()
    try:
        m = make_member("securekv", name="journal", extra=["--log-outputs", "systemd/journal"],
                        env={"SECUREKV_JOURNAL_SOCKET": sock_path})
        m.stop()
    finally:
        stop.set()
        reader.join()
        journal.close()
    entries = [_parse_native(d) for d in datagrams]
    messages = [json.loads(e["MESSAGE"])["msg"] for e in entries]
    assert "serving client traffic securely" in messages, messages
    assert all(e["SYSLOG_IDENTIFIER"] == "securekv" and e["PRIORITY"] in "234567" for e in entries)
    assert not _zap_lines(m.output())  # the journal got the lines, stderr none

    log_file = tmp_path / "member.log"
    m = make_member("securekv", name="file", extra=["--log-outputs", f"{log_file},stderr"])
    m.stop()
    assert "serving client traffic securely" in log_file.read_text()
    assert "serving client traffic securely" in m.output()
    assert oct(log_file.stat().st_mode & 0o777) == "0o600"


def _parse_native(data: bytes) -> dict[str, str]:
    """journald's native protocol (the inverse of etcdlog.journal_datagram)."""
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            value = data[nl + 9: nl + 9 + size]
            i = nl + 9 + size + 1
        fields[key.decode()] = value.decode()
    return fields


def test_journal_datagram_encoding() -> None:
    from securekv.server.etcdlog import journal_datagram

    data = journal_datagram([("MESSAGE", "two\nlines"), ("PRIORITY", "6")])
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nPRIORITY=6\n"
    assert _parse_native(data) == {"MESSAGE": "two\nlines", "PRIORITY": "6"}


def test_journal_output_without_journald_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    from server_harness import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO), SECUREKV_JOURNAL_SOCKET=str(tmp_path / "nothing"))
    proc = subprocess.run([sys.executable, "-m", "securekv", "serve", "--data-dir", str(tmp_path / "d"),
                           "--log-outputs", "systemd/journal"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 1 and "cannot reach journald" in proc.stderr, proc.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("level", ["warn", "error"])
def test_log_level_filters(make_member, level: str) -> None:
    m = make_member("securekv", name=f"lvl-{level}", extra=["--log-level", level])
    m.stop()
    lines = _zap_lines(m.output())
    allowed = {"warn": {"warn", "error", "fatal"}, "error": {"error", "fatal"}}[level]
    assert all(e["level"] in allowed for e in lines), lines
