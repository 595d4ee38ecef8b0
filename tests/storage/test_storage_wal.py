"""The write-ahead log: round trips, torn tails, corruption, rollover, release."""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import pytest

from securekv.errors import CorruptionError, UsageError
from securekv.storage import WAL, HardState, Metadata, SnapshotMarker, WalEntry
from securekv.storage.records import RecordType
from securekv.storage.wal import HEADER_SIZE, scan_frames

META = Metadata(member_id=0x1234, cluster_id=0xABCDEF, extra=b"name=m1")


def ents(lo: int, hi: int, term: int = 1, tag: str = "") -> list[WalEntry]:
    return [WalEntry(i, term, f"data-{i}-{tag}".encode() * (1 + i % 3)) for i in range(lo, hi + 1)]


def frames_of(path: str) -> list:
    frames, bad = scan_frames(Path(path).read_bytes(), None)
    assert bad is None
    return frames


def entry_frames(path: str) -> list:
    return [f for f in frames_of(path) if f.type == RecordType.ENTRY]


@pytest.fixture
def waldir(tmp_path: Path) -> str:
    return str(tmp_path / "member" / "wal")


def test_round_trip(waldir: str) -> None:
    with WAL.create(waldir, META) as wal:
        wal.append(ents(1, 10), HardState(term=1, vote=7, commit=4))
        wal.sync()
        wal.append([WalEntry(11, 2, b"", type=1)], HardState(2, 7, 10))
    wal, state = WAL.open(waldir)
    with wal:
        assert state.metadata == META
        assert state.hard_state == HardState(2, 7, 10)
        assert state.snapshot is None
        assert state.entries == ents(1, 10) + [WalEntry(11, 2, b"", 1)]
        assert state.repaired == 0
        assert wal.last_index == 11
        wal.append(ents(12, 12))
    _, state = WAL.open(waldir)
    _.close()
    assert [e.index for e in state.entries] == list(range(1, 13))


def test_new_wal_is_empty_and_private(waldir: str) -> None:
    WAL.create(waldir, META).close()
    wal, state = WAL.open(waldir)
    wal.close()
    assert state.entries == [] and state.hard_state == HardState() and state.snapshot is None
    assert os.stat(waldir).st_mode & 0o777 == 0o700
    for path in wal.segments():
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{16}\.wal", os.path.basename(path))


def test_create_refuses_existing_and_open_refuses_missing(waldir: str, tmp_path: Path) -> None:
    WAL.create(waldir, META).close()
    with pytest.raises(UsageError, match="already exists"):
        WAL.create(waldir, META)
    with pytest.raises(UsageError, match="no WAL"):
        WAL.open(tmp_path / "nowhere")


def test_second_open_in_process_is_refused(waldir: str) -> None:
    wal = WAL.create(waldir, META)
    try:
        with pytest.raises(UsageError, match=re.escape(waldir)):
            WAL.open(waldir)
    finally:
        wal.close()
    WAL.open(waldir)[0].close()


def test_raft_types_can_be_appended_directly(waldir: str) -> None:
    """The server passes the core's own Entry/HardState objects (duck-typed)."""
    class Entry:
        def __init__(self, index: int, term: int, data: bytes, type: int) -> None:
            self.index, self.term, self.data, self.type = index, term, data, type

    class HS:
        term, vote, commit = 3, 2, 1

    with WAL.create(waldir, META) as wal:
        wal.append([Entry(1, 3, b"cc", 1)], HS())
    wal, state = WAL.open(waldir)
    wal.close()
    assert state.entries == [WalEntry(1, 3, b"cc", 1)] and state.hard_state == HardState(3, 2, 1)


def test_later_append_at_lower_index_wins(waldir: str) -> None:
    with WAL.create(waldir, META) as wal:
        wal.append(ents(1, 10, term=1))
        wal.sync()
        wal.append(ents(6, 8, term=2, tag="new"))  # leader change truncated 6..10
        assert wal.last_index == 8
        wal.append(ents(9, 9, term=3, tag="newer"))
    wal, state = WAL.open(waldir)
    wal.close()
    assert state.entries == ents(1, 5) + ents(6, 8, term=2, tag="new") + ents(9, 9, 3, "newer")


def test_bad_entry_index_buffers_nothing(waldir: str) -> None:
    with WAL.create(waldir, META) as wal:
        with pytest.raises(UsageError, match="index 0 cannot follow index 1"):
            wal.append([WalEntry(1, 1, b"a"), WalEntry(0, 1, b"b")])
        with pytest.raises(UsageError, match="index 3 cannot follow index 1 .*no gap"):
            wal.append([WalEntry(1, 1, b"a"), WalEntry(3, 1, b"b")])
        with pytest.raises(UsageError, match="index 2 cannot follow index 0"):
            wal.append([WalEntry(2, 1, b"a")])
        assert wal.last_index == 0
    wal, state = WAL.open(waldir)
    wal.close()
    assert state.entries == []


