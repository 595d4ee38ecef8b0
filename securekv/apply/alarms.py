"""The replicated alarm set (etcd's ``v3alarm.AlarmStore``), kept in memory by the applier."""

from __future__ import annotations

from collections.abc import Iterable

from securekv.proto import rpc_pb2

NONE = rpc_pb2.AlarmType.Value("NONE")
NOSPACE = rpc_pb2.AlarmType.Value("NOSPACE")
CORRUPT = rpc_pb2.AlarmType.Value("CORRUPT")


class AlarmSet:
    """Active alarms as (member_id, alarm type) pairs; answers as fresh AlarmMember messages."""

    def __init__(self, members: Iterable[tuple[int, int]] = ()) -> None:
        self._active: set[tuple[int, int]] = set(members)

    def activate(self, member_id: int, alarm: int) -> bool:
        """Raise ``alarm`` for ``member_id``; True if it was not active before."""
        pair = (member_id, alarm)
        if pair in self._active:
            return False
        self._active.add(pair)
        return True

    def deactivate(self, member_id: int, alarm: int) -> bool:
        """Clear it; True if it was active."""
        pair = (member_id, alarm)
        if pair not in self._active:
            return False
        self._active.discard(pair)
        return True

    def list(self, alarm: int = NONE) -> list[rpc_pb2.AlarmMember]:
        """Active alarms of one type (NONE: all), ordered by (alarm, member) for stable output."""
        pairs = sorted((a, m) for m, a in self._active if alarm == NONE or a == alarm)
        return [rpc_pb2.AlarmMember(memberID=m, alarm=a) for a, m in pairs]

    def has(self, alarm: int) -> bool:
        return any(a == alarm for _, a in self._active)

    @property
    def nospace(self) -> bool:
        return self.has(NOSPACE)

    @property
    def corrupt(self) -> bool:
        return self.has(CORRUPT)

    def __len__(self) -> int:
        return len(self._active)
