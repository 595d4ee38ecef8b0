"""sd_notify client against a real AF_UNIX datagram socket owned by the test."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from securekv.server.sdnotify import Notifier, socket_address, watchdog_period


@pytest.fixture
def receiver(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_ready_stopping_watchdog_status_arrive_as_datagrams(receiver) -> None:
    path, sock = receiver
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready(status="serving on https://127.0.0.1:2379")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving on https://127.0.0.1:2379\n"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1\n"
    assert notifier.status("compacting")
    assert sock.recv(4096) == b"STATUS=compacting\n"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\n"


def test_abstract_socket() -> None:
    name = f"securekv-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1\n"
    finally:
        sock.close()


def test_noop_without_notify_socket() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.stopping() is False


def test_unreachable_socket_reports_false_instead_of_raising(tmp_path: Path) -> None:
    assert Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready() is False


def test_newline_in_a_field_is_refused(receiver) -> None:
    path, _ = receiver
    with pytest.raises(ValueError):
        Notifier.from_environment({"NOTIFY_SOCKET": path}).status("two\nlines")


@pytest.mark.parametrize(
    "value, expected",
    [("/run/systemd/notify", "/run/systemd/notify"), ("@abc", b"\0abc"), ("@", None), ("vsock:2:1", None), ("relative", None)],
)
def test_socket_address_forms(value: str, expected) -> None:
    assert socket_address(value) == expected


def test_watchdog_period_is_half_the_timeout_and_only_for_our_pid() -> None:
    me = os.getpid()
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me)}) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me + 1)}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "junk"}) is None
