"""``securekv install``: render and install the systemd unit, member config and firewall rules."""

from __future__ import annotations

import click

from securekv.errors import UsageError


class InstallError(click.ClickException):
    """Bad input: one line on stderr, exit status 2, nothing written."""

    exit_code = 2


@click.group("install")
def cli() -> None:
    """Render and install the systemd unit, member config and firewall rules."""


def _split_exec(text: str) -> list[str]:
    """--exec is words separated by spaces; a newline or another control character is refused
    (it would otherwise end the ExecStart= line of the unit)."""
    from securekv.deploy.values import check_text

    for word in text.split(" "):
        if word:
            check_text("--exec", word, limit=4096)
    return text.split()


@cli.command("systemd")
@click.option("--config", "config_file", required=True, metavar="FILE", help="Member config (etcd config-file keys) to validate and install.")
@click.option("--root", metavar="DIR", help="Write under DIR (DESTDIR convention for packagers); create no user or directory.")
@click.option("--user", default="securekv", show_default=True, metavar="NAME", help="System user and group the member runs as.")
@click.option("--dry-run", is_flag=True, help="Print what would be written and done; change nothing.")
@click.option("--exec", "exec_path", metavar="COMMAND", help="ExecStart command that runs securekv: an absolute program path plus arguments, e.g. '/usr/bin/python3 -m securekv' (default: this installation).")
@click.option("--load-credentials", is_flag=True, help="Hand private keys to the service with LoadCredential= instead of reading them in place.")
@click.option("--backup-timer", metavar="CALENDAR", help="Also render securekv-backup.timer/.service running `securekv ctl snapshot save --backup-dir` on this systemd calendar (e.g. daily).")
@click.option("--backup-dir", metavar="DIR", help="With --backup-timer: directory of the rotated encrypted snapshots.")
@click.option("--backup-key-file", metavar="FILE", help="With --backup-timer: snapshot key (securekv ctl snapshot keygen), loaded as a credential.")
@click.option("--backup-client-cert", metavar="FILE", help="With --backup-timer: client certificate for the snapshot call.")
@click.option("--backup-client-key", metavar="FILE", help="With --backup-timer: its private key, loaded as a credential.")
@click.option("--backup-retain", default=7, show_default=True, type=int, metavar="N", help="With --backup-timer: snapshots kept.")
def systemd_cmd(config_file: str, root: str | None, user: str, dry_run: bool, exec_path: str | None, load_credentials: bool,
                backup_timer: str | None, backup_dir: str | None, backup_key_file: str | None,
                backup_client_cert: str | None, backup_client_key: str | None, backup_retain: int) -> None:
    """Validate FILE, then write the unit, the config and the sysusers.d entry."""
    from securekv.deploy import install

    try:
        plan = install.plan_systemd(config_file, user, _split_exec(exec_path) if exec_path is not None else None,
                                    load_credentials)
        from securekv.deploy.config import STATE_DIR, load_config_file

        if backup_timer is not None:
            import attrs

            from securekv.deploy.backup_timer import TIMER_NAME, plan_timer_files

            argv = _split_exec(exec_path) if exec_path is not None else install.default_exec_start()
            timer = plan_timer_files(config_file, argv, user, backup_timer, backup_dir or "", backup_key_file or "",
                                     backup_client_cert or "", backup_client_key or "", backup_retain)
            plan = attrs.evolve(plan, files=plan.files + timer,
                                actions=(*plan.actions, f"create directory {backup_dir} (mode 0700, owner {user}:{user})"))
        install.check_data_dirs([STATE_DIR, *load_config_file(config_file).writable_paths(),
                                 *([backup_dir] if backup_timer is not None and backup_dir else [])], root)
        if dry_run:
            click.echo(install.describe(plan, root), nl=False)
            return
        if root is not None:
            for path in install.write_files(plan.files, root):
                click.echo(f"wrote {path}")
            return
        config = load_config_file(config_file)
        install.require_root()
        for path in install.write_files(plan.files, "/"):
            click.echo(f"wrote {path}")
        install.apply_systemd(plan, user, [STATE_DIR, *config.writable_paths(), *([backup_dir] if backup_timer else [])])
        click.echo("next: systemctl enable --now securekv.service")
        if backup_timer is not None:
            click.echo(f"next: systemctl enable --now {TIMER_NAME}")
    except UsageError as exc:
        raise InstallError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write: {exc}") from None


