"""The fuzz targets import as ``targets`` (this folder is on sys.path, as in the other areas)."""

from __future__ import annotations

from typing import Iterator

import pytest

import targets


@pytest.fixture(scope="session", autouse=True)
def _scratch() -> Iterator[None]:
    yield
    targets.cleanup()
