"""``python -m securekv.torture``: one fault-suite run; the last line printed is its JSON summary."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import click

from securekv.torture.nemesis import KINDS
from securekv.torture.run import BUGS, Options, run
from securekv.torture.workload import DEFAULT_MIX


def _mix(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float, float, float]:
    try:
        weights = tuple(float(w) for w in value.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 4 or min(weights) < 0 or sum(weights) <= 0:
        raise click.BadParameter("four non-negative weights: put,get,cas,delete")
    return weights  # type: ignore[return-value]


def _kinds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS + ("none",)]
    if unknown:
        raise click.BadParameter(f"unknown fault {', '.join(unknown)} (known: {', '.join(KINDS)}, none)")
    return tuple(k for k in kinds if k != "none")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--members", type=click.Choice(["3", "5"]), default="3", show_default=True,
              help="Cluster size.")
@click.option("--seconds", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Length of the chaos phase (healing and checking come after it).")
@click.option("--nemesis", "nemesis", default=",".join(KINDS), show_default=True, callback=_kinds,
              help="Comma-separated faults (or 'none').")
@click.option("--seed", type=int, default=None, help="Seed of the schedule and the clients' choices.")
@click.option("--clients", type=click.IntRange(min=1, max=64), default=6, show_default=True,
              help="KV client threads.")
@click.option("--keys", type=click.IntRange(min=1, max=1000), default=8, show_default=True,
              help="Keys the KV clients share.")
@click.option("--rate", type=click.FloatRange(min=0), default=150.0, show_default=True,
              help="Target KV operations per second over all clients (0: unthrottled).")
@click.option("--mix", default=",".join(f"{w:g}" for w in DEFAULT_MIX), show_default=True, callback=_mix,
              help="Relative weights of put, get, compare-and-set and delete.")
@click.option("--watchers", type=click.IntRange(min=0, max=16), default=2, show_default=True)
@click.option("--lease-clients", type=click.IntRange(min=0, max=16), default=1, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where members keep data dirs and logs (default: a new temp dir, removed after an ok run).")
@click.option("--keep", is_flag=True, help="Keep the work dir even after an ok run.")
@click.option("--tmpfs-mb", type=click.IntRange(min=16), default=96, show_default=True,
              help="Size of each member's data-dir tmpfs (disk-full, root only).")
@click.option("--json", "as_json", is_flag=True, help="Print only progress on stderr and the JSON summary.")
@click.option("--inject-bug", type=click.Choice(BUGS), default=None, hidden=True,
              help="TEST ONLY: run a deliberately broken server build to prove the checks bite.")
@click.option("-v", "--verbose", is_flag=True, help="Log the nemesis and the clients to stderr.")
def cli(members: str, seconds: float, nemesis: tuple[str, ...], seed: int | None, clients: int, keys: int,
        rate: float, mix: tuple[float, float, float, float], watchers: int, lease_clients: int, workdir: Path | None, keep: bool, tmpfs_mb: int,
        as_json: bool, inject_bug: str | None, verbose: bool) -> None:
    """Run real members under faults with a checked workload.

    Exit status: 0 when the verdict is "ok", 1 when a check failed, 2 when the run could not
    check everything (e.g. the cluster did not recover).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C: members are killed and tmpfs mounts removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    opts = Options(members=int(members), seconds=seconds, nemesis=nemesis, seed=seed, workdir=workdir,
                   keep=keep, kv_clients=clients, keys=keys, rate=rate, mix=mix, lease_clients=lease_clients,
                   watchers=watchers, inject_bug=inject_bug, tmpfs_mb=tmpfs_mb)

    def progress(text: str) -> None:
        click.echo(f"torture: {text}", err=True)

    summary = run(opts, progress)
    if not as_json:
        _human(summary)
    click.echo(json.dumps(summary if not as_json else _short(summary), sort_keys=True))
    sys.exit({"ok": 0, "fail": 1}.get(summary["verdict"], 2))


def _short(summary: dict) -> dict:
    """The JSON line: every count, plus the details only when something is wrong."""
    out = {k: v for k, v in summary.items() if k != "details"}
    if summary["verdict"] != "ok":
        out["details"] = {k: v for k, v in summary["details"].items() if v and k != "nemesis_events"}
    return out


def _human(s: dict) -> None:
    click.echo(f"{s['members']} members, {s['seconds']:.0f}s: {s['ops']} ops ({s['pending_ops']} pending), "
               f"{s['nemesis_events']} nemesis events {s['nemesis_by_kind']}, {s['watch_events']} watch events, "
               f"{s['leases']} leases")
    for name, items in s["details"].items():
        if name == "nemesis_events" or not items:
            continue
        click.echo(f"{name}:")
        for item in items:
            click.echo("  " + str(item).replace("\n", "\n  "))
    for note in s.get("notes", []):
        click.echo(f"note: {note}")
    click.echo(f"violations {s['violations']}, lost writes {s['lost_writes']}, watch gaps {s['watch_gaps']}: "
               f"{s['verdict'].upper()}")


if __name__ == "__main__":
    cli(prog_name="python -m securekv.torture")
