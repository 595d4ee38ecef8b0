"""One fault-suite run: start a cluster, drive the workload under the nemesis, heal, check.

The phases, each bounded in time:

1. **start** — certificates, N members (each READY=1), clients, watchers;
2. **chaos** — ``seconds`` of workload under the nemesis schedule;
3. **heal** — every fault undone, every member up (READY=1) and converged (same applied index);
   the workload stops; abandoned leases get the time to expire;
4. **final reads** — a linearizable read of every key (joins the history), the final revision,
   every watcher catches up to it, the reference history (every event from revision 1) is read,
   and every member's final KV state and hash are compared with it;
5. **check** — :mod:`securekv.testing.history_checks` judges the recording.

The summary (a dict, printed by ``__main__`` as the last line) has ``members``, ``seconds``,
``ops``, ``nemesis_events``, ``violations``, ``lost_writes``, ``watch_gaps`` and ``verdict``
(``"ok"`` only when those three counts are 0, no member crashed on its own and every check
could run), plus the details behind each count.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import attrs

from securekv.client import ClientError
from securekv.testing import history_checks as hc
from securekv.torture.members import Cluster, can_mount
from securekv.torture.nemesis import KINDS, Nemesis
from securekv.torture.workload import (
    DEFAULT_MIX,
    KV_PREFIX,
    LEASE_PREFIX,
    Context,
    KVClient,
    LeaseClient,
    Watcher,
    collect_history,
    now,
)

log = logging.getLogger(__name__)

BUGS = ("serializable-as-linearizable",)
DETAIL_LIMIT = 10


@attrs.frozen
class Options:
    members: int = 3
    seconds: float = 60.0
    nemesis: tuple[str, ...] = KINDS
    seed: int | None = None
    workdir: Path | None = None
    keep: bool = False
    kv_clients: int = 6
    keys: int = 8
    rate: float = 150.0
    mix: tuple[float, float, float, float] = DEFAULT_MIX
    lease_clients: int = 1
    watchers: int = 2
    lease_ttl: int = 3
    inject_bug: str | None = None
    tmpfs_mb: int = 96
    snapshot_count: int = 1000
    max_steps_per_key: int = 3_000_000


def run(opts: Options, progress: Callable[[str], None] = lambda s: None) -> dict:
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    notes: list[str] = []
    kinds = list(dict.fromkeys(opts.nemesis))
    if "disk-full" in kinds and not can_mount():
        kinds.remove("disk-full")
        notes.append("disk-full skipped: a tmpfs for the data dirs can only be mounted as root")
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="securekv-torture-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tmpfs = opts.tmpfs_mb if "disk-full" in kinds else 0
    started = time.monotonic()
    summary: dict = {}
    cluster: Cluster | None = None
    try:
        progress(f"starting {opts.members} members in {workdir} (seed {seed})")
        cluster = Cluster(workdir, opts.members, inject_bug=opts.inject_bug, tmpfs_mb=tmpfs,
                          snapshot_count=opts.snapshot_count)
        cluster.start()
        summary = _drive(cluster, opts, kinds, rng, seed, progress)
    finally:
        if cluster is not None:
            cluster.close()
    summary["notes"] = notes + summary.get("notes", [])
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    keep = opts.keep or summary.get("verdict") != "ok"
    if keep:
        summary["workdir"] = str(workdir)
        (workdir / "report.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    elif opts.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _drive(cluster: Cluster, opts: Options, kinds: list[str], rng: random.Random, seed: int,
           progress: Callable[[str], None]) -> dict:
    p = cluster.pki
    stop = threading.Event()
    ctx = Context({n: m.endpoint for n, m in cluster.members.items()}, str(p.ca), str(p.client_cert),
                  str(p.client_key), stop, seed, rate=opts.rate)
    keys = [KV_PREFIX + f"k{i}".encode() for i in range(opts.keys)]
    kv = [KVClient(ctx, i, keys, 1.0 / opts.kv_clients, opts.mix) for i in range(opts.kv_clients)]
    leases = [LeaseClient(ctx, i, opts.lease_ttl) for i in range(opts.lease_clients)]
    watchers = [Watcher(ctx, i) for i in range(opts.watchers)]
    workers = [*kv, *leases]
    for t in [*workers, *watchers]:
        t.start()
    supervise_stop = threading.Event()

    def supervise() -> None:
        while not supervise_stop.wait(0.5):
            for w in watchers:
                w.poke(stall_after=4.0)

    supervisor = threading.Thread(target=supervise, name="watch-supervisor", daemon=True)
    supervisor.start()
    t0 = time.monotonic()
    nemesis = Nemesis(cluster, kinds, rng, lambda name: ctx.client(name, timeout=1.0), t0=t0)
    errors: list[str] = []
    try:
        if kinds:
            progress(f"chaos for {opts.seconds:.0f}s: {', '.join(kinds)}")
            nemesis.run(t0 + opts.seconds)
        else:
            stop.wait(opts.seconds)
        progress(f"healing after {len(nemesis.events)} nemesis events")
        nemesis.heal_all()
        heal_ns = now()
        stop.set()
        for t in workers:
            t.join(timeout=30)
            if t.is_alive():
                errors.append(f"client {t.name} did not stop")
        if not _converged(ctx, cluster.names, timeout=60):
            errors.append("members did not converge on one applied index within 60s after the heal")
        # Abandoned leases must expire: TTL + one election timeout (a leader change extends
        # them) after the later of their last renewal and the heal, plus the expiry tick.
        grace_ns = int((cluster.election_ms / 1000 + 2.0) * 1e9)
        lease_logs = [log_ for c in leases for log_ in c.logs()]
        due = {l.lease: max(l.abandoned or l.granted, heal_ns) + int(l.ttl * 1e9) + grace_ns
               for l in lease_logs if l.revoked is None}
        if due:
            wait_s = min((max(due.values()) - now()) / 1e9, 20.0)
            if wait_s > 0:
                progress(f"waiting {wait_s:.1f}s for abandoned leases to expire")
                time.sleep(wait_s)
        expired_due = [lid for lid, t in due.items() if t <= now()]
        final = _final_reads(ctx, cluster.names, keys)
        if final is None:
            errors.append("final linearizable reads failed")
            final_rev, final_ops = 0, []
        else:
            final_rev, final_ops = final
        progress(f"final revision {final_rev}; catching up watchers and reading the history")
        for w in watchers:
            w.until = final_rev
            w.done.set()
        catch_up = time.monotonic() + 30
        for w in watchers:
            w.join(timeout=max(catch_up - time.monotonic(), 0.1))
            if w.is_alive():
                errors.append(f"watcher {w.name} did not catch up to revision {final_rev} within 30s "
                              f"(confirmed {w.confirmed})")
        reference = _reference(ctx, cluster.names, final_rev) if final_rev else None
        if reference is None:
            errors.append("could not read the reference history from any member")
            reference = []
        divergence = _compare_members(ctx, cluster.names, reference, final_rev) if final_rev else []
        final_keys, final_ttl = _lease_state(ctx, cluster.names, lease_logs)
    finally:
        stop.set()
        supervise_stop.set()
        for w in watchers:
            w.done.set()
            w.hard_stop.set()
            w.poke(stall_after=0)
        supervisor.join(timeout=5)
        for w in watchers:
            w.join(timeout=10)
    progress("checking the history")
    kv_ops = [op for c in kv for op in c.ops] + final_ops
    kv_report = hc.check_kv(kv_ops, reference, prefix=KV_PREFIX, max_steps_per_key=opts.max_steps_per_key)
    lease_puts = [op for c in leases for op in c.puts]
    lease_put_report = hc.check_kv(lease_puts, reference, prefix=LEASE_PREFIX, max_steps_per_key=10_000)
    watch_reports = [hc.check_watch(w.name, w.segments, reference, KV_PREFIX) for w in watchers]
    lease_report = hc.check_leases(lease_logs, final_keys, final_ttl, expired_due)
    holes = _reference_holes(reference, final_rev)
    for c in [*kv, *leases, *watchers]:
        if c.crashed is not None:
            errors.append(f"client {c.name} crashed: {c.crashed!r}")
    errors += nemesis.errors

    lin_bad = [k for k in kv_report.result.keys if k.outcome.value != "ok"]
    watch_errors = [e for r in watch_reports for e in r.errors]
    violations = (kv_report.violations + len(lease_put_report.phantoms) + len(watch_errors)
                  + len(lease_report.errors) + len(divergence))
    lost = len(kv_report.lost) + len(lease_put_report.lost)
    gaps = sum(len(r.gaps) for r in watch_reports) + len(holes)
    undecided = kv_report.undecided
    if violations or lost or gaps:
        verdict = "fail"
    elif errors or undecided:
        verdict = "error"
    else:
        verdict = "ok"
    ops = len(kv_ops) + sum(c.ops for c in leases)
    by_kind: dict[str, int] = {}
    for e in nemesis.events:
        by_kind[e.kind] = by_kind.get(e.kind, 0) + 1
    return {
        "members": len(cluster.names),
        "seconds": opts.seconds,
        "seed": seed,
        "ops": ops,
        "ops_by_kind": _ops_by_kind(kv_ops, leases),
        "pending_ops": sum(1 for op in kv_ops if op.pending),
        "nemesis": kinds,
        "nemesis_events": len(nemesis.events),
        "nemesis_by_kind": by_kind,
        "violations": violations,
        "lost_writes": lost,
        "watch_gaps": gaps,
        "undecided_keys": undecided,
        "final_revision": final_rev,
        "watch_events": sum(r.delivered for r in watch_reports),
        "watch_reconnects": sum(w.reconnects for w in watchers),
        "leases": lease_report.leases,
        "inject_bug": opts.inject_bug,
        "verdict": verdict,
        "details": {
            "linearizability": [k.explain() for k in lin_bad][:DETAIL_LIMIT],
            "lost_writes": list(kv_report.lost + lease_put_report.lost)[:DETAIL_LIMIT],
            "phantom_values": list(kv_report.phantoms + lease_put_report.phantoms)[:DETAIL_LIMIT],
            "watch_gaps": ([g for r in watch_reports for g in r.gaps] + holes)[:DETAIL_LIMIT],
            "watch_errors": watch_errors[:DETAIL_LIMIT],
            "lease_errors": list(lease_report.errors)[:DETAIL_LIMIT],
            "divergence": divergence[:DETAIL_LIMIT],
            "errors": errors[:DETAIL_LIMIT],
            "nemesis_events": [e.as_dict() for e in nemesis.events],
        },
    }


def _ops_by_kind(kv_ops: list[hc.KVOp], leases: list[LeaseClient]) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in kv_ops:
        out[op.kind.value] = out.get(op.kind.value, 0) + 1
    out["lease"] = sum(c.ops for c in leases)
    return out


def _status_all(ctx: Context, names: list[str]) -> dict[str, object]:
    out = {}
    for name in names:
        client = ctx.client(name, timeout=2.0)
        try:
            out[name] = client.status()
        except ClientError:
            pass
        finally:
            client.close()
    return out


def _converged(ctx: Context, names: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _status_all(ctx, names)
        if len(st) == len(names):
            applied = {(s.raftAppliedIndex, s.header.revision) for s in st.values()}  # type: ignore[attr-defined]
            leaders = {s.leader for s in st.values()}  # type: ignore[attr-defined]
            if len(applied) == 1 and len(leaders) == 1 and 0 not in leaders:
                return True
        time.sleep(0.3)
    return False


def _final_reads(ctx: Context, names: list[str], keys: list[bytes]) -> tuple[int, list[hc.KVOp]] | None:
    """A linearizable read of every key (client -1 in the history) and the final revision."""
    for name in names:
        client = ctx.client(name, timeout=5.0)
        ops = []
        try:
            revision = 0
            for key in keys:
                call = now()
                resp = client.get(key)
                value = bytes(resp.kvs[0].value) if resp.kvs else None
                ops.append(hc.KVOp(-1, hc.KVKind.GET, key, call, now(), value=value, member=name))
                revision = max(revision, resp.header.revision)
            resp = client.get(b"/")
            return max(revision, resp.header.revision), ops
        except ClientError:
            continue
        finally:
            client.close()
    return None


def _reference(ctx: Context, names: list[str], final_rev: int) -> list[hc.Event] | None:
    for name in names:
        events = collect_history(ctx, name, final_rev, timeout=30)
        if events is not None:
            return events
    return None


def _reference_holes(reference: list[hc.Event], final_rev: int) -> list[str]:
    """Every revision from 2 (the first write) to the final one changed at least one key, so
    a revision the reference lacks means events missing from the history a watch served."""
    seen = {e.revision for e in reference}
    return [f"revision {r} has no event in the reference history" for r in range(2, final_rev + 1)
            if r not in seen]


def _compare_members(ctx: Context, names: list[str], reference: list[hc.Event], final_rev: int) -> list[str]:
    """Every member's KV state at the final revision equals the reference replayed; same hash."""
    problems = []
    want = hc.replay(reference, KV_PREFIX)
    hashes: dict[str, int] = {}
    for name in names:
        client = ctx.client(name, timeout=5.0)
        try:
            deadline = time.monotonic() + 15  # a member may still be applying the last entries
            while client.get(b"/", serializable=True).header.revision < final_rev:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            resp = client.get(KV_PREFIX, prefix=True, serializable=True, revision=final_rev)
            have = {bytes(kv.key): bytes(kv.value) for kv in resp.kvs}
            if have != want:
                diff = sorted(set(have.items()) ^ set(want.items()))[:4]
                problems.append(f"{name}: KV state at revision {final_rev} differs from the history "
                                f"(e.g. {diff})")
            hashes[name] = client.hashkv(revision=final_rev).hash
        except ClientError as exc:
            problems.append(f"{name}: could not read its final state: {exc}")
        finally:
            client.close()
    if len(set(hashes.values())) > 1:
        problems.append(f"members disagree on hashkv at revision {final_rev}: {hashes}")
    return problems


def _lease_state(ctx: Context, names: list[str], logs: list[hc.LeaseLog]
                 ) -> tuple[list[tuple[bytes, int]], dict[int, int]]:
    for name in names:
        client = ctx.client(name, timeout=5.0)
        try:
            resp = client.get(LEASE_PREFIX, prefix=True)
            keys = [(bytes(kv.key), kv.lease) for kv in resp.kvs]
            ttl: dict[int, int] = {}
            for lease in sorted({l.lease for l in logs} | {lid for _, lid in keys if lid}):
                ttl[lease] = client.lease_timetolive(lease).TTL
            return keys, ttl
        except ClientError:
            continue
        finally:
            client.close()
    return [], {}


__all__ = ["Options", "run", "BUGS"]
