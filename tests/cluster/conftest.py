"""Fixtures for the cluster scenarios (the harness itself is cluster_harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from cluster_harness import KINDS, Cluster, ClusterPKI, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPKI:
    return make_pki(tmp_path_factory.mktemp("cluster-pki"))


@pytest.fixture
def make_cluster(tmp_path: Path, pki: ClusterPKI) -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def make(kind: str, start: bool = True, **kw) -> Cluster:
        c = Cluster(kind, pki, tmp_path / f"{kind}-{len(clusters)}", **kw)
        clusters.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in clusters:
        c.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module", params=KINDS)
def shared(request: pytest.FixtureRequest, pki: ClusterPKI, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Cluster]:
    """One 3-member cluster per server kind shared by the non-destructive scenarios of a module;
    each scenario leaves it with the same three healthy members."""
    c = Cluster(request.param, pki, tmp_path_factory.mktemp(f"shared-{request.param}"))
    try:
        c.start()
        yield c
    finally:
        c.close()

