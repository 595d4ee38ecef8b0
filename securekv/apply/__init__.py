"""The deterministic applier of committed log entries (pure: no I/O). See docs/mvcc.md."""

from .alarms import AlarmSet
from .applier import Applier, ApplyResult

__all__ = ["AlarmSet", "Applier", "ApplyResult"]
