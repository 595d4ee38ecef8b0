"""HPACK coders that remember the header blocks a connection repeats.

Why: on a gRPC connection almost every header block is one of a handful — a client sends the
same block for every call of a method (all fields indexed once its first call filled the
dynamic table) and the server answers every unary call with the same ``:status``/
``content-type`` block and the same ``grpc-status: 0`` trailers. ``hpack`` decodes and encodes
each field in Python every time (with a debug log call per field); under load that was the
largest single cost of the trio thread after TLS (``docs/benchmarks.md``).

A block may be reused only while the coder's dynamic table is exactly as it was when the
block was first coded, and only if coding it left the table untouched (a block that inserts
or evicts entries, or resizes the table, is never reused): then coding it again would give
the same result and change nothing, so the remembered result *is* what ``hpack`` would
return. Everything else goes to ``hpack`` unchanged. The memory is a few small blocks per
connection (bounded), dropped whenever the table changes.
"""

from __future__ import annotations

from typing import Any, Iterable

from hpack import Decoder, Encoder
from hpack.table import HeaderTable

MAX_REMEMBERED = 16  # distinct blocks per coder (a connection uses a few)


class _CountingTable(HeaderTable):  # type: ignore[misc]
    """hpack's dynamic table, counting insertions (so a change is seen even when an insertion
    evicts an entry of the same size and the length stays the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.insertions = 0

    def add(self, name: bytes, value: bytes) -> Any:
        self.insertions += 1
        return super().add(name, value)


def _table_state(table: _CountingTable) -> tuple[int, int, int]:
    return (table.insertions, table.maxsize, len(table.dynamic_entries))


class CachingDecoder(Decoder):  # type: ignore[misc]
    """``hpack.Decoder`` that returns a remembered result for a header block it decoded before
    without changing its table (``raw=True`` only: what h2 asks for)."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self._blocks: dict[bytes, list[Any]] = {}
        self._state: tuple[Any, ...] = ()

    def _key_state(self) -> tuple[Any, ...]:
        # The limits checked while decoding are part of what a remembered result was checked
        # against.
        return (*_table_state(self.header_table), self.max_header_list_size, self.max_allowed_table_size)

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            return super().decode(data, raw)
        state = self._key_state()
        if state != self._state:
            self._blocks.clear()
            self._state = state
        else:
            hit = self._blocks.get(bytes(data))
            if hit is not None:
                return list(hit)
        headers = super().decode(data, raw=True)
        if self._key_state() == state and len(self._blocks) < MAX_REMEMBERED:
            self._blocks[bytes(data)] = list(headers)
        return headers


class CachingEncoder(Encoder):  # type: ignore[misc]
    """``hpack.Encoder`` that returns the remembered block for a header list it encoded before
    without changing its table."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self._blocks: dict[tuple[Any, ...], bytes] = {}
        self._state: tuple[Any, ...] = ()

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        if isinstance(headers, dict) or self.header_table.resized or getattr(self, "table_size_changes", None):
            # A size update is due at the head of this block: let hpack write it.
            self._blocks.clear()
            self._state = ()
            return super().encode(headers, huffman)
        headers = list(headers)
        # The tuple's type is part of the key: a NeverIndexedHeaderTuple equals a plain tuple
        # with the same fields but is encoded differently.
        key = (huffman, *((type(h), *h) for h in headers))
        state = _table_state(self.header_table)
        if state != self._state:
            self._blocks.clear()
            self._state = state
        else:
            hit = self._blocks.get(key)
            if hit is not None:
                return hit
        block = super().encode(headers, huffman)
        if _table_state(self.header_table) == state and not getattr(self, "table_size_changes", None) \
                and len(self._blocks) < MAX_REMEMBERED:
            self._blocks[key] = block
        return block


__all__ = ["CachingDecoder", "CachingEncoder"]
