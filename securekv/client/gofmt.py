"""Small Go formatting functions etcdctl's output depends on (durations, humanize.Bytes)."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` for a non-negative duration (``4.390295ms``, ``1.5s``)."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    if ns < 1000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _trim(ns / 1e3, 3) + "µs"
    if ns < 1_000_000_000:
        return _trim(ns / 1e6, 6) + "ms"
    total = ns / 1e9
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    secs = _trim(rest / 1e9, 9) + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    del total
    return secs


def _trim(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` subset etcdctl flags take (``5s``, ``500ms``, ``1m30s``), in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    s = text.strip()
    if s in ("0", ""):
        if s == "":
            raise ValueError(f'time: invalid duration "{text}"')
        return 0.0
    total, i = 0.0, 0
    while i < len(s):
        j = i
        while j < len(s) and (s[j].isdigit() or s[j] == "."):
            j += 1
        if j == i:
            raise ValueError(f'time: invalid duration "{text}"')
        number = float(s[i:j])
        k = j
        while k < len(s) and not (s[k].isdigit() or s[k] == "."):
            k += 1
        unit = s[j:k]
        if unit not in units:
            raise ValueError(f'time: missing unit in duration "{text}"' if not unit else f'time: unknown unit "{unit}" in duration "{text}"')
        total += number * units[unit]
        i = k
    return total


def humanize_bytes(size: int) -> str:
    """go-humanize ``Bytes``: SI units, ``20 kB``, ``1.2 MB``, ``9 B``."""
    if size < 10:
        return f"{size} B"
    sizes = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    e = math.floor(math.log(size) / math.log(1000))
    suffix = sizes[int(e)]
    val = math.floor(size / (1000 ** e) * 10 + 0.5) / 10
    return f"{val:.0f} {suffix}" if val >= 10 else f"{val:.1f} {suffix}"
