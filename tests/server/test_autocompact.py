"""--auto-compaction-mode/--auto-compaction-retention: etcd 3.4's periodic and revision rules."""

from __future__ import annotations

import time

from securekv.server.autocompact import AutoCompactor


def test_periodic_compacts_to_the_revision_of_one_retention_ago() -> None:
    c = AutoCompactor("periodic", 3600.0, started=0.0)
    assert c.interval == 360.0
    rev = 100
    targets = {}
    t = 0.0
    while t <= 2 * 3600:
        target = c.tick(t, rev)
        if target is not None:
            targets[t] = target
            c.done(t, target)
        t += c.interval
        rev += 10  # 10 revisions per sample
    # first compaction after one hour, to the revision sampled at start; then hourly
    assert targets == {3600.0: 100, 7200.0: 200}


def test_periodic_long_retention_compacts_hourly() -> None:
    c = AutoCompactor("periodic", 24 * 3600.0, started=0.0)
    assert c.interval == 360.0
    t, rev, seen = 0.0, 1, []
    while t <= 26 * 3600:
        target = c.tick(t, rev)
        if target is not None:
            seen.append((t / 3600, target))
            c.done(t, target)
        t += c.interval
        rev += 1
    assert seen[0] == (24.0, 1)  # the revision of 24 h ago
    assert [h for h, _ in seen] == [24.0, 25.0, 26.0]
    assert seen[1][1] - seen[0][1] == 10  # one hour of samples later


def test_revision_mode_keeps_retention_revisions() -> None:
    c = AutoCompactor("revision", 1000.0)
    assert c.interval == 300.0
    assert c.tick(0.0, 900) is None
    assert c.tick(300.0, 1500) == 500
    c.done(300.0, 500)
    assert c.tick(600.0, 1500) is None  # nothing new
    assert c.tick(900.0, 2600) == 1600


def test_zero_retention_is_off() -> None:
    assert AutoCompactor("periodic", 0.0).tick(1e9, 10**6) is None


def test_member_compacts_by_itself(make_member) -> None:
    m = make_member("securekv", extra=["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"])
    for i in range(5):
        m.ctl("put", "k", f"v{i}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = m.ctl("get", "k", "--rev", "2", check=False)
        if "required revision has been compacted" in r.stderr:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no auto compaction within 20 s:\n{m.output()[-2000:]}")
    assert "completed auto periodic compaction" in m.output()
