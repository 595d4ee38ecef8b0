"""Fixtures for the PKI tests (helpers live in pki_helpers.py)."""

from __future__ import annotations

import pytest

from pki_helpers import PKI


@pytest.fixture
def pki() -> PKI:
    return PKI()
