"""etcdctl's ``txn`` stdin language: compares, blank line, success ops, blank line, failure ops.

    mod("k1") > "0"
    value("k2") = "v"

    put k3 "hello world"
    get k1 --prefix

    del k9

Errors carry etcdctl's messages; the CLI exits 3 (ExitInvalidInput) on them.
"""

from __future__ import annotations

import re
from typing import Callable

from securekv.client.client import compare, op_delete, op_get, op_put
from securekv.proto import rpc_pb2

_ARG = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^'\"\s]\S*[^'\"\s]?")
_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMPARE = re.compile(r"^" + _QUOTED + r"\)\s*(\S+)\s*" + _QUOTED + r"\s*$")
_TARGETS = {"ver": "version", "version": "version", "c": "create", "create": "create", "m": "mod",
            "mod": "mod", "val": "value", "value": "value", "lease": "lease"}


class TxnInputError(Exception):
    pass


def go_unquote(text: str) -> str:
    """The body of a Go double-quoted string literal, escapes resolved."""
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'", "a": "\a", "b": "\b",
              "f": "\f", "v": "\v"}
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1: i + 2]
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
        elif nxt == "x":
            out.append(chr(int(text[i + 2: i + 4], 16)))
            i += 4
        elif nxt in ("u", "U"):
            n = 4 if nxt == "u" else 8
            out.append(chr(int(text[i + 2: i + 2 + n], 16)))
            i += 2 + n
        elif nxt.isdigit():
            out.append(chr(int(text[i + 1: i + 4], 8)))
            i += 4
        else:
            raise ValueError("invalid syntax")
    return "".join(out)


def argify(line: str) -> list[str]:
    """etcdctl's argify: split on spaces, honouring '...' and Go "..." quoting."""
    args = []
    for arg in _ARG.findall(line):
        if arg.startswith("'"):
            arg = arg[1:-1]
        elif arg.startswith('"'):
            arg = go_unquote(arg[1:-1])
        args.append(arg)
    return args


def parse_compare(line: str) -> rpc_pb2.Compare:
    target, sep, rest = line.partition("(")
    if not sep:
        raise TxnInputError(f"malformed comparison: {line}")
    m = _COMPARE.match(rest)
    if not m:
        raise TxnInputError(f"malformed comparison: {line}")
    key, op, val = go_unquote(m.group(1)), m.group(2), go_unquote(m.group(3))
    if target not in _TARGETS:
        raise TxnInputError(f"malformed comparison: {line} (unknown target {target})")
    name = _TARGETS[target]
    if op not in ("=", "!=", "<", ">"):
        raise TxnInputError(f"invalid txn compare request: {line}")
    if name == "value":
        return compare("value", key, op, val)
    try:
        number = int(val, 16) if name == "lease" else int(val, 10)
    except ValueError:
        raise TxnInputError(f"invalid txn compare request: {line}") from None
    return compare(name, key, op, number)


def _flags(args: list[str], spec: dict[str, bool]) -> tuple[dict[str, str | bool], list[str]]:
    """Tiny pflag: ``--name``, ``--name=value``, ``--name value`` (spec: name -> takes value)."""
    opts: dict[str, str | bool] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positional.extend(args[i + 1:])
            break
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            if name not in spec:
                raise ValueError(name)
            if spec[name]:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise ValueError(name)
                    value = args[i]
                opts[name] = value
            else:
                opts[name] = value.lower() in ("", "true", "1") if eq else True
        else:
            positional.append(a)
        i += 1
    return opts, positional


_SORT_TARGET = {"CREATE": "CREATE", "KEY": "KEY", "MODIFY": "MOD", "VALUE": "VALUE", "VERSION": "VERSION", "": "KEY"}


def parse_op(line: str) -> rpc_pb2.RequestOp:
    args = argify(line)
    if len(args) < 2:
        raise TxnInputError(f"invalid txn compare request: {line}")
    bad = TxnInputError(f"invalid txn request: {line}")
    cmd, rest = args[0], args[1:]
    try:
        if cmd == "put":
            o, pos = _flags(rest, {"lease": True, "prev-kv": False, "ignore-value": False, "ignore-lease": False})
            if o.get("ignore-value"):
                if len(pos) != 1:
                    raise bad
                value = ""
            else:
                if len(pos) != 2:
                    raise bad
                value = pos[1]
            return op_put(pos[0], value, lease=int(str(o.get("lease", "0")), 16), prev_kv=bool(o.get("prev-kv")),
                          ignore_value=bool(o.get("ignore-value")), ignore_lease=bool(o.get("ignore-lease")))
        if cmd == "get":
            o, pos = _flags(rest, {"consistency": True, "order": True, "sort-by": True, "limit": True, "prefix": False,
                                   "from-key": False, "rev": True, "keys-only": False, "print-value-only": False})
            if not pos or len(pos) > 2:
                raise bad
            order = str(o.get("order", "")).upper()
            target = str(o.get("sort-by", "")).upper()
            if order not in ("", "ASCEND", "DESCEND") or target not in _SORT_TARGET:
                raise bad
            return op_get(pos[0], pos[1] if len(pos) > 1 else None, prefix=bool(o.get("prefix")),
                          from_key=bool(o.get("from-key")), limit=int(str(o.get("limit", 0))),
                          revision=int(str(o.get("rev", 0))), sort_order=order or "NONE",
                          sort_target=_SORT_TARGET[target], serializable=o.get("consistency") == "s",
                          keys_only=bool(o.get("keys-only")))
        if cmd == "del":
            o, pos = _flags(rest, {"prefix": False, "prev-kv": False, "from-key": False})
            if not pos or len(pos) > 2:
                raise bad
            return op_delete(pos[0], pos[1] if len(pos) > 1 else None, prefix=bool(o.get("prefix")),
                             from_key=bool(o.get("from-key")), prev_kv=bool(o.get("prev-kv")))
    except (ValueError, KeyError):
        raise bad from None
    raise bad


def read_txn(readline: Callable[[], str]) -> tuple[list, list, list]:
    """Read the three sections; a missing terminating newline is Go's ``EOF`` error."""

    def section(parse):
        items = []
        while True:
            line = readline()
            if not line.endswith("\n"):
                raise TxnInputError("EOF")
            line = line.strip()
            if not line:
                return items
            items.append(parse(line))

    return section(parse_compare), section(parse_op), section(parse_op)
