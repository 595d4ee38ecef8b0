"""Fixtures for the deployment tests."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


@pytest.fixture
def cli():
    """Invoke ``securekv install ...`` in-process; returns the click Result."""
    from securekv.cli.main import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, ["install", *args], catch_exceptions=False)

    return invoke
