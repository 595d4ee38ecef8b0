"""Raft ``Message`` <-> bytes, and the peer stream's frames.

A fixed-layout ``struct`` encoding rather than protobuf: every field of a Raft message is an
integer, a bool or a byte string, so a flat big-endian layout is smaller, needs no generated
code, and decodes with one bounds check per variable-length field. Decoding never trusts a
length: malformed input raises :class:`PeerError` (the remote's fault), never IndexError.
"""

from __future__ import annotations

import enum
import struct
from typing import Iterator

from securekv.errors import PeerError
from securekv.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

# type, flags(bit0 reject, bit1 has snapshot), to, frm, term, log_term, index, commit, reject_hint,
# len(context), n_entries
_MSG_HEAD = struct.Struct(">BBQQQQQQQII")
_ENTRY_HEAD = struct.Struct(">QQBI")  # term, index, type, len(data)
_SNAP_HEAD = struct.Struct(">QQIIQ")  # index, term, n_voters, n_learners, len(data)
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

_REJECT = 1
_HAS_SNAPSHOT = 2


def encode_message(m: Message) -> bytes:
    """Serialise every field of ``m`` (entries, snapshot metadata, conf state, data)."""
    flags = (_REJECT if m.reject else 0) | (_HAS_SNAPSHOT if m.snapshot is not None else 0)
    parts: list[bytes] = [
        _MSG_HEAD.pack(int(m.type), flags, m.to, m.frm, m.term, m.log_term, m.index, m.commit,
                       m.reject_hint, len(m.context), len(m.entries)),
        m.context,
    ]
    for e in m.entries:
        parts.append(_ENTRY_HEAD.pack(e.term, e.index, int(e.type), len(e.data)))
        parts.append(e.data)
    if m.snapshot is not None:
        md = m.snapshot.metadata
        cs = md.conf_state
        parts.append(_SNAP_HEAD.pack(md.index, md.term, len(cs.voters), len(cs.learners), len(m.snapshot.data)))
        parts.extend(_U64.pack(v) for v in cs.voters)
        parts.extend(_U64.pack(v) for v in cs.learners)
        parts.append(m.snapshot.data)
    try:
        return b"".join(parts)
    except TypeError as exc:  # pragma: no cover - a caller bug, not a peer's
        raise ValueError(f"cannot encode raft message: {exc}") from None


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise PeerError(f"malformed peer message: truncated at byte {self.pos} (need {n} more)")
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))


_MTYPES = {int(t): t for t in MessageType}
_ETYPES = {int(t): t for t in EntryType}


def _short(pos: int, need: int) -> PeerError:
    return PeerError(f"malformed peer message: truncated at byte {pos} (need {need} more)")


