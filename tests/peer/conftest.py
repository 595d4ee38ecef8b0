"""Fixtures for tests/peer (helpers live in peer_helpers.py)."""

from __future__ import annotations

import pytest

from peer_helpers import PeerCerts, build_certs


@pytest.fixture(scope="session")
def peer_certs(tmp_path_factory: pytest.TempPathFactory) -> PeerCerts:
    return build_certs(tmp_path_factory.mktemp("peerpki"))
