"""Crashes with real processes and simulated power cuts: nothing acknowledged is lost."""

from __future__ import annotations

import errno
import os
import random
import signal
from pathlib import Path

from securekv.storage import WAL, HardState, Metadata, WalEntry
from securekv.storage.records import RecordType
from securekv.storage.wal import scan_frames
from storage_helpers import DEADLINE, drain_acks, entry_data, read_acks

def test_kill_9_loses_no_acknowledged_write(tmp_path: Path, spawn) -> None:
    waldir = str(tmp_path / "wal")
    rng = random.Random(1)
    acked = 0
    for round_ in range(4):
        proc = spawn("storage_child.py", "wal-writer", waldir, str(round_))
        acked = read_acks(proc, rng.randint(20, 150))
        # The child keeps appending while we kill it: the kill lands mid-batch somewhere.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
        acked = drain_acks(proc, acked)
        wal, state = WAL.open(waldir, segment_size=64 * 1024)
        wal.close()
        indexes = [e.index for e in state.entries]
        assert indexes == list(range(1, len(indexes) + 1))
        assert indexes[-1] >= acked, f"round {round_}: acked {acked}, recovered {indexes[-1]}"
        assert all(e.data == entry_data(e.index) for e in state.entries)
        assert state.hard_state.commit >= acked
    assert len(wal.segments()) > 1  # rollover happened under the kills too


def test_failed_write_stops_the_wal_and_reopen_repairs(tmp_path: Path, spawn) -> None:
    """A real short write (file size limit): the WAL refuses further use; the next open cuts
    the partial frame and keeps every synced entry."""
    waldir = str(tmp_path / "wal")
    proc = spawn("storage_child.py", "wal-fsize", waldir)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err.decode()
    failed, refused = out.decode().splitlines()
    _, acked, errno_ = failed.split()
    assert int(errno_) == errno.EFBIG and int(acked) > 0
    assert refused.startswith(f"refused WAL {waldir} failed earlier")
    wal, state = WAL.open(waldir)
    wal.close()
    assert state.repaired > 0
    assert [e.index for e in state.entries][:int(acked)] == list(range(1, int(acked) + 1))
    assert all(e.data == entry_data(e.index) for e in state.entries)


def _crash(wal: WAL) -> None:
    """Stop using ``wal`` as a killed process would: flush to the page cache, never sync."""
    wal._flush()
    os.close(wal._fd)
    wal._fd = None
    wal._lock.release()


def _first_entry_offset(path: str) -> int:
    frames, _ = scan_frames(Path(path).read_bytes(), None)
    for f in frames:
        if f.type not in (RecordType.CRC_SEED, RecordType.METADATA, RecordType.HARD_STATE,
                          RecordType.SNAPSHOT):
            return f.offset
    return os.path.getsize(path)


def test_power_cut_keeps_every_synced_record(tmp_path: Path) -> None:
    """Power-cut model: only what ``sync`` made durable survives, followed by any prefix of
    the unsynced bytes and then garbage (random bytes or zeros) — the open recovers at least
    up to the last sync and never returns a record that was not written."""
    rng = random.Random(20261122)
    waldir = str(tmp_path / "wal")
    WAL.create(waldir, Metadata(5, 6), segment_size=8192).close()
    written: dict[int, WalEntry] = {}
    repairs = 0
    for _round in range(60):
        wal, state = WAL.open(waldir, segment_size=8192)
        for e in state.entries:
            assert written[e.index] == e  # never invents or mixes up records
        index = wal.last_index
        # what open() left on disk is durable (a repair is fsynced)
        synced_path, synced_index = wal.segments()[-1], index
        synced_len = os.path.getsize(synced_path)
        for _ in range(rng.randint(0, 6)):
            batch = []
            for _ in range(rng.randint(1, 20)):
                index += 1
                batch.append(WalEntry(index, 1, rng.randbytes(rng.randint(0, 300))))
            written.update((e.index, e) for e in batch)
            wal.append(batch, HardState(1, 1, index))
            if rng.random() < 0.7:
                wal.sync()
                synced_path, synced_len, synced_index = wal.segments()[-1], wal._offset, index
        last = wal.segments()[-1]
        _crash(wal)
        # Power cut: the file that was current at the last sync keeps its synced prefix; a
        # segment created since then (rollover syncs the old one) keeps its fsynced header.
        keep = synced_len if last == synced_path else _first_entry_offset(last)
        data = Path(last).read_bytes()
        unsynced = data[keep:]
        tail = unsynced[:rng.randint(0, len(unsynced))]
        garbage = rng.choice([b"", rng.randbytes(rng.randint(1, 64)), b"\0" * rng.randint(1, 600)])
        Path(last).write_bytes(data[:keep] + tail + garbage)
        wal, state = WAL.open(waldir, segment_size=8192)
        wal.close()
        recovered = state.entries[-1].index if state.entries else 0
        repairs += state.repaired > 0
        assert recovered >= synced_index
        for e in state.entries:
            assert written[e.index] == e
        # entries beyond what survived are forgotten; the next round rewrites those indexes
        for i in range(recovered + 1, index + 1):
            written.pop(i, None)
    assert repairs >= 20  # the model really produced torn tails
    assert len(wal.segments()) > 3  # and crossed segment boundaries
