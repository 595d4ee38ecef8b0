"""Write-ahead log: segment files of CRC-chained, 8-byte aligned frames.

Frame layout (little endian), see docs/storage.md for the reasoning::

    u32 length | u8 type | u8 pad | u16 hcheck | u32 prev_crc | u32 crc | data | pad zeros

``hcheck`` (crc32 of the first six bytes, low 16 bits) makes a torn or damaged length
detectable before it is trusted. ``crc = crc32(header[0:6] + data, seed=prev_crc)``, and
``prev_crc`` must equal the crc of the frame before it: each frame can be checked on its own
(which tells damage inside the log from a torn tail) and the chain catches lost, reordered or
spliced frames. Every segment starts with a CRC_SEED frame whose ``prev_crc`` is the last crc
of the previous segment, then METADATA, the latest HARD_STATE and SNAPSHOT marker, so a
segment is a valid starting point once older ones are released.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import struct
import tempfile
import zlib
from typing import Any, Iterable, NamedTuple

import attrs

from ..errors import CorruptionError, DiskFullError, UsageError
from ..fsutil import create_temp, fsync_dir
from . import records as rec
from .lock import DirLock, lock_data_dir
from .records import HardState, Metadata, RecordType, SnapshotMarker, WalEntry

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
#: Buffered frames are written to the file once this many bytes are pending (and on sync).
FLUSH_THRESHOLD = 1024 * 1024
#: No single record may be larger (the length field is u32; etcd caps requests far lower).
MAX_RECORD = 1 << 30

_HEAD = struct.Struct("<IBBHII")
_HEAD6 = struct.Struct("<IBB")
HEADER_SIZE = _HEAD.size  # 16
ALIGN = 8
_SEGMENT_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_TYPES = frozenset(int(t) for t in RecordType)
_ENTRY, _HARD_STATE = int(RecordType.ENTRY), int(RecordType.HARD_STATE)


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _disk_full(exc: BaseException, path: str, what: str) -> DiskFullError | None:
    """An ENOSPC/EDQUOT as the typed error that says what could not be written where."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return DiskFullError(f"WAL {path}: no space left on device while {what} "
                             f"({exc.strerror}); nothing acknowledged is lost: free space and restart")
    return None


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


_PADDING = tuple(b"\0" * n for n in range(ALIGN))


def _frame_head(rtype: int, data: bytes, prev_crc: int) -> tuple[bytes, bytes, int]:
    """A frame as its parts: header, padding, and its crc (the next frame's ``prev_crc``)."""
    size = len(data)
    if size > MAX_RECORD:
        raise UsageError(f"WAL record of {size} bytes exceeds the {MAX_RECORD} byte limit")
    pad = -size % ALIGN
    head6 = _HEAD6.pack(size, rtype, pad)
    crc = zlib.crc32(data, zlib.crc32(head6, prev_crc))
    return _HEAD.pack(size, rtype, pad, zlib.crc32(head6) & 0xFFFF, prev_crc, crc), _PADDING[pad], crc


def encode_frame(rtype: int, data: bytes, prev_crc: int) -> tuple[bytes, int]:
    """The bytes of one frame and its crc (the next frame's ``prev_crc``)."""
    head, pad, crc = _frame_head(rtype, data, prev_crc)
    return head + data + pad, crc


class Frame(NamedTuple):
    """One checked frame (a tuple: the reader makes hundreds of thousands at startup)."""

    offset: int
    type: int
    data: bytes
    prev_crc: int
    crc: int


@attrs.frozen
class _Bad:
    offset: int
    reason: str
    chain: bool = False  # a self-consistent frame with a broken chain: never a torn write


