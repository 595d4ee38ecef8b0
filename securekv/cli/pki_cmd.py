"""``securekv pki``: the command-line face of ``securekv.pki``.

Human output by default, ``--json`` for machines. Every operator mistake is reported as one
``securekv pki: error: ...`` line on stderr with a non-zero exit and nothing written.
"""

from __future__ import annotations

import json
import sys

import click

from securekv.errors import SecureKVError

EXIT_ERROR = 1
EXIT_USAGE = 2


class PKIGroup(click.Group):
    """Turns SecureKVError and click parse errors into one stderr line, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SecureKVError as exc:
            click.echo(f"securekv pki: error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)
        except OSError as exc:  # e.g. a directory we may not write to
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"securekv pki: error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(EXIT_ERROR)
        except click.UsageError as exc:
            click.echo(f"securekv pki: error: {exc.format_message()}", err=True)
            ctx.exit(EXIT_USAGE)


def _emit(as_json: bool, data: dict, human: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(human)


def _warn(warnings) -> None:
    for warning in warnings:
        click.echo(f"securekv pki: warning: {warning}", err=True)


def _split(values) -> list[str]:
    from securekv.pki.names import split_csv

    return split_csv(values)


def _passphrase(path: str | None) -> bytes | None:
    if path is None:
        return None
    from securekv.pki.keys import read_passphrase_file

    return read_passphrase_file(path)


def _new_passphrase() -> bytes:
    """``--encrypt-key``: prompt twice (hidden) on a terminal; from a pipe, read one line.

    Without a terminal getpass would warn and echo, and a closed stdin would abort with a
    multi-line message; a script pipes the passphrase instead (or uses --passphrase-file).
    """
    from securekv.errors import UsageError

    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise UsageError("--encrypt-key read no passphrase from standard input (pipe one line, or use --passphrase-file)")
        return line.encode()
    try:
        text = click.prompt("Passphrase for the new CA key", hide_input=True, confirmation_prompt=True, err=True)
    except click.Abort:
        raise UsageError("no passphrase entered for --encrypt-key") from None
    if not text:
        raise UsageError("empty passphrase")
    return text.encode()


def _cn(cn: str | None) -> str | None:
    """An explicitly empty ``--cn`` is a mistake, not a request for the default."""
    if cn is not None and not cn.strip():
        from securekv.errors import UsageError

        raise UsageError("--cn is empty; leave it out to get the default common name")
    return cn


def _duration(text: str | None, what: str):
    if text is None:
        return None
    from securekv.pki.duration import parse_duration

    return parse_duration(text, what=what)


def _date(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")


@click.group(cls=PKIGroup)
def cli() -> None:
    """Certificate authority, certificates, revocation and checks (cfssl-compatible)."""


@cli.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="CA directory.")
@click.option("--csr", type=click.Path(dir_okay=False), help="cfssl CSR JSON (CN, names, key, ca.expiry, ca.pathlen).")
@click.option("--cn", help="Common name of the CA.")
@click.option("--key-algo", help="ecdsa (default), rsa or ed25519.")
@click.option("--key-size", type=int, help="ECDSA 256/384/521, RSA 2048+.")
@click.option("--expiry", help="Validity: 87600h, 3650d, 10y (default 10y root, 5y intermediate).")
@click.option("--pathlen", type=click.IntRange(min=0), help="Max intermediates below this CA.")
@click.option("--force", is_flag=True, help="Replace an existing CA in --dir.")
@click.option("--intermediate", is_flag=True, help="Make an intermediate CA signed by --parent-dir.")
@click.option("--parent-dir", type=click.Path(file_okay=False), help="Directory of the (offline) parent CA.")
@click.option("--permit-dns", multiple=True, help="Name constraint: permitted DNS suffix (repeat or comma list).")
@click.option("--permit-ip", multiple=True, help="Name constraint: permitted IP network, e.g. 10.0.0.0/8.")
@click.option("--encrypt-key", is_flag=True, help="Protect ca-key.pem with a passphrase (prompted unless --passphrase-file).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase for the new CA key (implies --encrypt-key).")
@click.option("--parent-passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of the parent CA key.")
@json_option
def init_cmd(directory, csr, cn, key_algo, key_size, expiry, pathlen, force, intermediate, parent_dir,
             permit_dns, permit_ip, encrypt_key, passphrase_file, parent_passphrase_file, as_json) -> None:
    """Create a CA: DIR/ca.pem, DIR/ca-key.pem (0600), DIR/ca-config.json."""
    from securekv.errors import UsageError
    from securekv.pki.ca import init_ca, init_intermediate

    if not intermediate and (parent_dir or permit_dns or permit_ip or parent_passphrase_file):
        raise UsageError("--parent-dir, --permit-dns, --permit-ip and --parent-passphrase-file need --intermediate")
    if intermediate and not parent_dir:
        raise UsageError("--intermediate needs --parent-dir ROOT (the directory of the signing CA)")
    cn = _cn(cn)
    lifetime = _duration(expiry, "--expiry")
    passphrase = _passphrase(passphrase_file)
    if encrypt_key and passphrase is None:
        passphrase = _new_passphrase()
    if intermediate:
        result = init_intermediate(
            directory, parent_dir, cn=cn, csr=csr, key_algo=key_algo, key_size=key_size, expiry=lifetime,
            pathlen=pathlen, permit_dns=_split(permit_dns), permit_ip=_split(permit_ip), force=force,
            passphrase=passphrase, parent_passphrase=_passphrase(parent_passphrase_file),
        )
    else:
        result = init_ca(directory, cn=cn, csr=csr, key_algo=key_algo, key_size=key_size, expiry=lifetime,
                         pathlen=pathlen, force=force, passphrase=passphrase)
    _warn(result.warnings)
    kind = "intermediate CA" if result.intermediate else "root CA"
    lines = [
        f"Created {kind} {result.certificate.subject.rfc4514_string()} in {result.dir}",
        f"  certificate: {result.cert_path}",
        f"  private key: {result.key_path} (mode 0600{', passphrase-protected' if result.encrypted else ''})",
        f"  config:      {result.config_path}",
    ]
    if result.chain_path:
        lines.append(f"  chain:       {result.chain_path}")
        lines.append(f"  trust root:  {result.root_path}")
    lines += [f"  key:         {result.key_description}", f"  not after:   {_date(result.not_after)}"]
    _emit(as_json, result.to_json(), "\n".join(lines))


@cli.command("issue")
@click.argument("profile")
@click.argument("name")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="CA directory.")
@click.option("--hosts", multiple=True, help="SANs: DNS names and IP literals (repeat or comma list).")
@click.option("--uri", multiple=True, help="URI SAN, e.g. spiffe://cluster/member/m1.")
@click.option("--csr", type=click.Path(dir_okay=False), help="cfssl CSR JSON (CN, hosts, names, key).")
@click.option("--config", type=click.Path(dir_okay=False), help="cfssl signing config (default DIR/ca-config.json).")
@click.option("--expiry", help="Override the profile's expiry (87600h, 90d, 1y, 30m).")
@click.option("--key-algo", help="ecdsa (default), rsa or ed25519.")
@click.option("--key-size", type=int, help="ECDSA 256/384/521, RSA 2048+.")
@click.option("--cn", help="Common name (default NAME; for client certs this is the RBAC user).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of an encrypted CA key.")
@json_option
def issue_cmd(profile, name, directory, hosts, uri, csr, config, expiry, key_algo, key_size, cn,
              passphrase_file, as_json) -> None:
    """Issue DIR/NAME.pem and DIR/NAME-key.pem with PROFILE (server, peer, client, etcd, ...)."""
    from securekv.pki.issue import issue_cert

    result = issue_cert(
        directory, profile, name, hosts=_split(hosts) if hosts else None, uris=_split(uri), cn=_cn(cn), csr=csr,
        config=config, expiry=_duration(expiry, "--expiry"), key_algo=key_algo, key_size=key_size,
        passphrase=_passphrase(passphrase_file),
    )
    _warn(result.warnings)
    lines = [
        f"Issued {profile} certificate {result.certificate.subject.rfc4514_string()}",
        f"  certificate: {result.cert_path}" + (f" (+{len(result.chain)} CA cert(s) in chain)" if result.chain else ""),
        f"  private key: {result.key_path} (mode 0600)",
        f"  SANs:        {', '.join(result.sans.as_strings()) or '(none)'}",
        f"  key:         {result.key_description}",
        f"  not after:   {_date(result.not_after)}" + ("  (clamped to the CA's NotAfter)" if result.clamped else ""),
    ]
    _emit(as_json, result.to_json(), "\n".join(lines))


@cli.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
def info_cmd(file, as_json) -> None:
    """Describe a certificate (from securekv, cfssl or openssl)."""
    from securekv.pki.info import file_info, format_info

    info = file_info(file)
    _emit(as_json, info, format_info(info))


@cli.command("check")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Directory to audit.")
@click.option("--bundle", "bundle", type=click.Path(), metavar="FILE|DIR",
              help="A member bundle from `cluster plan`, or a plan's --out directory (all its *.bundle files).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of sealed bundles (--bundle).")
@click.option("--warn", default="30d", show_default=True, help="Warn about certificates expiring within this.")
@click.option("--hosts", multiple=True, help="Hosts every server certificate must cover.")
@json_option
def check_cmd(directory, bundle, passphrase_file, warn, hosts, as_json) -> None:
    """Check chains, key pairs, expiry, SAN coverage and key file modes (--dir), or member
    bundles (--bundle: the same certificate checks, and what `install bundle` verifies).
    Exit 1 on any error."""
    from securekv.pki.check import check_dir, format_report

    if (directory is None) == (bundle is None):
        raise click.UsageError("give either --dir or --bundle")
    if passphrase_file is not None and bundle is None:
        raise click.UsageError("--passphrase-file goes with --bundle")
    if bundle is not None:
        from securekv.cluster.bundle_check import check_bundles

        passphrase = None
        if passphrase_file is not None:
            from securekv.snapcrypt.keys import read_passphrase_file

            passphrase = read_passphrase_file(passphrase_file).secret
        report = check_bundles(bundle, passphrase=passphrase, warn=_duration(warn, "--warn"), hosts=_split(hosts))
    else:
        report = check_dir(directory, warn=_duration(warn, "--warn"), hosts=_split(hosts))
    _emit(as_json, report.to_json(), format_report(report))
    if not report.ok:
        sys.exit(EXIT_ERROR)


@cli.command("revoke")
@click.argument("target")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="CA directory.")
@click.option("--reason", default="unspecified", show_default=True, help="keyCompromise, superseded, cessationOfOperation, ...")
@json_option
def revoke_cmd(target, directory, reason, as_json) -> None:
    """Record certificate NAME (DIR/NAME.pem) or hex SERIAL as revoked; then run `pki crl`."""
    from securekv.pki.revoke import revoke

    record = revoke(directory, target, reason=reason)
    label = f"{record.name} (serial {record.serial:x})" if record.name else f"serial {record.serial:x}"
    _emit(as_json, record.to_json(),
          f"Revoked {label}: {record.reason}\nRun `securekv pki crl --dir {directory}` to publish it.")


@cli.command("crl")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="CA directory.")
@click.option("--next-update", default="7d", show_default=True, help="When clients should expect a new CRL.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of an encrypted CA key.")
@json_option
def crl_cmd(directory, next_update, passphrase_file, as_json) -> None:
    """Write a signed DIR/crl.pem listing every revoked certificate."""
    from securekv.pki.revoke import write_crl

    result = write_crl(directory, next_update=_duration(next_update, "--next-update"),
                       passphrase=_passphrase(passphrase_file))
    _emit(as_json, result.to_json(),
          f"Wrote CRL #{result.number} to {result.path}: {result.revoked} revoked, next update {_date(result.next_update)}")



def _add_renew() -> None:
    """``pki renew`` is ``cluster renew`` (the same command object: same options, output and
    exit codes), where an operator looking after certificates expects it (docs/pki.md)."""
    from securekv.cli.cluster_join_cmd import renew_cmd

    cli.add_command(renew_cmd, "renew")


_add_renew()
