"""The data-dir lock, between real processes."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from securekv.errors import UsageError
from securekv.storage import lock_data_dir

TIMEOUT = 15


def _wait_line(proc) -> bytes:
    line = proc.stdout.readline()
    assert line, proc.stderr.read().decode()
    return line.strip()


def test_second_process_fails_clearly(tmp_path: Path, spawn) -> None:
    data_dir = tmp_path / "data"
    with lock_data_dir(data_dir):
        proc = spawn("storage_child.py", "lock", str(data_dir))
        _out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 2
        assert f"data directory {data_dir} is in use by process {os.getpid()}" in err.decode()
        assert "Traceback" not in err.decode()


def test_lock_held_by_another_process_names_its_pid(tmp_path: Path, spawn) -> None:
    data_dir = tmp_path / "data"
    holder = spawn("storage_child.py", "lock", str(data_dir))
    assert _wait_line(holder) == b"locked"
    with pytest.raises(UsageError, match=rf"{re.escape(str(data_dir))} is in use by process "
                                         rf"{holder.pid}\b"):
        lock_data_dir(data_dir)
    # kill -9 releases the lock with the process: a restart is never blocked by a stale LOCK
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=TIMEOUT)
    with lock_data_dir(data_dir) as lock:
        assert lock.held
    assert (data_dir / "LOCK").stat().st_mode & 0o777 == 0o600


def test_lock_released_explicitly_can_be_retaken(tmp_path: Path) -> None:
    lock = lock_data_dir(tmp_path)
    with pytest.raises(UsageError, match="in use"):
        lock_data_dir(tmp_path)
    lock.release()
    lock.release()  # idempotent
    lock_data_dir(tmp_path).release()