def _check_frame(buf: bytes | memoryview, off: int) -> tuple[Frame | None, str]:
    """Parse and self-check the frame at ``off``; (frame, "") or (None, why not)."""
    size = len(buf)
    if size - off < HEADER_SIZE:
        return None, f"incomplete frame header ({size - off} of {HEADER_SIZE} bytes)"
    length, rtype, pad, hcheck, prev_crc, crc = _HEAD.unpack_from(buf, off)
    head6 = bytes(buf[off:off + 6])
    if zlib.crc32(head6) & 0xFFFF != hcheck:
        return None, "frame header checksum mismatch"
    if rtype not in _TYPES or pad != -length % ALIGN or length > MAX_RECORD:
        return None, f"invalid frame header (type {rtype}, length {length}, pad {pad})"
    start = off + HEADER_SIZE
    end = start + length + pad
    if end > size:
        return None, f"frame of {length} bytes extends past the end of the file"
    data = bytes(buf[start:start + length])
    if zlib.crc32(data, zlib.crc32(head6, prev_crc)) != crc:
        return None, "crc mismatch"
    if pad and any(buf[start + length:end]):
        return None, "non-zero frame padding"
    return Frame(off, rtype, data, prev_crc, crc), ""


def scan_frames(buf: bytes, prev_crc: int | None) -> tuple[list[Frame], _Bad | None]:
    """All valid chained frames from the start of ``buf``, and the first problem if any.

    ``prev_crc`` is the crc the first frame must chain to (None: accept what it says).
    """
    frames: list[Frame] = []
    off = 0
    view = memoryview(buf)
    while off < len(buf):
        frame, why = _check_frame(view, off)
        if frame is None:
            return frames, _Bad(off, why)
        if prev_crc is not None and frame.prev_crc != prev_crc:
            return frames, _Bad(off, f"crc chain broken (frame links to {frame.prev_crc:#010x}, "
                                     f"previous frame ends at {prev_crc:#010x})", chain=True)
        frames.append(frame)
        prev_crc = frame.crc
        off += HEADER_SIZE + len(frame.data) + (-len(frame.data) % ALIGN)
    return frames, None


def valid_frame_after(buf: bytes, off: int) -> int | None:
    """Offset of a self-consistent frame at an aligned offset after ``off``, if any.

    Its presence means the damage at ``off`` was followed by records that reached the disk
    intact: that is damage in the middle of the log, not a torn write at its end.
    """
    view = memoryview(buf)
    size = len(buf)
    unpack = _HEAD.unpack_from
    for p in range(off + ALIGN, size - HEADER_SIZE + 1, ALIGN):
        length, rtype, pad, _h, _p, _c = unpack(view, p)
        if rtype in _TYPES and pad == -length % ALIGN and p + HEADER_SIZE + length + pad <= size:
            frame, _why = _check_frame(view, p)
            if frame is not None:
                return p
    return None


@attrs.frozen
class ReadResult:
    metadata: Metadata
    hard_state: HardState
    snapshot: SnapshotMarker | None
    entries: list[WalEntry]
    #: Bytes cut from a torn tail of the last segment while opening (0 if none).
    repaired: int = 0


@attrs.frozen
class _Segment:
    seq: int
    first_index: int
    path: str


def _list_segments(directory: str) -> list[_Segment]:
    found = []
    for name in os.listdir(directory):
        match = _SEGMENT_RE.match(name)
        if match:
            found.append(_Segment(int(match[1], 16), int(match[2], 16),
                                  os.path.join(directory, name)))
    found.sort(key=lambda s: s.seq)
    return found