@cli.command("firewall")
@click.option("--backend", required=True, metavar="nftables|iptables|firewalld|ufw", help="Firewall to render rules for.")
@click.option("--peers", required=True, metavar="ADDR,...", help="Member IP addresses allowed on the peer port.")
@click.option("--clients", required=True, metavar="CIDR,...", help="Networks allowed on the client port.")
# Ports are parsed by us, not click, so a bad one is the same one-line error as every other input.
@click.option("--client-port", default="2379", show_default=True, metavar="PORT")
@click.option("--peer-port", default="2380", show_default=True, metavar="PORT")
@click.option("--root", metavar="DIR", help="Write the rule files under DIR instead of applying them.")
@click.option("--print", "print_only", is_flag=True, help="Print the rules without applying them.")
def firewall_cmd(backend: str, peers: str, clients: str, client_port: str, peer_port: str, root: str | None, print_only: bool) -> None:
    """Peer port open to the members only, client port to the given networks only; the rest dropped."""
    from securekv.deploy import firewall as fw
    from securekv.deploy import install

    try:
        if root is not None and print_only:
            raise UsageError("--root and --print are mutually exclusive")
        backend = fw.check_backend(backend)
        spec = fw.make_spec(peers, clients, fw.parse_port(client_port, "--client-port"), fw.parse_port(peer_port, "--peer-port"))
        plan = install.plan_firewall(backend, spec)
        if print_only:
            many = len(plan.files) > 1
            for f in plan.files:
                if many:
                    click.echo(f"# ==> {f.path} <==")
                click.echo(f.content, nl=False)
            return
        if root is not None:
            for path in install.write_files(plan.files, root):
                click.echo(f"wrote {path}")
            return
        install.apply_firewall(backend, spec, plan.files)
        click.echo(f"applied {backend} rules: " + "; ".join(fw.describe(spec)))
    except UsageError as exc:
        raise InstallError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write: {exc}") from None


@cli.command("bundle")
@click.argument("bundle_file", metavar="FILE")
@click.option("--root", metavar="DIR", help="Install under DIR (DESTDIR convention); create no user, chown nothing, run nothing.")
@click.option("--firewall", "backend", default="nftables", show_default=True, metavar="nftables|iptables|firewalld|ufw|none",
              help="Firewall to install the member's rules for (none: no rules).")
@click.option("--passphrase-file", metavar="FILE", help="Passphrase of a sealed bundle.")
@click.option("--ca-fingerprint", metavar="sha256:HEX", help="Refuse the bundle unless its CA has this fingerprint (printed by `cluster plan`).")
@click.option("--member", metavar="NAME", help="Refuse the bundle unless it is for member NAME.")
@click.option("--renew-endpoints", metavar="https://HOST:PORT,...",
              help="Signing members the daily renewal timer renews through (default: every member's client URL).")
@click.option("--enable", is_flag=True, help="With --now: load the firewall rules and run systemctl enable --now.")
@click.option("--now", is_flag=True, help="With --enable: start the member now.")
@click.option("--dry-run", is_flag=True, help="Verify the bundle and print what would be written; write nothing.")
def bundle_cmd(bundle_file: str, root: str | None, backend: str, passphrase_file: str | None, ca_fingerprint: str | None,
               member: str | None, renew_endpoints: str | None, enable: bool, now: bool, dry_run: bool) -> None:
    """Verify a member bundle from `securekv cluster plan`, then install its certificates, config,
    unit, renewal timer and firewall rules (a second run changes nothing)."""
    from securekv.cluster import install as bundle_install
    from securekv.cluster.bundle import firewall_load_hint

    try:
        if enable != now:
            raise UsageError("--enable and --now go together (systemctl enable --now)")
        if enable and (root is not None or dry_run):
            raise UsageError("--enable --now acts on this machine; it cannot be combined with --root or --dry-run")
        passphrase = None
        if passphrase_file is not None:
            from securekv.snapcrypt.keys import read_passphrase_file

            passphrase = read_passphrase_file(passphrase_file).secret
        plan = bundle_install.plan_install(bundle_file, backend=backend, passphrase=passphrase, member=member,
                                           ca_fingerprint=ca_fingerprint, root=root, renew_endpoints=renew_endpoints)
        verified = plan.verified
        for warning in verified.warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"bundle for member {verified.bundle.member} of cluster {verified.bundle.cluster}: verified "
                   f"(CA {verified.fingerprint}, certificates valid until {verified.not_after:%Y-%m-%d %H:%M:%SZ})")
        if dry_run:
            paths = bundle_install.would_write(plan, root)
            for path in paths:
                click.echo(f"would write {path}")
            if not paths:
                click.echo("nothing would change: the bundle is installed")
            return
        outcome = bundle_install.install(plan, root)
        for path in outcome.written:
            click.echo(f"wrote {path}")
        for path in outcome.chowned:
            click.echo(f"owner of {path}: {plan.user}")
        if not outcome.changed:
            click.echo(f"nothing changed: the bundle for {verified.bundle.member} is installed already")
        if root is not None:
            return
        if enable:
            for line in bundle_install.start(plan):
                click.echo(line)
            return
        click.echo("next:")
        if plan.backend is not None:
            for line in firewall_load_hint(plan.backend, plan.rules):
                click.echo(f"  {line}")
        click.echo("  systemctl enable --now securekv.service securekv-renew.timer")
    except UsageError as exc:
        raise InstallError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write: {exc}") from None


