"""Watches: the pure watch hub (see docs/lease-watch.md)."""

from securekv.watch.hub import (
    EMPTY_RANGE_REASON,
    INVALID_WATCH_ID,
    HistorySource,
    HubConfig,
    HubStatistics,
    StreamStatistics,
    WatchHub,
    WatchStream,
)

__all__ = [
    "EMPTY_RANGE_REASON",
    "INVALID_WATCH_ID",
    "HistorySource",
    "HubConfig",
    "HubStatistics",
    "StreamStatistics",
    "WatchHub",
    "WatchStream",
]
