"""Fixtures for real-process server tests. The helpers they use live in server_harness.py,
which test modules import by that name (several test folders have a conftest.py, so
``from conftest import ...`` would depend on which one pytest loaded last)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from server_harness import Certs, Member

#: Whether the test's own body failed (set by the hook below, read by ``make_member``).
_CALL_FAILED = pytest.StashKey[bool]()
#: How much of each member's log a failed test prints.
LOG_TAIL = 6000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import revoke, write_crl

    base = tmp_path_factory.mktemp("pki")
    ca_dir, foreign_dir = base / "ca", base / "foreign"
    init_ca(ca_dir, cn="test CA")
    issue_cert(ca_dir, "server", "server", hosts=["127.0.0.1", "localhost", "::1"])
    issue_cert(ca_dir, "client", "root")
    issue_cert(ca_dir, "client", "alice")
    revoke(ca_dir, "alice")
    write_crl(ca_dir)
    init_ca(foreign_dir, cn="foreign CA")
    issue_cert(foreign_dir, "client", "root")
    return Certs(
        dir=ca_dir,
        ca=ca_dir / "ca.pem",
        server_cert=ca_dir / "server.pem",
        server_key=ca_dir / "server-key.pem",
        client_cert=ca_dir / "root.pem",
        client_key=ca_dir / "root-key.pem",
        other_cert=ca_dir / "alice.pem",
        other_key=ca_dir / "alice-key.pem",
        crl=ca_dir / "crl.pem",
        foreign_cert=foreign_dir / "root.pem",
        foreign_key=foreign_dir / "root-key.pem",
    )


@pytest.fixture
def make_member(request: pytest.FixtureRequest, tmp_path: Path, certs: Certs) -> Iterator:
    """Members in real processes, killed after the test. When the test failed, the tail of each
    member's log is printed (pytest shows it with the failure): an intermittent failure in CI
    then says what the member did, after its temporary directory is gone."""
    members: list[Member] = []

    def make(kind: str = "securekv", name: str = "data", extra: list[str] | None = None,
             env: dict | None = None, start: bool = True) -> Member:
        m = Member(kind, tmp_path / name, certs, extra, env)
        members.append(m)
        if start:
            m.start()
        return m

    yield make
    for m in members:
        m.kill()
    if request.node.stash.get(_CALL_FAILED, False):
        for m in members:
            print(f"---- {m.kind} log {m.log} (last {LOG_TAIL} characters) ----")
            print(m.output()[-LOG_TAIL:])


@pytest.fixture(params=["securekv", "etcd"])
def server(request: pytest.FixtureRequest, make_member) -> Member:
    """The same scenario against securekv and the real etcd (proves the test itself)."""
    return make_member(request.param)


@pytest.fixture
def member(make_member) -> Member:
    return make_member("securekv")


