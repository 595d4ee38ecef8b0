"""``securekv`` entry point: a click group whose subcommands load on first use.

Each subcommand lives in its own module (``securekv/cli/<name>_cmd.py``) exposing a click
command or group named ``cli``; importing lazily keeps ``securekv pki`` from paying for grpc.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from securekv import __version__

# name -> (module, short help). Keep sorted by name.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "cluster": ("securekv.cli.cluster_cmd", "Plan a secure cluster (bundles), join tokens, joining members."),
    "ctl": ("securekv.cli.ctl_cmd", "etcdctl-compatible client commands."),
    "dev": ("securekv.cli.dev_cmd", "A local mutual-TLS cluster in one command (and `dev down`)."),
    "gateway": ("securekv.cli.gateway_cmd", "etcd's L4 gateway: TCP pass-through with failover."),
    "install": ("securekv.cli.install_cmd", "Render and install systemd units, firewall rules and haproxy."),
    "pki": ("securekv.cli.pki_cmd", "Certificate authority, certificates, revocation and checks."),
    "serve": ("securekv.cli.serve_cmd", "Run a securekv member (etcd's flags)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, (module, _) in SUBCOMMANDS.items() if _module_exists(module))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = SUBCOMMANDS.get(cmd_name)
        if entry is None or not _module_exists(entry[0]):
            return None
        module = importlib.import_module(entry[0])
        command = module.cli
        if not command.help and not command.short_help:
            command.short_help = entry[1]
        return command


def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="securekv")
def main() -> None:
    """securekv: a TLS-first, etcd-compatible key-value store and its deployment toolkit."""


if __name__ == "__main__":  # pragma: no cover
    main()
