"""Plain values the WAL stores, and their byte encodings.

They mirror the Raft core's types field by field (``securekv.raft.types``) but do not import
them, so the log format does not change when the core's classes do.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import attrs

from ..errors import CorruptionError


class RecordType(enum.IntEnum):
    """The kind of a WAL frame. Values are part of the on-disk format: never renumber."""

    CRC_SEED = 1  # first frame of every segment; its ``prev_crc`` carries the chain over
    METADATA = 2
    ENTRY = 3
    HARD_STATE = 4
    SNAPSHOT = 5


@attrs.frozen(slots=True)
class Metadata:
    """Who this log belongs to; written at the start of every segment and checked on open."""

    member_id: int
    cluster_id: int
    extra: bytes = b""


@attrs.frozen(slots=True)
class WalEntry:
    index: int
    term: int
    data: bytes = b""
    type: int = 0


@attrs.frozen(slots=True)
class HardState:
    term: int = 0
    vote: int = 0
    commit: int = 0


def _ids(value: Any) -> tuple[int, ...]:
    return tuple(sorted(set(int(v) for v in value)))


@attrs.frozen(slots=True)
class SnapshotMarker:
    """A snapshot at ``index``/``term`` exists (its data lives elsewhere: the backend or a file)."""

    index: int
    term: int
    voters: tuple[int, ...] = attrs.field(default=(), converter=_ids)
    learners: tuple[int, ...] = attrs.field(default=(), converter=_ids)


_U64 = struct.Struct("<Q")
_META = struct.Struct("<QQ")
_ENTRY = struct.Struct("<QQB")
_HARD = struct.Struct("<QQQ")
_SNAP = struct.Struct("<QQII")


def encode_metadata(m: Metadata) -> bytes:
    return _META.pack(m.member_id, m.cluster_id) + bytes(m.extra)


def decode_metadata(data: bytes) -> Metadata:
    _need(data, _META.size, "metadata")
    member, cluster = _META.unpack_from(data)
    return Metadata(member, cluster, bytes(data[_META.size:]))


def encode_entry(e: Any) -> bytes:
    """Any object with ``index``, ``term``, ``data`` (and optionally ``type``) is accepted."""
    return _ENTRY.pack(e.index, e.term, int(getattr(e, "type", 0))) + bytes(e.data)


def decode_entry(data: bytes) -> WalEntry:
    _need(data, _ENTRY.size, "entry")
    index, term, kind = _ENTRY.unpack_from(data)
    return WalEntry(index, term, bytes(data[_ENTRY.size:]), kind)


def encode_hard_state(h: Any) -> bytes:
    return _HARD.pack(h.term, h.vote, h.commit)


def decode_hard_state(data: bytes) -> HardState:
    _need(data, _HARD.size, "hard state", exact=True)
    return HardState(*_HARD.unpack(data))


def encode_snapshot(s: SnapshotMarker) -> bytes:
    voters, learners = tuple(s.voters), tuple(s.learners)
    return (_SNAP.pack(s.index, s.term, len(voters), len(learners))
            + b"".join(_U64.pack(v) for v in voters + learners))


def decode_snapshot(data: bytes) -> SnapshotMarker:
    _need(data, _SNAP.size, "snapshot marker")
    index, term, nv, nl = _SNAP.unpack_from(data)
    _need(data, _SNAP.size + 8 * (nv + nl), "snapshot marker", exact=True)
    ids = [_U64.unpack_from(data, _SNAP.size + 8 * i)[0] for i in range(nv + nl)]
    return SnapshotMarker(index, term, ids[:nv], ids[nv:])


#: The WAL's format version, written in the first frame of every segment (the crc seed), so a
#: reader knows what it is reading before it judges anything else in the segment. Version 1 is
#: this layout; a seed of only 8 bytes (logs written before the version was recorded) is 1 too.
#: A reader refuses a version newer than its own before reading further — never guessing that
#: an unknown record is a torn write and cutting it.
WAL_FORMAT_VERSION = 1
_SEED = struct.Struct("<QI")


@attrs.frozen(slots=True)
class Seed:
    seq: int
    version: int


def encode_seed(seq: int, version: int = WAL_FORMAT_VERSION) -> bytes:
    return _SEED.pack(seq, version)


def decode_seed(data: bytes) -> Seed:
    if len(data) == _U64.size:  # written before the format version was recorded
        return Seed(_U64.unpack(data)[0], 1)
    _need(data, _SEED.size, "crc seed", exact=True)
    return Seed(*_SEED.unpack(data))


def _need(data: bytes, size: int, what: str, exact: bool = False) -> None:
    if len(data) < size or (exact and len(data) != size):
        raise CorruptionError(f"{what} record has {len(data)} bytes, expected {size}")
