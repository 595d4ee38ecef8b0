"""The nemesis: one fault at a time against a minority of members, held, then undone.

Faults (``--nemesis``):

* ``kill`` — kill -9, then start the member again on its data dir;
* ``pause`` — SIGSTOP, then SIGCONT (a member that is alive but silent: its peers and clients
  see a hang, not a closed connection);
* ``partition`` — cut the targets' peer links through the proxies, then heal;
* ``disk-full`` — fill the small tmpfs holding the target's data dir to the last byte, then free
  it; a member that stopped because it could not write is started again (as systemd's
  ``Restart=on-failure`` would);
* ``restart`` — SIGTERM (a leader hands over leadership first), then start again.

Targets are a random minority, half the time including the current leader (where most bugs
hide). Before each fault every member is up again (a restarted member has said READY=1), so
the cluster always has a quorum when the next fault starts.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable

import attrs

from securekv.client import ClientError
from securekv.torture.members import Cluster, Member

log = logging.getLogger(__name__)

KINDS = ("kill", "pause", "partition", "disk-full", "restart")
DISK_FULL_EXIT = 3  # `securekv serve`'s exit status after a write failed for lack of space
READY_TIMEOUT = 45.0


@attrs.define
class NemesisEvent:
    kind: str
    targets: list[str]
    start: float  # seconds since the run started
    end: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "targets": self.targets, "start": round(self.start, 2),
                "end": round(self.end, 2), "detail": self.detail}


class Nemesis:
    def __init__(self, cluster: Cluster, kinds: list[str], rng: random.Random, client_for: Callable[[str], object],
                 *, t0: float, hold: tuple[float, float] = (1.0, 3.0), gap: tuple[float, float] = (0.3, 1.0)) -> None:
        self.cluster = cluster
        self.kinds = kinds
        self.rng = rng
        self.client_for = client_for
        self.t0 = t0
        self.hold = hold
        self.gap = gap
        self.events: list[NemesisEvent] = []
        self.errors: list[str] = []
        self.down: set[str] = set()  # members this nemesis took down on purpose
        self.ids: dict[int, str] = {}
        #: member -> (monotonic end, event) of its last disk-full fault: a member may still be on
        #: its way out (it stops within seconds of the failed write) when the space comes back.
        self.disk_full: dict[str, tuple[float, NemesisEvent]] = {}

    # -- helpers -------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    def leader(self) -> str | None:
        """The leader as the reachable members report it (None if unknown right now)."""
        for name in self.rng.sample(self.cluster.names, len(self.cluster.names)):
            if name in self.down or self.cluster.members[name].paused:
                continue
            client = self.client_for(name)
            try:
                st = client.status()  # type: ignore[attr-defined]
            except ClientError:
                continue
            finally:
                client.close()  # type: ignore[attr-defined]
            self.ids[st.header.member_id] = name
            if st.leader in self.ids:
                return self.ids[st.leader]
            if st.leader:
                self.learn_ids()
                return self.ids.get(st.leader)
        return None

    def learn_ids(self) -> None:
        for name in self.cluster.names:
            if name in self.ids.values():
                continue
            client = self.client_for(name)
            try:
                self.ids[client.status().header.member_id] = name  # type: ignore[attr-defined]
            except ClientError:
                pass
            finally:
                client.close()  # type: ignore[attr-defined]

    def targets(self) -> list[str]:
        names = self.cluster.names
        minority = max(1, (len(names) - 1) // 2)
        count = self.rng.randint(1, minority)
        chosen: list[str] = []
        if self.rng.random() < 0.5:
            lead = self.leader()
            if lead is not None:
                chosen.append(lead)
        rest = [n for n in names if n not in chosen]
        self.rng.shuffle(rest)
        return chosen + rest[: count - len(chosen)]

    def check_alive(self) -> None:
        """A member that exited without being told to is a finding; start it again."""
        for m in self.cluster.members.values():
            if m.name in self.down or m.running or m.proc is None:
                continue
            if not self._late_disk_full_stop(m):
                self.errors.append(f"{m.name} exited unexpectedly (code {m.exit_code}) at {self._elapsed():.1f}s: "
                                   f"{_last_error(m)}")
            m.start()
            if not m.wait_ready(READY_TIMEOUT):
                self.errors.append(f"{m.name} did not become ready after an unexpected exit")

    def _late_disk_full_stop(self, m: Member) -> bool:
        """Did ``m`` stop for the disk-full fault that just ended (exit status 3, shortly after)?"""
        last = self.disk_full.get(m.name)
        if m.exit_code != DISK_FULL_EXIT or last is None or time.monotonic() - last[0] > 30:
            return False
        last[1].detail = f"stopped (exit code {m.exit_code}) just after the space came back: {_last_error(m)}"
        return True

    def wait_up(self, names: list[str]) -> None:
        for name in names:
            m = self.cluster.members[name]
            if not m.wait_ready(READY_TIMEOUT):
                self.errors.append(f"{name} not ready {READY_TIMEOUT:.0f}s after its restart "
                                   f"(exit code {m.exit_code}): {_last_error(m)}")

    # -- the schedule --------------------------------------------------------------------------
    def run(self, until: float) -> None:
        """Faults until the monotonic deadline ``until`` (the last one is undone after it)."""
        self.learn_ids()
        while time.monotonic() < until:
            self.check_alive()
            kind = self.rng.choice(self.kinds)
            targets = self.targets() if kind != "disk-full" else self.targets()[:1]
            event = NemesisEvent(kind, targets, self._elapsed())
            hold = self.rng.uniform(*self.hold)
            try:
                getattr(self, "_" + kind.replace("-", "_"))(event, hold)
            except Exception as exc:  # the nemesis failing is reported, never silent
                log.exception("nemesis %s failed", kind)
                self.errors.append(f"nemesis {kind} on {targets} failed: {exc!r}")
            event.end = self._elapsed()
            self.events.append(event)
            log.info("nemesis: %s %s (%.1fs) %s", kind, ",".join(targets), event.end - event.start, event.detail)
            time.sleep(self.rng.uniform(*self.gap))
        self.check_alive()

    def _kill(self, event: NemesisEvent, hold: float) -> None:
        for name in event.targets:
            self.down.add(name)
            self.cluster.members[name].kill()
        time.sleep(hold)
        self._restart_all(event.targets)

    def _restart(self, event: NemesisEvent, hold: float) -> None:
        for name in event.targets:
            self.down.add(name)
            self.cluster.members[name].stop()
        self._restart_all(event.targets)

    def _restart_all(self, names: list[str]) -> None:
        for name in names:
            self.cluster.members[name].start()
            self.down.discard(name)
        self.wait_up(names)

    def _pause(self, event: NemesisEvent, hold: float) -> None:
        for name in event.targets:
            self.cluster.members[name].pause()
        time.sleep(hold)
        for name in event.targets:
            self.cluster.members[name].resume()

    def _partition(self, event: NemesisEvent, hold: float) -> None:
        self.cluster.isolate(event.targets)
        time.sleep(hold)
        self.cluster.heal()

    def _disk_full(self, event: NemesisEvent, hold: float) -> None:
        name = event.targets[0]
        m = self.cluster.members[name]
        assert m.mount is not None
        self.down.add(name)  # it may stop on its own: that is the expected reaction
        try:
            m.mount.fill()
            time.sleep(hold)
        finally:
            m.mount.free()
        self.disk_full[name] = (time.monotonic(), event)
        if m.running:
            event.detail = "kept running"
            self.down.discard(name)
            return
        event.detail = f"stopped (exit code {m.exit_code}): {_last_error(m)}"
        m.start()
        self.down.discard(name)
        self.wait_up([name])

    def heal_all(self) -> None:
        """Undo everything: links, paused and stopped members, full disks."""
        self.cluster.heal()
        for m in self.cluster.members.values():
            if m.mount is not None:
                m.mount.free()
            if m.paused:
                m.resume()
        for m in self.cluster.members.values():
            if not m.running:
                if m.name not in self.down and m.proc is not None and not self._late_disk_full_stop(m):
                    self.errors.append(f"{m.name} exited unexpectedly (code {m.exit_code}): {_last_error(m)}")
                m.start()
            self.down.discard(m.name)
        self.wait_up(self.cluster.names)


def _last_error(m: Member) -> str:
    """The member's last log line that names an error (what an operator would read)."""
    lines = [line for line in m.log_tail(60).splitlines()
             if any(w in line for w in ("Error", "ERROR", "CRITICAL", "error:", "Traceback"))]
    return lines[-1].strip()[:300] if lines else "(no error in its log)"


__all__ = ["Nemesis", "NemesisEvent", "KINDS"]
