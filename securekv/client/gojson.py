"""Protobuf messages rendered the way etcdctl's ``-w json`` renders them.

etcdctl marshals the gogoproto Go structs with ``encoding/json``, which is *not* proto3 JSON:
field names are the proto names (the Go ``json`` tags), every field is ``omitempty``, 64-bit
integers are plain numbers, enums are numbers, bytes are standard base64, and a oneof becomes
``{"<GoField>": {"<GoWrapperField>": value}}``. ``json.dumps`` with compact separators gives
Go's byte layout.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def go_camel(name: str) -> str:
    """Go's generated field name for a proto field name (``response_range`` -> ``ResponseRange``)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _repeated(field: FieldDescriptor) -> bool:
    rep = getattr(field, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_go(value)
    return value


def _is_zero(field: FieldDescriptor, msg: Message) -> bool:
    if _repeated(field):
        return len(getattr(msg, field.name)) == 0
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return not msg.HasField(field.name)
    return not getattr(msg, field.name)


def to_go(msg: Message) -> dict[str, Any]:
    """An ordered dict equal to Go's ``json.Marshal`` of the gogoproto struct for ``msg``."""
    out: dict[str, Any] = {}
    done_oneofs: set[str] = set()
    for field in msg.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in done_oneofs:
                continue
            done_oneofs.add(oneof.name)
            which = msg.WhichOneof(oneof.name)
            if which is None:
                continue  # nil interface with omitempty-less tag is still dropped by gogo's generated code
            inner = msg.DESCRIPTOR.fields_by_name[which]
            out[go_camel(oneof.name)] = {go_camel(which): _scalar(inner, getattr(msg, which))}
            continue
        if _is_zero(field, msg):
            continue
        value = getattr(msg, field.name)
        if _repeated(field):
            out[field.name] = [_scalar(field, v) for v in value]
        else:
            out[field.name] = _scalar(field, value)
    return out


def header_inline(msg: Message) -> dict[str, Any]:
    """The fields of an embedded ``*pb.ResponseHeader`` (clientv3 lease wrappers inline them)."""
    return to_go(msg.header) if msg.HasField("header") else {}


def dumps(value: Any) -> str:
    """Go's compact ``json.Marshal`` layout (no spaces; non-ASCII kept; <, >, & escaped)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