def _write_file_durably(path: str, data: bytes) -> None:
    """Create ``path`` via a temp file + fsync + rename + directory fsync."""
    directory = os.path.dirname(path)
    stem = os.path.basename(path).removesuffix(".wal")
    # "<stem>.<random>.wal.tmp": random (O_EXCL|O_NOFOLLOW), and still matched by the ".wal.tmp"
    # clean-up of WAL.open after a crash.
    fd, tmp = create_temp(directory, f"{stem}.", ".wal.tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


class WAL:
    """An open log, positioned for appending. Not thread-safe; blocking I/O."""

    def __init__(self, directory: str, lock: DirLock, segments: list[_Segment], *,
                 metadata: Metadata, crc: int, offset: int, last_index: int,
                 hard_state: HardState, snapshot: SnapshotMarker | None,
                 segment_size: int) -> None:
        self.directory = directory
        self.metadata = metadata
        self.segment_size = segment_size
        self._lock = lock
        self._segments = segments
        self._crc = crc
        self._offset = offset
        self._buf = bytearray()
        self._last_index = last_index
        self._hard_state = hard_state
        self._snapshot = snapshot
        self._failed: BaseException | None = None
        self._fd: int | None = os.open(segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    # -- construction ----------------------------------------------------------------------
    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        directory = os.fspath(directory)
        return os.path.isdir(directory) and bool(_list_segments(directory))

    @classmethod
    def create(cls, directory: str | os.PathLike[str], metadata: Metadata, *,
               segment_size: int = DEFAULT_SEGMENT_SIZE) -> WAL:
        """A new, empty log in ``directory`` (which must not hold one already).

        The first segment is built in ``<dir>.tmp-<random>`` and the directory renamed into place, so
        a crash leaves either no WAL or a complete one.
        """
        directory = os.path.abspath(os.fspath(directory))
        if cls.exists(directory):
            raise UsageError(f"a WAL already exists in {directory}")
        if os.path.isdir(directory) and os.listdir(directory):
            raise UsageError(f"cannot create a WAL in {directory}: the directory is not empty")
        parent = os.path.dirname(directory)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        base = os.path.basename(directory)
        for stale in os.listdir(parent):  # a create cut short by a crash
            if stale.startswith(base + ".tmp-") and os.path.isdir(os.path.join(parent, stale)):
                shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
        first, crc = cls._segment_header(1, 0, metadata, HardState(), None)
        tmpdir = ""
        try:
            tmpdir = tempfile.mkdtemp(prefix=base + ".tmp-", dir=parent)  # random name, 0700
            _write_file_durably(os.path.join(tmpdir, segment_name(1, 1)), first)
        except OSError as exc:
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
            full = _disk_full(exc, directory, "creating it")
            if full is not None:
                raise full from exc
            raise
        if os.path.isdir(directory):
            os.rmdir(directory)  # empty (checked above); rename cannot replace it
        os.rename(tmpdir, directory)
        fsync_dir(parent)
        lock = lock_data_dir(directory)
        segments = [_Segment(1, 1, os.path.join(directory, segment_name(1, 1)))]
        return cls(directory, lock, segments, metadata=metadata, crc=crc, offset=len(first),
                   last_index=0, hard_state=HardState(), snapshot=None,
                   segment_size=segment_size)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *,
             segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[WAL, ReadResult]:
        """Read the whole log, repair a torn tail, and return it ready for appending.

        Raises CorruptionError (naming the file and byte offset) for damage anywhere but in
        the tail of the last segment, and UsageError if there is no WAL or it is locked.
        """
        directory = os.path.abspath(os.fspath(directory))
        if not cls.exists(directory):
            raise UsageError(f"no WAL in {directory}")
        lock = lock_data_dir(directory, create=False)
        try:
            for name in os.listdir(directory):
                if name.endswith(".wal.tmp"):  # a segment whose creation never completed
                    os.unlink(os.path.join(directory, name))
            segments = _list_segments(directory)
            state = _Reader(segments).read()
            return cls(directory, lock, segments, metadata=state.metadata, crc=state.crc,
                       offset=state.end, last_index=state.last_index,
                       hard_state=state.hard_state, snapshot=state.snapshot,
                       segment_size=segment_size), state.result
        except BaseException:
            lock.release()
            raise

    @staticmethod
    def _segment_header(seq: int, prev_crc: int, metadata: Metadata, hard_state: HardState,
                        snapshot: SnapshotMarker | None) -> tuple[bytes, int]:
        parts = []
        frame, crc = encode_frame(RecordType.CRC_SEED, rec.encode_seed(seq), prev_crc)
        parts.append(frame)
        frame, crc = encode_frame(RecordType.METADATA, rec.encode_metadata(metadata), crc)
        parts.append(frame)
        if hard_state != HardState():
            frame, crc = encode_frame(RecordType.HARD_STATE, rec.encode_hard_state(hard_state), crc)
            parts.append(frame)
        if snapshot is not None:
            frame, crc = encode_frame(RecordType.SNAPSHOT, rec.encode_snapshot(snapshot), crc)
            parts.append(frame)
        return b"".join(parts), crc

    # -- writing ---------------------------------------------------------------------------
    @property
    def last_index(self) -> int:
        return self._last_index

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def snapshot(self) -> SnapshotMarker | None:
        return self._snapshot

    def segments(self) -> list[str]:
        return [s.path for s in self._segments]

    def append(self, entries: Iterable[Any] = (), hard_state: Any | None = None) -> None:
        """Buffer ``entries`` then ``hard_state``; durable only after :meth:`sync`.

        An entry at an index at or below :attr:`last_index` replaces that entry and all after
        it (Raft log truncation); readers apply the same rule.
        """
        self._check_usable()
        if entries:
            encoded = []
            prev = self._last_index
            for entry in entries:  # validate the whole batch before buffering any of it
                if not 1 <= entry.index <= prev + 1:
                    raise UsageError(f"WAL entry index {entry.index} cannot follow index {prev} "
                                     "(must be >= 1 and leave no gap)")
                prev = entry.index
                encoded.append(rec.encode_entry(entry))
            for data in encoded:
                self._add(_ENTRY, data)
            self._last_index = prev
        if hard_state is not None:
            hs = HardState(hard_state.term, hard_state.vote, hard_state.commit)
            self._add(_HARD_STATE, rec.encode_hard_state(hs))
            self._hard_state = hs
        if len(self._buf) >= FLUSH_THRESHOLD:
            self._flush()
        if self._offset + len(self._buf) >= self.segment_size:
            self._cut()

    def save_snapshot(self, marker: SnapshotMarker) -> None:
        """Record (and sync) that a snapshot at ``marker.index`` is durable elsewhere."""
        self._check_usable()
        self._add(RecordType.SNAPSHOT, rec.encode_snapshot(marker))
        self._snapshot = marker
        if marker.index > self._last_index:
            self._last_index = marker.index
        self.sync()

    def sync(self) -> None:
        """Write buffered frames and fdatasync: everything appended so far is now durable."""
        self.write()
        self.datasync()

    def write(self) -> None:
        """Hand the buffered frames to the file (not durable until :meth:`datasync`).

        With :meth:`datasync` this is :meth:`sync` in two steps, so the node loop writes in its
        own thread and hands only the fdatasync (a C call without the GIL) to its sync thread."""
        self._check_usable()
        self._flush()

    def datasync(self) -> None:
        """fdatasync: every frame :meth:`write` handed to the file is now durable."""
        self._check_usable()
        try:
            os.fdatasync(self._fd)  # type: ignore[arg-type]  # (_check_usable: open)
        except BaseException as exc:
            self._failed = exc
            full = _disk_full(exc, self._segments[-1].path, "syncing")
            if full is not None:
                raise full from exc
            raise

    def release_before(self, index: int) -> list[str]:
        """Delete the oldest segments whose entries are all at or below ``index``.

        ``index`` must not exceed the last saved snapshot marker (the entries after it are
        still needed at restart). The last segment is never deleted. Returns deleted paths.
        """
        self._check_usable()
        limit = self._snapshot.index if self._snapshot is not None else 0
        if index > limit:
            raise UsageError(f"cannot release WAL entries up to {index}: the last snapshot "
                             f"marker is at {limit}")
        deleted = []
        while len(self._segments) > 1 and self._segments[1].first_index - 1 <= index:
            seg = self._segments.pop(0)
            os.unlink(seg.path)
            deleted.append(seg.path)
        if deleted:
            fsync_dir(self.directory)
        return deleted

    def close(self) -> None:
        """Sync what is buffered (unless the log failed) and release the files and lock."""
        if self._fd is None:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            os.close(self._fd)
            self._fd = None
            self._lock.release()

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_usable(self) -> None:
        if self._fd is None:
            raise UsageError(f"WAL {self.directory} is closed")
        if self._failed is not None:
            raise UsageError(f"WAL {self.directory} failed earlier ({self._failed!r}); "
                             "restart to recover from the synced state")

    def _add(self, rtype: int, data: bytes) -> None:
        head, pad, self._crc = _frame_head(rtype, data, self._crc)
        buf = self._buf
        buf += head  # (into the buffer part by part: no frame-sized copy in between)
        buf += data
        buf += pad

    def _flush(self) -> None:
        if not self._buf:
            return
        assert self._fd is not None
        view = memoryview(self._buf)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._offset += n
        except BaseException as exc:
            self._failed = exc  # the file now ends mid-frame: only a reopen may repair it
            full = _disk_full(exc, self._segments[-1].path, "appending")
            if full is not None:
                raise full from exc
            raise
        finally:
            view.release()
        self._buf.clear()

    def _cut(self) -> None:
        """Seal the current segment (synced) and start the next one."""
        self.sync()
        last = self._segments[-1]
        seq = last.seq + 1
        path = os.path.join(self.directory, segment_name(seq, self._last_index + 1))
        header, crc = self._segment_header(seq, self._crc, self.metadata, self._hard_state,
                                           self._snapshot)
        try:
            _write_file_durably(path, header)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except BaseException as exc:
            self._failed = exc
            with contextlib.suppress(OSError):  # a segment that was never completed
                os.unlink(path + ".tmp")
            full = _disk_full(exc, path, "creating the next segment")
            if full is not None:
                raise full from exc
            raise
        assert self._fd is not None
        os.close(self._fd)
        self._fd = fd
        self._crc = crc
        self._offset = len(header)
        self._segments.append(_Segment(seq, self._last_index + 1, path))


@attrs.define
class _State:
    metadata: Metadata
    hard_state: HardState
    snapshot: SnapshotMarker | None
    entries: list[WalEntry]
    crc: int
    end: int
    last_index: int
    repaired: int

    @property
    def result(self) -> ReadResult:
        return ReadResult(self.metadata, self.hard_state, self.snapshot, self.entries,
                          self.repaired)


class _Reader:
    """Replays segments in order, applying the "later records win" rule for entries."""

    def __init__(self, segments: list[_Segment]) -> None:
        self.segments = segments
        self.metadata: Metadata | None = None
        self.hard_state = HardState()
        self.snapshot: SnapshotMarker | None = None
        self.entries: list[WalEntry] = []
        self.last_index = 0
        self.run_start = ("", 0)  # file and offset of entries[0], for error messages
        self.run_after: int | None = None  # last index before entries[0] jumped ahead
        self.where = ("", 0)  # the frame being applied

    def read(self) -> _State:
        for prev, seg in zip(self.segments, self.segments[1:]):
            if seg.seq != prev.seq + 1:
                raise CorruptionError(f"WAL segment {prev.seq + 1:016x} is missing between "
                                      f"{prev.path} and {seg.path}")
        crc: int | None = None
        end = 0
        repaired = 0
        for i, seg in enumerate(self.segments):
            is_last = i == len(self.segments) - 1
            with open(seg.path, "rb") as f:
                buf = f.read()
            frames, bad = scan_frames(buf, crc)
            if frames:
                self._check_version(seg.path, frames[0])
            if bad is not None and bad.chain and bad.offset == 0:
                prev = self.segments[i - 1].path
                raise CorruptionError(
                    f"WAL corruption in {seg.path} at byte offset 0: {bad.reason}: the "
                    f"previous segment {prev} was truncated, damaged or comes from another log")
            if bad is not None:
                self._judge(seg.path, buf, bad, is_last)
                repaired = len(buf) - bad.offset
                end = bad.offset
            else:
                end = len(buf)
            self._check_header(seg, frames)
            for frame in frames:
                self.where = (seg.path, frame.offset)
                try:
                    self._apply(frame)
                except CorruptionError as exc:
                    raise CorruptionError(f"WAL corruption in {seg.path} at byte offset "
                                          f"{frame.offset}: {exc}") from None
            crc = frames[-1].crc
            if bad is not None:
                self._truncate(seg.path, bad, len(buf))
        assert self.metadata is not None and crc is not None
        snap_index = self.snapshot.index if self.snapshot is not None else 0
        entries = [e for e in self.entries if e.index > snap_index]
        if entries and entries[0].index != snap_index + 1:
            path, offset = self.run_start
            first = entries[0].index
            after = self.run_after if self.run_after is not None else snap_index
            after = max(after, snap_index)
            raise CorruptionError(
                f"WAL corruption in {path} at byte offset {offset}: entries "
                f"{after + 1}..{first - 1} are missing before entry {first} "
                f"(last snapshot marker at {snap_index})")
        return _State(self.metadata, self.hard_state, self.snapshot, entries, crc, end,
                      self.last_index, repaired)

    def _judge(self, path: str, buf: bytes, bad: _Bad, is_last: bool) -> None:
        """Raise unless ``bad`` is a torn tail: damage at the end of the last segment."""
        where = f"WAL corruption in {path} at byte offset {bad.offset}: {bad.reason}"
        if not is_last:
            raise CorruptionError(f"{where} (not the last segment, so not a torn write)")
        if bad.chain:
            raise CorruptionError(where)
        later = valid_frame_after(buf, bad.offset)
        if later is not None:
            raise CorruptionError(f"{where} (an intact record follows at offset {later}, so "
                                  "this is damage inside the log, not a torn write)")

    @staticmethod
    def _check_version(path: str, first: Frame) -> None:
        """Before anything in a segment is judged: is it in a format this reader knows?"""
        if first.type != RecordType.CRC_SEED:
            return  # _check_header reports it
        try:
            version = rec.decode_seed(first.data).version
        except CorruptionError:
            return
        if version > rec.WAL_FORMAT_VERSION or version < 1:
            raise UsageError(f"WAL segment {path} is in format version {version}; this securekv reads "
                             f"versions 1 to {rec.WAL_FORMAT_VERSION} (was it written by a newer release?). "
                             "Nothing was changed.")

    def _check_header(self, seg: _Segment, frames: list[Frame]) -> None:
        if len(frames) < 2 or frames[0].type != RecordType.CRC_SEED \
                or frames[1].type != RecordType.METADATA:
            raise CorruptionError(f"WAL corruption in {seg.path} at byte offset 0: the segment "
                                  "does not start with a crc seed and metadata record")
        seq = rec.decode_seed(frames[0].data).seq
        if seq != seg.seq:
            raise CorruptionError(f"WAL corruption in {seg.path} at byte offset 0: segment "
                                  f"says it is number {seq}, its name says {seg.seq}")

    def _apply(self, frame: Frame) -> None:
        if frame.type == RecordType.ENTRY:
            self._add_entry(rec.decode_entry(frame.data))
        elif frame.type == RecordType.HARD_STATE:
            self.hard_state = rec.decode_hard_state(frame.data)
        elif frame.type == RecordType.SNAPSHOT:
            snap = rec.decode_snapshot(frame.data)
            self.snapshot = snap
            kept = [e for e in self.entries if e.index > snap.index]
            if kept and len(kept) < len(self.entries):
                self.run_start = self.where  # (the run now starts after the marker)
            self.run_after = None
            self.entries = kept
            self.last_index = max(self.last_index, snap.index)
        elif frame.type == RecordType.METADATA:
            meta = rec.decode_metadata(frame.data)
            if self.metadata is not None and meta != self.metadata:
                raise CorruptionError(f"metadata {meta} differs from the earlier {self.metadata}")
            self.metadata = meta

    def _add_entry(self, entry: WalEntry) -> None:
        """Later records win. A jump forward restarts the run: the skipped indexes were in
        released segments or covered by a snapshot marker, which :meth:`read` checks at the
        end (only entries after the last snapshot must be complete)."""
        entries = self.entries
        if entries:
            first, last = entries[0].index, entries[-1].index
            if entry.index > last + 1 or entry.index < first:
                entries.clear()
                self.run_after = last if entry.index > last + 1 else None
            elif entry.index <= last:
                del entries[entry.index - first:]
        if not entries:
            self.run_start = self.where
        entries.append(entry)
        self.last_index = entry.index

    @staticmethod
    def _truncate(path: str, bad: _Bad, size: int) -> None:
        cut = size - bad.offset
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, bad.offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning("WAL %s: cut a torn tail of %d bytes at byte offset %d (%s)",
                    path, cut, bad.offset, bad.reason)
