"""``securekv cluster``: plan a whole secure cluster, and let members join without the CA key.

The group only collects commands; each part lives in its own module so planning (bundles)
and joining (tokens, CSR signing) can change independently:
``cluster_plan_cmd`` adds ``plan``; ``cluster_join_cmd`` adds ``token``, ``join`` and ``renew``.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

# module -> names of the click commands it exposes
_PARTS: dict[str, tuple[str, ...]] = {
    "securekv.cli.cluster_plan_cmd": ("plan",),
    "securekv.cli.cluster_join_cmd": ("token", "join", "renew"),
}


@click.group("cluster")
def cli() -> None:
    """Plan a secure cluster (bundles), issue join tokens, join new members."""


for _module, _names in _PARTS.items():
    if importlib.util.find_spec(_module) is None:
        continue
    _loaded = importlib.import_module(_module)
    for _name in _names:
        cli.add_command(getattr(_loaded, _name.replace("-", "_") + "_cmd"), _name)