@cli.command("haproxy")
@click.option("--endpoints", required=True, metavar="NAME=URL,...",
              help="Member client URLs (name=https://host:port, or host:port named m1, m2, ...).")
@click.option("--cacert", required=True, metavar="FILE", help="CA that verifies the members' certificates.")
@click.option("--cert", required=True, metavar="FILE", help="Client certificate for the /health checks (any CN).")
@click.option("--key", required=True, metavar="FILE", help="Its private key.")
@click.option("--listen-addr", default="0.0.0.0:2379", show_default=True, metavar="HOST:PORT",
              help="Where haproxy accepts clients.")
@click.option("--health-pem", default=None, metavar="PATH",
              help="Where to install the check certificate + key (default /etc/haproxy/securekv-health.pem).")
@click.option("--check-interval", default="2s", show_default=True, metavar="DURATION", help="Health check interval.")
@click.option("--root", metavar="DIR", help="Write the files under DIR instead of /.")
@click.option("--print", "print_only", is_flag=True, help="Print the haproxy config and write nothing.")
def haproxy_cmd(endpoints: str, cacert: str, cert: str, key: str, listen_addr: str, health_pem: str | None,
                check_interval: str, root: str | None, print_only: bool) -> None:
    """haproxy in TCP mode in front of the members, with /health checks over mutual TLS."""
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from securekv.client.gofmt import parse_duration
    from securekv.deploy import haproxy, install
    from securekv.deploy.firewall import RenderedFile

    try:
        if root is not None and print_only:
            raise UsageError("--root and --print are mutually exclusive")
        try:
            interval = int(parse_duration(check_interval) * 1000)
        except ValueError as exc:
            raise UsageError(f"--check-interval: {exc}") from None
        if interval < 100:
            raise UsageError("--check-interval must be at least 100ms")
        pem_path = health_pem or haproxy.HEALTH_PEM_PATH
        ca = str(Path(cacert).resolve())
        spec = haproxy.make_spec(endpoints, listen_addr, ca, pem_path, interval)
        text = haproxy.render(spec)
        if print_only:
            click.echo(text, nl=False)
            return
        try:
            pem = haproxy.health_pem(Path(cert).read_bytes(), Path(key).read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
        files = [RenderedFile(haproxy.CONFIG_PATH, text, 0o644), RenderedFile(pem_path, pem.decode(), 0o600)]
        checker = shutil.which("haproxy")
        if checker is not None and root is None:
            # haproxy's own check, on the files as they will be installed (with the real paths)
            with tempfile.TemporaryDirectory() as tmp:
                staged_pem = os.path.join(tmp, "health.pem")
                Path(staged_pem).write_bytes(pem)
                os.chmod(staged_pem, 0o600)
                staged = haproxy.render(haproxy.make_spec(endpoints, listen_addr, ca, staged_pem, interval))
                cfg = os.path.join(tmp, "securekv.cfg")
                Path(cfg).write_text(staged)
                result = subprocess.run([checker, "-c", "-f", cfg], capture_output=True, text=True, timeout=60)
                if result.returncode != 0:
                    raise UsageError("haproxy -c refused the config: " + (result.stderr or result.stdout).strip())
        for path in install.write_files(files, root or "/"):
            click.echo(f"wrote {path}")
        if root is None:
            click.echo(f"next: haproxy -f {haproxy.CONFIG_PATH} (or include it in /etc/haproxy/haproxy.cfg)")
    except UsageError as exc:
        raise InstallError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write: {exc}") from None
