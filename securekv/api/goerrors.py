"""The error texts etcd's grpc-gateway (Go) gives for bad JSON input, for the JSON gateway.

Clients and runbooks compare these strings (and tests diff them against the real etcd), so a
malformed body must fail with Go's ``encoding/json`` wording and a bad ``bytes`` field with
``encoding/base64``'s, not Python's. Pure functions; the gateway calls them while decoding.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_B64 = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def json_error(text: str, exc: json.JSONDecodeError) -> str:
    """Go's json.Decoder message for the input Python's decoder refused at ``exc.pos``."""
    pos = exc.pos
    if pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    ch = text[pos]
    shown = repr(ch)[1:-1] if ch != "'" else "\\'"
    if exc.msg == "Expecting value":
        where = "looking for beginning of value"
    elif exc.msg == "Expecting ':' delimiter":
        where = "after object key"
    elif exc.msg == "Expecting ',' delimiter":
        opener = _innermost_open(text, pos)
        where = "after array element" if opener == "[" else "after object key:value pair"
    elif exc.msg.startswith("Expecting property name"):
        where = "looking for beginning of object key string"
    elif exc.msg.startswith("Invalid control character"):
        where = "in string literal"
    else:
        where = "looking for beginning of value"
    return f"invalid character '{shown}' {where}"


def _innermost_open(text: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def base64_error(value: str) -> str | None:
    """Go's base64.StdEncoding.DecodeString error for ``value`` (None when it decodes)."""
    src = value.encode("utf-8", "surrogatepass")
    si, n = 0, len(src)
    while si < n:
        quantum = 0
        while quantum < 4:
            if si == n:
                if quantum == 0:
                    return None
                return f"illegal base64 data at input byte {si - quantum}"
            ch = src[si]
            si += 1
            if ch in _B64:
                quantum += 1
                continue
            if ch in (0x0A, 0x0D):  # newlines are skipped
                continue
            if ch != 0x3D:  # '='
                return f"illegal base64 data at input byte {si - 1}"
            if quantum in (0, 1):
                return f"illegal base64 data at input byte {si - 1}"
            if quantum == 2:  # "==" expected
                while si < n and src[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    return f"illegal base64 data at input byte {n}"
                if src[si] != 0x3D:
                    return f"illegal base64 data at input byte {si - 1}"
                si += 1
            while si < n and src[si] in (0x0A, 0x0D):
                si += 1
            if si < n:
                return f"illegal base64 data at input byte {si}"
            return None
    return None


def check_bytes_fields(value: Any, descriptor: Descriptor) -> str | None:
    """The first Go base64 error among the ``bytes`` fields of a JSON request, walking nested
    messages (original and lowerCamel names, as jsonpb accepts both)."""
    if not isinstance(value, dict):
        return None
    for field in descriptor.fields:
        for name in (field.name, field.json_name):
            if name not in value:
                continue
            item = value[name]
            items = item if isinstance(item, list) else [item]
            for one in items:
                if field.type == FieldDescriptor.TYPE_BYTES and isinstance(one, str):
                    err = base64_error(one)
                    if err:
                        return err
                elif field.type == FieldDescriptor.TYPE_MESSAGE:
                    err = check_bytes_fields(one, field.message_type)
                    if err:
                        return err
            break
    return None


__all__ = ["base64_error", "check_bytes_fields", "json_error"]