def test_snapshot_marker_and_conf_state(waldir: str) -> None:
    marker = SnapshotMarker(index=5, term=1, voters=[3, 1, 2], learners=[9])
    with WAL.create(waldir, META) as wal:
        wal.append(ents(1, 8))
        wal.save_snapshot(marker)
    wal, state = WAL.open(waldir)
    wal.close()
    assert state.snapshot == marker and state.snapshot.voters == (1, 2, 3)
    assert [e.index for e in state.entries] == [6, 7, 8]


def test_snapshot_beyond_log_then_new_entries(waldir: str) -> None:
    """A follower installing a leader's snapshot ahead of its own log."""
    with WAL.create(waldir, META) as wal:
        wal.append(ents(1, 3))
        wal.save_snapshot(SnapshotMarker(100, 4))
        wal.append(ents(101, 102, term=4))
    wal, state = WAL.open(waldir)
    wal.close()
    assert [e.index for e in state.entries] == [101, 102]
    assert wal.last_index == 102


# -- torn tails ------------------------------------------------------------------------------

def _write_log(waldir: str, n: int = 20) -> str:
    with WAL.create(waldir, META) as wal:
        for lo in range(1, n + 1, 4):
            wal.append(ents(lo, min(lo + 3, n)), HardState(1, 1, min(lo + 3, n)))
            wal.sync()
    return wal.segments()[-1]


def test_truncation_anywhere_in_last_record_is_repaired(waldir: str, caplog) -> None:
    path = _write_log(waldir)
    data = Path(path).read_bytes()
    last = entry_frames(path)[-1]
    end = last.offset + HEADER_SIZE + len(last.data) + (-len(last.data) % 8)
    # Every cut inside the last entry frame or the hard state after it is a torn write.
    for cut in range(last.offset + 1, len(data)):
        Path(path).write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="securekv.storage.wal"):
            wal, state = WAL.open(waldir)
        wal.close()
        if cut < end:
            assert [e.index for e in state.entries] == list(range(1, 20))
            assert state.hard_state == HardState(1, 1, 16)
            assert state.repaired == cut - last.offset
        else:
            assert [e.index for e in state.entries] == list(range(1, 21))
            assert state.repaired == cut - end
        if state.repaired:
            assert "torn tail" in caplog.text and path in caplog.text
    # and the repaired log accepts new appends that survive the next open
    wal, state = WAL.open(waldir)
    with wal:
        wal.append([WalEntry(wal.last_index + 1, 1, b"after-repair")])
    wal, state2 = WAL.open(waldir)
    wal.close()
    assert state2.entries[-1].data == b"after-repair" and state2.repaired == 0


def test_truncated_mid_record_loses_only_that_record(waldir: str) -> None:
    path = _write_log(waldir)
    frames = entry_frames(path)
    target = frames[-3]  # entry 18; entries 19, 20 follow
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:target.offset + HEADER_SIZE + 3])
    wal, state = WAL.open(waldir)
    wal.close()
    assert [e.index for e in state.entries] == list(range(1, 18))
    assert os.path.getsize(path) == target.offset


@pytest.mark.parametrize("garbage", [b"\0" * 4096, b"\xff" * 7, b"junk" * 100, b"\0" * 3])
def test_garbage_after_the_last_record_is_cut(waldir: str, garbage: bytes) -> None:
    path = _write_log(waldir)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(garbage)
    wal, state = WAL.open(waldir)
    wal.close()
    assert [e.index for e in state.entries] == list(range(1, 21))
    assert state.repaired == len(garbage) and os.path.getsize(path) == size


def test_random_garbage_tails_are_cut(waldir: str) -> None:
    path = _write_log(waldir)
    data = Path(path).read_bytes()
    rng = random.Random(7)
    for _ in range(50):
        Path(path).write_bytes(data + rng.randbytes(rng.randint(1, 300)))
        wal, state = WAL.open(waldir)
        wal.close()
        assert len(state.entries) == 20


# -- corruption ------------------------------------------------------------------------------

def test_every_flipped_byte_of_a_middle_record_is_refused(waldir: str) -> None:
    path = _write_log(waldir)
    data = Path(path).read_bytes()
    frame = entry_frames(path)[9]
    end = frame.offset + HEADER_SIZE + len(frame.data) + (-len(frame.data) % 8)
    for pos in range(frame.offset, end):
        damaged = bytearray(data)
        damaged[pos] ^= 0x40
        Path(path).write_bytes(bytes(damaged))
        with pytest.raises(CorruptionError) as info:
            WAL.open(waldir)
        assert f"{path} at byte offset {frame.offset}" in str(info.value), pos
    Path(path).write_bytes(data)
    WAL.open(waldir)[0].close()  # the lock was released by the failed opens


