"""Grammar of every value ``securekv install`` writes into a unit, a config or a firewall rule,
and systemd's quoting.

Why a grammar and not escaping alone: a value with a newline ends a unit line and starts a new
directive (``ExecStartPre=+...`` runs as root outside the sandbox); a space splits a
``ReadWritePaths=`` list (``/srv/x /`` makes the whole file system writable); ``..`` or a
symlink points a path somewhere else than it says. So values are refused unless they match what
they claim to be, and are then written with systemd's quoting anyway (defence in depth).

* paths: absolute, normalised (no ``.``/``..``/``//``), no whitespace, no control or format
  characters, no quotes or backslashes;
* member names: 1-128 of letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit
  (they also become certificate names and ``name=URL`` pairs);
* tokens and other free strings: printable, no whitespace, at most 256 characters;
* URLs and hosts: checked by ``securekv.deploy.config`` (scheme, IP or DNS host, port).
"""

from __future__ import annotations

import posixpath
import re
import unicodedata

from securekv.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_QUOTES = set("\"'\\")
# Characters that need no quoting in a systemd word (after % and $ are escaped).
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./~$-]+$")


def _bad_char(value: str) -> str | None:
    for c in value:
        if c.isspace():
            return "whitespace"
        if unicodedata.category(c)[0] == "C":  # control, format, surrogate, private use, unassigned
            return f"a control character (U+{ord(c):04X})"
    return None


def check_text(key: str, value: str, *, limit: int = 256) -> str:
    """A free string (token, CN, log level): printable, no whitespace, bounded."""
    bad = _bad_char(value)
    if bad:
        raise UsageError(f"{key} must not contain {bad}, got {value!r}")
    if not value or len(value) > limit:
        raise UsageError(f"{key} must be 1-{limit} characters, got {len(value)}")
    return value


def check_path(key: str, value: str) -> str:
    """An absolute, normalised path that means exactly what it says."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise UsageError(f"{key} must be an absolute path, got {value!r}")
    bad = _bad_char(value)
    if bad:
        raise UsageError(f"{key} must not contain {bad}, got {value!r}")
    if set(value) & _QUOTES:
        raise UsageError(f"{key} must not contain quotes or backslashes, got {value!r}")
    trimmed = value.rstrip("/") or "/"
    if posixpath.normpath(value) != trimmed or value.startswith("//"):
        raise UsageError(f"{key} must be a normalised absolute path (no '.', '..' or '//'), got {value!r}")
    if trimmed == "/":
        raise UsageError(f"{key} must not be the root directory")
    return value


def check_name(key: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise UsageError(f"{key} must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
                         f"got {value!r}")
    return value


def systemd_word(value: str, *, exec_line: bool = False) -> str:
    """``value`` as one word of a systemd directive (systemd.syntax(7), systemd.service(5)).

    ``%`` starts a specifier everywhere (``%%`` is a literal); in ``Exec*=`` lines ``$`` starts
    a variable (``$$`` is literal) and double quotes group a word with C-style escapes. Control
    characters cannot be expressed at all: they are refused.
    """
    bad = _bad_char(value.replace(" ", "x"))
    if bad:
        raise UsageError(f"cannot write {value!r} into a systemd unit: it contains {bad}")
    word = value.replace("%", "%%")
    if exec_line:
        word = word.replace("$", "$$")
    if _SAFE_WORD.match(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_path_value(value: str) -> str:
    """A path that is the rest of a directive's line (``LoadCredential=ID:PATH``): systemd does
    not unquote it, so it must need no quoting; only specifiers are escaped."""
    check_path("path", value)
    return value.replace("%", "%%")
