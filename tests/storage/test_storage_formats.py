"""On-disk format versions: the WAL records its format in the first frame of every segment; a
log from before that (an 8-byte crc seed) reads as version 1; a newer version is refused before
anything in the segment is judged — an unknown record is never taken for a torn write and cut."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from securekv.errors import UsageError
from securekv.storage import WAL, HardState, Metadata, WalEntry
from securekv.storage import records as rec
from securekv.storage.records import RecordType
from securekv.storage.wal import encode_frame, segment_name

META = Metadata(7, 8)


def first_seed(path: str) -> rec.Seed:
    data = Path(path).read_bytes()
    length = struct.unpack_from("<I", data)[0]
    return rec.decode_seed(data[16:16 + length])


def test_every_segment_records_the_format_version(tmp_path: Path) -> None:
    wal = WAL.create(tmp_path / "wal", META, segment_size=4096)
    for i in range(1, 40):
        wal.append([WalEntry(i, 1, b"x" * 300)], HardState(1, 1, i))
    wal.sync()
    segments = wal.segments()
    wal.close()
    assert len(segments) > 2
    assert {first_seed(s).version for s in segments} == {rec.WAL_FORMAT_VERSION}
    assert [first_seed(s).seq for s in segments] == list(range(1, len(segments) + 1))


def _legacy_segment(directory: Path, entries: int) -> None:
    """A segment exactly as written before the version was recorded (8-byte seed)."""
    directory.mkdir()
    parts, crc = [], 0
    for rtype, payload in [(RecordType.CRC_SEED, struct.pack("<Q", 1)),
                           (RecordType.METADATA, rec.encode_metadata(META)),
                           *[(RecordType.ENTRY, rec.encode_entry(WalEntry(i, 1, b"old"))) for i in range(1, entries + 1)],
                           (RecordType.HARD_STATE, rec.encode_hard_state(HardState(1, 1, entries)))]:
        frame, crc = encode_frame(rtype, payload, crc)
        parts.append(frame)
    (directory / segment_name(1, 1)).write_bytes(b"".join(parts))


def test_a_log_without_a_recorded_version_is_version_1(tmp_path: Path) -> None:
    _legacy_segment(tmp_path / "wal", 5)
    wal, state = WAL.open(tmp_path / "wal")
    with wal:
        assert [e.index for e in state.entries] == [1, 2, 3, 4, 5] and state.repaired == 0
        wal.append([WalEntry(6, 1, b"new")], HardState(1, 1, 6))
    wal, state = WAL.open(tmp_path / "wal")
    wal.close()
    assert state.entries[-1].data == b"new"


def test_a_newer_format_is_refused_and_nothing_is_cut(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    directory.mkdir()
    parts, crc = [], 0
    for rtype, payload in [(RecordType.CRC_SEED, rec.encode_seed(1, version=rec.WAL_FORMAT_VERSION + 1)),
                           (RecordType.METADATA, rec.encode_metadata(META)),
                           (RecordType.ENTRY, rec.encode_entry(WalEntry(1, 1, b"x")))]:
        frame, crc = encode_frame(rtype, payload, crc)
        parts.append(frame)
    # What a newer release might write: a record type this one does not know.
    unknown = bytearray(encode_frame(RecordType.ENTRY, b"future record", crc)[0])
    unknown[4] = 9
    data = b"".join(parts) + bytes(unknown)
    path = directory / segment_name(1, 1)
    path.write_bytes(data)
    with pytest.raises(UsageError, match=f"format version {rec.WAL_FORMAT_VERSION + 1}"):
        WAL.open(directory)
    assert path.read_bytes() == data


def test_seed_decoding() -> None:
    assert rec.decode_seed(struct.pack("<Q", 9)) == rec.Seed(9, 1)
    assert rec.decode_seed(rec.encode_seed(9)) == rec.Seed(9, rec.WAL_FORMAT_VERSION)
    with pytest.raises(Exception, match="crc seed record has 5 bytes"):
        rec.decode_seed(b"12345")
