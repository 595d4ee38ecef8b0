"""Duration strings as operators write them: cfssl's Go form (``87600h``, ``1h30m``) and
human days/weeks/years (``90d``, ``2w``, ``1y``).

``m`` means minutes (as in Go and cfssl), never months; ``y`` is 365 days.
"""

from __future__ import annotations

import re
from datetime import timedelta

from securekv.errors import UsageError

_UNITS = {
    "y": timedelta(days=365),
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|[ywdhms])")
_MAX = timedelta(days=365 * 100)


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """Parse ``text`` into a positive timedelta; raise UsageError naming ``what`` otherwise."""
    raw = text.strip() if isinstance(text, str) else ""
    pos = 0
    total = timedelta(0)
    if not raw:
        raise UsageError(f"invalid {what} {text!r}: empty (use e.g. 8760h, 90d, 1y, 30m)")
    while pos < len(raw):
        match = _PART.match(raw, pos)
        if match is None:
            raise UsageError(f"invalid {what} {text!r}: expected a number followed by y, w, d, h, m or s (e.g. 8760h, 90d, 1y)")
        number, unit = match.groups()
        try:
            total += timedelta(milliseconds=float(number)) if unit == "ms" else _UNITS[unit] * float(number)
        except OverflowError:  # e.g. 1e400h: still one clear line, never a traceback
            raise UsageError(f"invalid {what} {text!r}: longer than 100 years") from None
        if total > _MAX:
            raise UsageError(f"invalid {what} {text!r}: longer than 100 years")
        pos = match.end()
    if total <= timedelta(0):
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    if total > _MAX:
        raise UsageError(f"invalid {what} {text!r}: longer than 100 years")
    return total


def format_duration(value: timedelta) -> str:
    """Render a timedelta compactly (``365d``, ``12h``, ``1d2h``) for human output."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def go_hours(value: timedelta) -> str:
    """cfssl's spelling of a duration in a config file (``8760h``)."""
    hours, rest = divmod(int(value.total_seconds()), 3600)
    if rest == 0:
        return f"{hours}h"
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if secs else f"{hours}h{minutes}m"
