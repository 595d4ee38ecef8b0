"""``python -m securekv.sim --seeds N [--start S] [--nodes 1|3|5] [--inject-bug BUG] [--json]``

Exit status 0 only when no seed violated anything; a failing seed replays exactly with
``--start SEED --seeds 1 --trace``.
"""

from __future__ import annotations

import json
import sys

import click

from securekv.sim.runner import BUGS, params_for, run_seeds, summarize
from securekv.sim.world import RunResult


def _report(r: RunResult, echo: bool) -> None:
    v = r.violation
    if v is None:
        return
    click.echo(f"VIOLATION seed={r.seed} invariant={v.invariant!r} at t={v.time}")
    click.echo(f"  {v.detail}".replace("\n", "\n  "))
    click.echo("  trace (last events):")
    for line in v.trace:
        click.echo(f"    {line}")
    if echo:
        click.echo("")


@click.command()
@click.option("--seeds", type=click.IntRange(min=1), default=100, show_default=True,
              help="How many seeds to run.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True,
              help="First seed.")
@click.option("--nodes", type=click.Choice(["1", "3", "5"]), default="3", show_default=True,
              help="Initial cluster size (1: a single voter, no membership changes).")
@click.option("--ticks", type=click.IntRange(min=20), default=None,
              help="Length of the fault phase in nominal ticks (default 400).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (results are identical for any value).")
@click.option("--fail-fast", is_flag=True,
              help="Run seeds in order in one process and stop at the first violation.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON summary line.")
@click.option("--trace", is_flag=True, help="Print every seed's full event trace.")
@click.option("--inject-bug", type=click.Choice(BUGS), default=None,
              help="Break a rule of the node core or the Raft core on purpose, to show the simulator catches it.")
def main(seeds: int, start: int, nodes: str, ticks: int | None, jobs: int, fail_fast: bool,
         as_json: bool,
         trace: bool, inject_bug: str | None) -> None:
    """Deterministic simulation of a securekv cluster (every member the server's node core,
    applier, watch hub and restart path) under network, disk, clock and membership faults, with
    Raft safety, liveness, linearizability, lost-write, watch and lease checks."""
    params = params_for(int(nodes), ticks, full_trace=trace)
    results = run_seeds(range(start, start + seeds), params, jobs=jobs, bug=inject_bug,
                        fail_fast=fail_fast)
    for r in results:
        if trace:
            click.echo(f"--- seed {r.seed}")
            for line in r.trace:
                click.echo(line)
        _report(r, echo=True)
    summary = summarize(results, params)
    click.echo(
        f"{summary['seeds']} seeds (from {start}, {nodes} node{'s' if nodes != '1' else ''}{', bug ' + inject_bug if inject_bug else ''}): "
        f"{summary['commits']} commits, {summary['elections']} elections, "
        f"{summary['faults']} faults ({summary['crashes']} crashes), "
        f"{summary['ops']} client ops ({summary['pending_ops']} pending), "
        f"{summary['snapshots']} snapshots sent, {summary['conf_changes']} conf changes; "
        f"{summary['violations']} violations")
    if summary["undecided"]:
        click.echo(f"warning: {summary['undecided']} key histories were too large to decide")
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    sys.exit(0 if summary["violations"] == 0 else 1)


if __name__ == "__main__":
    main()
