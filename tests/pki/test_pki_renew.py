"""``securekv pki renew`` is ``securekv cluster renew``: same options, same behaviour.

The renewal itself (through a signing member, under load, no restart) is proven in
tests/cluster/test_cert_lifecycle.py through `cluster renew`; here the alias is run on real
member certificates: not due -> nothing contacted, nothing changed; due but no signing member
reachable -> a clear error, nothing changed.
"""

from __future__ import annotations

import socket
from pathlib import Path

from securekv.cli.cluster_join_cmd import renew_cmd
from securekv.cli.pki_cmd import cli

from pki_helpers import PKI, snapshot


def _member(pki: PKI, d: Path) -> list[str]:
    for args in (("init", "--dir", d), ("issue", "server", "n1", "--dir", d, "--hosts", "127.0.0.1"),
                 ("issue", "peer", "n1-peer", "--dir", d, "--hosts", "127.0.0.1", "--cn", "n1")):
        result = pki(*args)
        assert result.exit_code == 0, result.output
    return ["--cacert", str(d / "ca.pem"), "--server-cert", str(d / "n1.pem"), "--server-key", str(d / "n1-key.pem"),
            "--peer-cert", str(d / "n1-peer.pem"), "--peer-key", str(d / "n1-peer-key.pem")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pki_renew_is_cluster_renew(pki: PKI, tmp_path: Path) -> None:
    assert cli.get_command(None, "renew") is renew_cmd  # type: ignore[arg-type]
    files = _member(pki, tmp_path)
    before = snapshot(tmp_path)
    endpoint = f"https://127.0.0.1:{_closed_port()}"
    idle = pki("renew", "--endpoints", endpoint, *files, "--before", "30d")
    assert idle.exit_code == 0 and idle.output.startswith("not due: the first certificate expires "), idle.output
    due = pki("renew", "--endpoints", endpoint, *files, "--before", "36500d")
    assert due.exit_code == 1 and "no signing member could be reached" in due.output, due.output
    assert snapshot(tmp_path) == before