def test_corruption_message_names_file_and_offset(waldir: str) -> None:
    path = _write_log(waldir)
    frame = entry_frames(path)[3]
    with open(path, "r+b") as f:
        f.seek(frame.offset + HEADER_SIZE + 2)
        f.write(b"X")
    with pytest.raises(CorruptionError, match=rf"{re.escape(path)} at byte offset {frame.offset}: "
                                              r"crc mismatch .*not a torn write"):
        WAL.open(waldir)
    assert os.path.getsize(path) == len(Path(path).read_bytes())  # nothing was cut


def test_damage_in_an_older_segment_is_refused_even_at_its_end(waldir: str) -> None:
    with WAL.create(waldir, META, segment_size=2048) as wal:
        for lo in range(1, 200, 5):
            wal.append(ents(lo, lo + 4))
    first = wal.segments()[0]
    size = os.path.getsize(first)
    with open(first, "r+b") as f:
        f.truncate(size - 5)
    with pytest.raises(CorruptionError, match=rf"{re.escape(first)} at byte offset \d+: .*"
                                              "not the last segment"):
        WAL.open(waldir)


def test_missing_middle_segment_is_refused(waldir: str) -> None:
    with WAL.create(waldir, META, segment_size=2048) as wal:
        for lo in range(1, 200, 5):
            wal.append(ents(lo, lo + 4))
    segs = wal.segments()
    assert len(segs) >= 3
    os.unlink(segs[1])
    with pytest.raises(CorruptionError, match="missing"):
        WAL.open(waldir)


def test_swapped_segment_breaks_the_chain(waldir: str, tmp_path: Path) -> None:
    """A segment from another log with the right name is caught by the crc chain."""
    other = str(tmp_path / "other")
    for d in (waldir, other):
        with WAL.create(d, META, segment_size=2048) as wal:
            for lo in range(1, 100, 5):
                wal.append(ents(lo, lo + 4, tag=d))
    mine, theirs = WAL.open(waldir)[0], WAL.open(other)[0]
    mine.close(), theirs.close()
    os.replace(theirs.segments()[1], mine.segments()[1])
    with pytest.raises(CorruptionError, match="chain"):
        WAL.open(waldir)


# -- segments ----------------------------------------------------------------------------------

def test_rollover_and_release_before(waldir: str) -> None:
    with WAL.create(waldir, META, segment_size=4096) as wal:
        for lo in range(1, 401, 8):
            wal.append(ents(lo, lo + 7), HardState(1, 1, lo + 7))
            wal.sync()
        segs = wal.segments()
        assert len(segs) > 5
        firsts = [int(os.path.basename(s)[17:33], 16) for s in segs]
        assert firsts == sorted(firsts) and firsts[0] == 1
        with pytest.raises(UsageError, match="snapshot"):
            wal.release_before(200)
        wal.save_snapshot(SnapshotMarker(200, 1))
        deleted = wal.release_before(200)
        assert deleted and all(not os.path.exists(p) for p in deleted)
        assert all(f - 1 <= 200 for f in firsts[1:len(deleted) + 1])
        remaining = wal.segments()
        assert int(os.path.basename(remaining[0])[17:33], 16) <= 201
        wal.append(ents(401, 410), HardState(1, 1, 410))
    wal, state = WAL.open(waldir, segment_size=4096)
    wal.close()
    assert state.snapshot == SnapshotMarker(200, 1)
    assert [e.index for e in state.entries] == list(range(201, 411))
    assert state.hard_state == HardState(1, 1, 410)
    assert state.metadata == META


def test_release_keeps_hard_state_and_snapshot_via_segment_headers(waldir: str) -> None:
    """After releasing, the state saved before the first kept segment is still known."""
    with WAL.create(waldir, META, segment_size=1024) as wal:
        wal.append(ents(1, 50), HardState(5, 2, 50))
        wal.save_snapshot(SnapshotMarker(50, 5, voters=[1, 2, 3]))
        for lo in range(51, 151, 10):
            wal.append(ents(lo, lo + 9, term=5))
        wal.release_before(50)
        assert len(wal.segments()) < 12
    wal, state = WAL.open(waldir)
    wal.close()
    assert state.hard_state == HardState(5, 2, 50)
    assert state.snapshot == SnapshotMarker(50, 5, voters=[1, 2, 3])
    assert [e.index for e in state.entries] == list(range(51, 151))


def test_segment_left_half_created_is_ignored(waldir: str) -> None:
    with WAL.create(waldir, META) as wal:
        wal.append(ents(1, 3))
    Path(waldir, "0000000000000002-0000000000000004.wal.tmp").write_bytes(b"partial")
    wal, state = WAL.open(waldir)
    wal.close()
    assert len(state.entries) == 3
    assert not any(n.endswith(".tmp") for n in os.listdir(waldir))


