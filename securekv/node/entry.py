"""Client requests in their log-entry form: ``InternalRaftRequest`` bytes with the header first.

The header (who proposed it: member ID + a per-member unique request ID, the caller's user name
and auth revision) leads the entry, so the proposing member finds the waiting caller of an
applied entry without decoding it (:func:`peek_header`). A request received as bytes is made
into its entry without re-encoding the body (:meth:`EntryCodec.prepare`), then decoded once:
the leader applies exactly the bytes its followers apply.
"""

from __future__ import annotations

from typing import Any

import attrs

from securekv.proto import raft_internal_pb2
from securekv.rpctypes import ERR_REQUEST_TOO_LARGE, err


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int) -> bytes:
    return _varint((number << 3) | 2)  # length-delimited field


_FIELDS = raft_internal_pb2.InternalRaftRequest.DESCRIPTOR.fields_by_name
HEADER_TAG = _tag(_FIELDS["header"].number)
_ENTRY_TAGS = {name: _tag(f.number) for name, f in _FIELDS.items() if name != "header"}


@attrs.frozen
class Prepared:
    """A client request already in its log-entry form: ``data`` is what goes into the log and
    ``request`` was decoded from exactly those bytes (once), so the leader applies what its
    followers apply. ``body`` is the request inside (e.g. the PutRequest)."""

    data: bytes
    request: raft_internal_pb2.InternalRaftRequest
    body: Any
    field: str = ""  # the InternalRaftRequest field the body travels in
    payload: bytes = b""  # the body's bytes as received (to prepare it again with a new header)


def peek_header(data: bytes) -> tuple[int, int] | None:
    """(member_id, ID) of an entry written by :class:`EntryCodec` (the header leads), without
    decoding the request; None for other entries."""
    if not data.startswith(HEADER_TAG):
        return None
    pos, length, shift = len(HEADER_TAG), 0, 0
    while True:
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    try:
        header = raft_internal_pb2.RequestHeader.FromString(data[pos:pos + length])
    except Exception:
        return None
    return header.member_id, header.ID


class EntryCodec:
    """Makes requests into entries for one member. ``first_id`` seeds the request IDs (the
    server derives it from the member ID and its start time, so IDs stay unique across
    restarts; the simulator from its seed)."""

    def __init__(self, member_id: int, max_request_bytes: int, first_id: int) -> None:
        self.member_id = member_id
        self.max_request_bytes = max_request_bytes
        self.next_id = first_id

    def encode(self, req: raft_internal_pb2.InternalRaftRequest) -> bytes:
        """The entry bytes of a request built in the server: the header first (so the leader
        finds its waiter without decoding, :func:`peek_header`), then the request. Fills the
        header's member ID and request ID in ``req``."""
        header = req.header
        header.member_id = self.member_id
        header.ID = self.next_id
        self.next_id += 1
        head = header.SerializeToString()
        req.ClearField("header")
        body = req.SerializeToString()
        req.header.ParseFromString(head)
        data = b"".join((HEADER_TAG, _varint(len(head)), head, body))
        if len(data) > self.max_request_bytes:
            raise err(ERR_REQUEST_TOO_LARGE)
        return data

    def prepare(self, field: str, payload: bytes, username: str, auth_revision: int = 0) -> Prepared:
        """A client request received as bytes (``payload``, e.g. a PutRequest) made into its
        log entry without re-encoding it, then decoded once (raises protobuf's DecodeError
        for a malformed payload). The header carries who asked and the auth revision they
        were authorised at (checked again when applied). The size limit is checked when it
        is submitted."""
        head = raft_internal_pb2.RequestHeader(ID=self.next_id, username=username, auth_revision=auth_revision,
                                               member_id=self.member_id).SerializeToString()
        self.next_id += 1
        data = b"".join((HEADER_TAG, _varint(len(head)), head, _ENTRY_TAGS[field], _varint(len(payload)), payload))
        req = raft_internal_pb2.InternalRaftRequest.FromString(data)
        return Prepared(data, req, getattr(req, field), field, payload)

    def check_size(self, data: bytes) -> None:
        if len(data) > self.max_request_bytes:
            raise err(ERR_REQUEST_TOO_LARGE)


__all__ = ["EntryCodec", "HEADER_TAG", "Prepared", "peek_header"]