def decode_message(data: bytes | memoryview) -> Message:
    """Inverse of :func:`encode_message`; raises PeerError on any malformed input.

    Hand-inlined offsets (no reader object): this runs once per received message.
    """
    buf = bytes(data)
    size = len(buf)
    if size < _MSG_HEAD.size:
        raise _short(0, _MSG_HEAD.size)
    (kind, flags, to, frm, term, log_term, index, commit, reject_hint, ctx_len, n_entries) = _MSG_HEAD.unpack_from(buf)
    mtype = _MTYPES.get(kind)
    if mtype is None:
        raise PeerError(f"malformed peer message: unknown message type {kind}")
    if flags & ~(_REJECT | _HAS_SNAPSHOT):
        raise PeerError(f"malformed peer message: unknown flags {flags:#x}")
    pos = _MSG_HEAD.size
    end = pos + ctx_len
    if end > size:
        raise _short(pos, ctx_len)
    context = buf[pos:end]
    pos = end
    # Each entry needs at least its header: refuse absurd counts before allocating anything.
    if n_entries * _ENTRY_HEAD.size > size - pos:
        raise PeerError(f"malformed peer message: {n_entries} entries cannot fit in {size} bytes")
    entries = []
    eh = _ENTRY_HEAD.size
    unpack_entry = _ENTRY_HEAD.unpack_from
    for _ in range(n_entries):
        if pos + eh > size:
            raise _short(pos, eh)
        e_term, e_index, e_type, d_len = unpack_entry(buf, pos)
        pos += eh
        etype = _ETYPES.get(e_type)
        if etype is None:
            raise PeerError(f"malformed peer message: unknown entry type {e_type}")
        end = pos + d_len
        if end > size:
            raise _short(pos, d_len)
        entries.append(Entry(e_term, e_index, etype, buf[pos:end]))
        pos = end
    snapshot = None
    if flags & _HAS_SNAPSHOT:
        if pos + _SNAP_HEAD.size > size:
            raise _short(pos, _SNAP_HEAD.size)
        s_index, s_term, n_voters, n_learners, d_len = _SNAP_HEAD.unpack_from(buf, pos)
        pos += _SNAP_HEAD.size
        ids_len = 8 * (n_voters + n_learners)
        if pos + ids_len > size:
            raise PeerError("malformed peer message: conf state larger than the message")
        voters = struct.unpack_from(f">{n_voters}Q", buf, pos)
        learners = struct.unpack_from(f">{n_learners}Q", buf, pos + 8 * n_voters)
        pos += ids_len
        end = pos + d_len
        if end > size:
            raise _short(pos, d_len)
        snapshot = Snapshot(SnapshotMetadata(s_index, s_term, ConfState(voters, learners)), buf[pos:end])
        pos = end
    if pos != size:
        raise PeerError(f"malformed peer message: {size - pos} trailing bytes")
    return Message(mtype, to, frm, term, log_term, index, tuple(entries), commit, bool(flags & _REJECT),
                   reject_hint, snapshot, context)


# --- frames ---------------------------------------------------------------------------------

class FrameKind(enum.IntEnum):
    HELLO = 1  # dialer -> listener: version, cluster id, sender id, intended receiver id
    HELLO_OK = 2  # listener -> dialer: version, cluster id, listener's member id
    REFUSE = 3  # either way, then close: utf-8 reason
    MSGS = 4  # batch of raft messages: (u32 len, message)*
    CHUNK = 5  # one piece of a frame too large for one frame (see encode_chunk)
    CALL = 6  # u64 call id, u8 len(kind), kind, payload
    REPLY = 7  # u64 call id, u8 status, payload (status != OK: utf-8 error text)
    PING = 8  # keepalive, empty


FRAME_HEAD = struct.Struct(">IB")  # payload length, kind
#: Largest payload of one frame; anything bigger travels as CHUNK frames.
MAX_FRAME = 1 << 20
#: Payload bytes per CHUNK frame (small enough that other frames interleave often).
CHUNK_DATA = 256 * 1024

PROTOCOL_VERSION = 1
MAGIC = b"SKVP"
_HELLO = struct.Struct(">4sHQQQ")
_HELLO_OK = struct.Struct(">4sHQQ")
_CHUNK_HEAD = struct.Struct(">QBBQ")  # transfer id, flags (1 first, 2 last), inner kind, total length
_CALL_HEAD = struct.Struct(">QB")
_REPLY_HEAD = struct.Struct(">QB")

CHUNK_FIRST = 1
CHUNK_LAST = 2

REPLY_OK = 0
REPLY_ERROR = 1
REPLY_UNKNOWN_KIND = 2


def frame(kind: FrameKind, payload: bytes = b"") -> bytes:
    return FRAME_HEAD.pack(len(payload), int(kind)) + payload


def encode_hello(cluster_id: int, sender: int, receiver: int, version: int = PROTOCOL_VERSION) -> bytes:
    return _HELLO.pack(MAGIC, version, cluster_id, sender, receiver)


def decode_hello(payload: bytes) -> tuple[int, int, int, int]:
    """-> (version, cluster_id, sender, receiver)."""
    if len(payload) != _HELLO.size:
        raise PeerError(f"malformed peer handshake: {len(payload)} bytes")
    magic, version, cluster, sender, receiver = _HELLO.unpack(payload)
    if magic != MAGIC:
        raise PeerError("malformed peer handshake: not a securekv peer")
    return version, cluster, sender, receiver


def encode_hello_ok(cluster_id: int, member_id: int) -> bytes:
    return _HELLO_OK.pack(MAGIC, PROTOCOL_VERSION, cluster_id, member_id)