def test_closed_wal_refuses_use(waldir: str) -> None:
    wal = WAL.create(waldir, META)
    wal.close()
    with pytest.raises(UsageError, match="closed"):
        wal.append(ents(1, 1))


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_a_model(tmp_path: Path, seed: int) -> None:
    """Appends with Raft-style truncation, snapshots, releases, rollovers and reopens, checked
    against a plain list after every reopen."""
    rng = random.Random(seed)
    waldir = str(tmp_path / "wal")
    wal = WAL.create(waldir, META, segment_size=1024)
    log: list[WalEntry] = []  # every live entry, index = position + 1
    snap: SnapshotMarker | None = None
    hs = HardState()
    term = 1
    try:
        for step in range(300):
            op = rng.random()
            snap_index = snap.index if snap else 0
            if op < 0.6:
                last = len(log)
                count = rng.randint(0, 6)  # an empty batch truncates nothing
                start = rng.randint(max(snap_index + 1, last - 4), last + 1) if count else last + 1
                if start <= last:
                    term += 1
                batch = [WalEntry(i, term, rng.randbytes(rng.randint(0, 80)))
                         for i in range(start, start + count)]
                del log[start - 1:]
                log.extend(batch)
                hs = HardState(term, 1, len(log)) if rng.random() < 0.5 else hs
                wal.append(batch, hs)
            elif op < 0.7 and len(log) > snap_index:
                snap = SnapshotMarker(rng.randint(snap_index, len(log)), term, voters=[1])
                wal.save_snapshot(snap)
            elif op < 0.8 and snap is not None:
                wal.release_before(rng.randint(0, snap.index))
            elif op < 0.9:
                wal.close()
                wal, state = WAL.open(waldir, segment_size=1024)
                snap_index = snap.index if snap else 0
                assert state.snapshot == snap, step
                assert state.hard_state == hs, step
                assert state.entries == log[snap_index:], step
                assert wal.last_index == max(len(log), snap_index)
    finally:
        wal.close()
    assert len(wal.segments()) >= 1


def test_random_damage_is_refused_or_cut_never_misread(tmp_path: Path) -> None:
    """Flip, zero or cut bytes anywhere: open either refuses, or returns a prefix of the
    true log (only when the damage is in the last segment's final records)."""
    rng = random.Random(99)
    pristine = tmp_path / "pristine"
    truth = []
    with WAL.create(pristine, META, segment_size=2048) as wal:
        for lo in range(1, 121, 6):
            batch = [WalEntry(i, 1, rng.randbytes(rng.randint(1, 90))) for i in range(lo, lo + 6)]
            truth += batch
            wal.append(batch, HardState(1, 1, lo + 5))
            wal.sync()
    names = sorted(os.listdir(pristine))
    segs = [n for n in names if n.endswith(".wal")]
    originals = {n: (pristine / n).read_bytes() for n in segs}
    refused = cut = 0
    for trial in range(150):
        work = tmp_path / f"t{trial}"
        work.mkdir()
        for n, data in originals.items():
            (work / n).write_bytes(data)
        victim = rng.choice(segs)
        data = bytearray(originals[victim])
        pos = rng.randrange(len(data))
        kind = rng.choice(["flip", "zero", "cut"])
        if kind == "flip":
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == "zero":
            n = rng.randint(1, 64)
            data[pos:pos + n] = bytes(len(data[pos:pos + n]))
        else:
            del data[pos:]
        if bytes(data) == originals[victim]:
            continue  # zeroed bytes that were zero already (padding)
        (work / victim).write_bytes(bytes(data))
        try:
            wal, state = WAL.open(work)
        except CorruptionError as exc:
            assert str(work / victim) in str(exc), (kind, pos, str(exc))
            assert re.search(r"at byte offset \d+", str(exc))
            refused += 1
            continue
        wal.close()
        assert victim == segs[-1], f"damage in {victim} ({kind} at {pos}) was not refused"
        assert state.entries == truth[:len(state.entries)]
        cut += state.repaired > 0 or len(state.entries) < len(truth)
    assert refused > 50 and cut > 0


def test_gap_after_the_snapshot_names_file_and_offset(waldir: str) -> None:
    with WAL.create(waldir, META) as wal:
        wal.append(ents(1, 10))
        wal._last_index = 20  # forge a log with entries 11..20 missing (append refuses gaps)
        wal.append(ents(21, 22))
    path = wal.segments()[-1]
    offset = [f.offset for f in entry_frames(path)][10]
    with pytest.raises(CorruptionError, match=rf"{re.escape(path)} at byte offset {offset}: "
                                              r"entries 11\.\.20 are missing before entry 21"):
        WAL.open(waldir)
