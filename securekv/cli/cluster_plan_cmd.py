"""``securekv cluster plan``: a CA, one bundle per member and an admin client, from a member list."""

from __future__ import annotations

from pathlib import Path

import click

from securekv.errors import UsageError


class PlanError(click.ClickException):
    """Bad input: one line on stderr, exit status 2, nothing written."""

    exit_code = 2


def _table(spec, out: Path) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"securekv cluster {spec.name}: {len(spec.members)} members", title_justify="left")
    for column in ("member", "address", "DNS names", "client URL", "peer URL", "peer port admits",
                   "client port admits", "bundle"):
        table.add_column(column, overflow="fold")
    clients = ", ".join(map(str, spec.clients))
    for member in spec.members:
        table.add_row(member.name, str(member.address), ", ".join(member.dns) or "-",
                      member.client_url(spec.client_port), member.peer_url(spec.peer_port),
                      ", ".join(spec.peers_of(member)) or "(loopback only)", clients,
                      str(out / f"{member.name}.bundle"))
    console = Console(width=200)
    console.print(table)
    console.print(f"initial-cluster: {spec.initial_cluster()}")
    console.print(f"admin client (CN root): {out / 'admin'}; endpoints {spec.endpoints()}")


@click.command("plan")
@click.option("--name", "cluster_name", required=True, metavar="CLUSTER", help="Cluster name (also the start of initial-cluster-token).")
@click.option("--member", "members", multiple=True, required=True, metavar="NAME=ADDRESS",
              help="A member and the IP address it listens on (repeat for each member).")
@click.option("--dns", multiple=True, metavar="NAME=HOST", help="An extra DNS name in member NAME's certificates (repeatable).")
@click.option("--client-network", "client_networks", multiple=True, metavar="CIDR",
              help="A network allowed on the client port (repeatable; default: the members' addresses).")
# Ports are parsed by us, not click, so a bad one is the same one-line error as every other input.
@click.option("--client-port", default="2379", show_default=True, metavar="PORT")
@click.option("--peer-port", default="2380", show_default=True, metavar="PORT")
@click.option("--out", "out_dir", required=True, metavar="DIR", help="Where the bundles, admin/ and (if created) ca/ go.")
@click.option("--ca", "ca_dir", metavar="DIR", help="Sign with the CA in DIR (default: DIR/ca of --out, created if missing).")
@click.option("--ca-passphrase-file", metavar="FILE", help="Passphrase of an encrypted CA key.")
@click.option("--passphrase-file", metavar="FILE", help="Seal every bundle with this passphrase (scrypt + AES-256-GCM).")
@click.option("--user", default="securekv", show_default=True, metavar="NAME", help="System user the members run as.")
@click.option("--exec", "exec_path", metavar="COMMAND",
              help="ExecStart command of the members' unit (default: this installation's securekv).")
@click.option("--force", is_flag=True, help="Replace bundles and admin/ of an earlier plan (new keys and certificates).")
@click.option("--dry-run", is_flag=True, help="Print the plan as a table; write nothing.")
def plan_cmd(cluster_name: str, members: tuple[str, ...], dns: tuple[str, ...], client_networks: tuple[str, ...],
             client_port: str, peer_port: str, out_dir: str, ca_dir: str | None, ca_passphrase_file: str | None,
             passphrase_file: str | None, user: str, exec_path: str | None, force: bool, dry_run: bool) -> None:
    """Plan a secure cluster: a bundle per member (certificates, config, unit, firewall) and an admin client."""
    from securekv.cli.install_cmd import _split_exec
    from securekv.cluster import plan
    from securekv.deploy import firewall as fw
    from securekv.deploy.install import default_exec_start

    try:
        spec = plan.make_spec(
            cluster_name, members, dns=dns, client_networks=client_networks,
            client_port=fw.parse_port(client_port, "--client-port"), peer_port=fw.parse_port(peer_port, "--peer-port"),
            user=user, exec_start=_split_exec(exec_path) if exec_path is not None else default_exec_start(),
        )
        out = Path(out_dir)
        for warning in spec.warnings:
            click.echo(f"warning: {warning}", err=True)
        if dry_run:
            _table(spec, out)
            return
        plan.check_out_dir(out, spec, force)
        seal_pass = None
        if passphrase_file is not None:
            from securekv.snapcrypt.keys import read_passphrase_file

            seal_pass = read_passphrase_file(passphrase_file).secret
        ca_pass = None
        if ca_passphrase_file is not None:
            from securekv.pki.keys import read_passphrase_file as read_ca_passphrase

            ca_pass = read_ca_passphrase(ca_passphrase_file)
        ca, created = plan.signing_ca(out, Path(ca_dir) if ca_dir is not None else None, ca_pass, cluster_name)
        result = plan.build_plan(spec, out, ca, ca_created=created, seal_passphrase=seal_pass)
        plan.write_plan(result)
    except UsageError as exc:
        raise PlanError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write: {exc}") from None
    for warning in result.warnings:
        if warning not in spec.warnings:
            click.echo(f"warning: {warning}", err=True)
    if created:
        click.echo(f"created CA {result.ca_dir} (keep ca-key.pem offline; members never need it)")
    else:
        click.echo(f"signed with the CA in {result.ca_dir}")
    for f in result.files:
        click.echo(f"wrote {f.path}")
    click.echo(f"CA fingerprint: {result.fingerprint}")
    click.echo("next, on each member: copy its bundle (scp, 0600) and run")
    click.echo(f"  securekv install bundle NAME.bundle --ca-fingerprint {result.fingerprint}"
               + (" --passphrase-file FILE" if seal_pass is not None else "") + " --enable --now")
    click.echo(f"then: set -a; . {out / 'admin' / 'securekv.env'}; set +a; etcdctl endpoint health")