def decode_hello_ok(payload: bytes) -> tuple[int, int, int]:
    """-> (version, cluster_id, member_id)."""
    if len(payload) != _HELLO_OK.size:
        raise PeerError(f"malformed peer handshake reply: {len(payload)} bytes")
    magic, version, cluster, member = _HELLO_OK.unpack(payload)
    if magic != MAGIC:
        raise PeerError("malformed peer handshake reply: not a securekv peer")
    return version, cluster, member


def encode_batch(encoded: list[bytes]) -> bytes:
    parts: list[bytes] = []
    for e in encoded:
        parts.append(_U32.pack(len(e)))
        parts.append(e)
    return b"".join(parts)


def iter_batch(payload: bytes) -> Iterator[memoryview]:
    """Split a MSGS payload into encoded messages (PeerError on bad lengths)."""
    r = _Reader(payload)
    while r.pos < len(r.buf):
        (n,) = r.unpack(_U32)
        yield r.take(n)


def chunk_frames(transfer_id: int, kind: FrameKind, payload: bytes, chunk: int = CHUNK_DATA) -> Iterator[bytes]:
    """Split one oversized frame into CHUNK frames (each one complete frame on the wire)."""
    total = len(payload)
    view = memoryview(payload)
    pos = 0
    first = True
    while True:
        piece = view[pos:pos + chunk]
        pos += len(piece)
        flags = (CHUNK_FIRST if first else 0) | (CHUNK_LAST if pos >= total else 0)
        yield frame(FrameKind.CHUNK, _CHUNK_HEAD.pack(transfer_id, flags, int(kind), total) + bytes(piece))
        first = False
        if pos >= total:
            return


def decode_chunk(payload: bytes) -> tuple[int, int, FrameKind, int, memoryview]:
    """-> (transfer_id, flags, inner kind, total length, data)."""
    if len(payload) < _CHUNK_HEAD.size:
        raise PeerError("malformed peer chunk: too short")
    tid, flags, kind, total = _CHUNK_HEAD.unpack_from(payload)
    try:
        inner = FrameKind(kind)
    except ValueError:
        raise PeerError(f"malformed peer chunk: unknown inner frame kind {kind}") from None
    if inner not in (FrameKind.MSGS, FrameKind.CALL, FrameKind.REPLY):
        raise PeerError(f"malformed peer chunk: {inner.name} frames are never chunked")
    return tid, flags, inner, total, memoryview(payload)[_CHUNK_HEAD.size:]


def encode_call(call_id: int, kind: str, payload: bytes) -> bytes:
    k = kind.encode()
    if not 0 < len(k) < 256:
        raise ValueError(f"call kind must be 1..255 bytes: {kind!r}")
    return _CALL_HEAD.pack(call_id, len(k)) + k + payload


def decode_call(payload: bytes) -> tuple[int, str, bytes]:
    r = _Reader(payload)
    call_id, klen = r.unpack(_CALL_HEAD)
    try:
        kind = bytes(r.take(klen)).decode()
    except UnicodeDecodeError:
        raise PeerError("malformed peer call: kind is not utf-8") from None
    return call_id, kind, bytes(r.buf[r.pos:])


def encode_reply(call_id: int, status: int, payload: bytes) -> bytes:
    return _REPLY_HEAD.pack(call_id, status) + payload


def decode_reply(payload: bytes) -> tuple[int, int, bytes]:
    if len(payload) < _REPLY_HEAD.size:
        raise PeerError("malformed peer reply: too short")
    call_id, status = _REPLY_HEAD.unpack_from(payload)
    return call_id, status, bytes(payload[_REPLY_HEAD.size:])


__all__ = [
    "encode_message", "decode_message", "FrameKind", "frame", "MAX_FRAME", "CHUNK_DATA",
    "PROTOCOL_VERSION", "encode_hello", "decode_hello", "encode_hello_ok", "decode_hello_ok",
    "encode_batch", "iter_batch", "chunk_frames", "decode_chunk", "encode_call", "decode_call",
    "encode_reply", "decode_reply", "FRAME_HEAD", "CHUNK_FIRST", "CHUNK_LAST", "REPLY_OK",
    "REPLY_ERROR", "REPLY_UNKNOWN_KIND",
]
