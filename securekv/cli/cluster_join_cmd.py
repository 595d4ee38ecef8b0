"""``securekv cluster token create|list|revoke`` and ``securekv cluster join``.

Tokens are made by an administrator (a client certificate of the cluster; the root role when
auth is on); the secret is generated here and only its SHA-256 is sent to the cluster. ``join``
runs on the new machine with nothing but the token (securekv/cluster/join.py says why that is
safe). Logic lives in securekv/cluster/; this module is flags and output.
"""

from __future__ import annotations

import time
from typing import Any

import click

from securekv.errors import SecureKVError, UsageError

CREATE = "/securekvpb.Cluster/JoinTokenCreate"
LIST = "/securekvpb.Cluster/JoinTokenList"
REVOKE = "/securekvpb.Cluster/JoinTokenRevoke"


def _env(name: str) -> list[str]:
    flag = name.upper().replace("-", "_")
    return [f"SECUREKV_CTL_{flag}", f"ETCDCTL_{flag}"]


def _client(ctx: click.Context) -> Any:
    from securekv.client.client import Client

    o = ctx.obj
    return Client(o["endpoints"], cacert=o["cacert"], cert=o["cert"], key=o["key"], user=o["user"] or None,
                  password=o["password"] or None, timeout=10.0)


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


@click.group("token")
@click.option("--endpoints", default="127.0.0.1:2379", envvar=_env("endpoints"), show_default=True,
              help="Members' client URLs (comma-separated).")
@click.option("--cacert", envvar=_env("cacert"), help="Verify server certificates with this CA bundle.")
@click.option("--cert", envvar=_env("cert"), help="Administrator's client certificate.")
@click.option("--key", envvar=_env("key"), help="Its private key.")
@click.option("--user", default="", envvar=_env("user"), help="user:password (when auth is on and not by certificate).")
@click.pass_context
def token_cmd(ctx: click.Context, endpoints: str, cacert: str | None, cert: str | None, key: str | None,
              user: str) -> None:
    """Join tokens: one-time credentials that let a new member get its certificates."""
    name, _, password = user.partition(":")
    ctx.obj = {"endpoints": endpoints, "cacert": cacert, "cert": cert, "key": key, "user": name,
               "password": password}


@token_cmd.command("create")
@click.option("--ttl", default="1h", show_default=True, help="How long the token stays valid (e.g. 30m, 1h, 24h).")
@click.option("--description", default="", help="Free text shown by `token list`.")
@click.pass_context
def create_cmd(ctx: click.Context, ttl: str, description: str) -> None:
    """Create a single-use join token and print the join command for the new member."""
    from securekv.cluster.token import new_token
    from securekv.pki.duration import parse_duration
    from securekv.proto import join_pb2

    try:
        seconds = int(parse_duration(ttl, what="--ttl").total_seconds())
        token = new_token()
        with _client(ctx) as client:
            resp = client.unary(CREATE, join_pb2.JoinTokenCreateRequest(
                id=token.id, secret_hash=token.secret_hash, ttl_seconds=seconds, description=description),
                join_pb2.JoinTokenCreateResponse)
    except SecureKVError as exc:
        _fail(exc)
    full = f"{token.id}.{token.secret}@{resp.ca_cert_hash}" if resp.ca_cert_hash else f"{token.id}.{token.secret}"
    click.echo(full)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resp.expires_unix))
    click.echo(f"# token {token.id}: single use, expires {expires}; CA pinned by {resp.ca_cert_hash or '?'}", err=True)
    click.echo(f"# on the new member: securekv cluster join --token {full} --endpoints "
               f"{ctx.obj['endpoints'].split(',')[0]} --name NAME --address IP", err=True)


@token_cmd.command("list")
@click.pass_context
def list_cmd(ctx: click.Context) -> None:
    """Tokens the cluster knows (ids, expiry, use; never secrets)."""
    from securekv.proto import join_pb2

    try:
        with _client(ctx) as client:
            resp = client.unary(LIST, join_pb2.JoinTokenListRequest(), join_pb2.JoinTokenListResponse)
    except SecureKVError as exc:
        _fail(exc)
    now = time.time()
    click.echo(f"{'ID':8}{'EXPIRES':22}{'STATE':28}{'CREATED BY':16}DESCRIPTION")
    for t in resp.tokens:
        state = (f"used by {t.used_by}" if t.used_unix else "expired" if now >= t.expires_unix else "valid")
        click.echo(f"{t.id:8}{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t.expires_unix)):22}{state:28}"
                   f"{t.created_by or '-':16}{t.description}")


@token_cmd.command("revoke")
@click.argument("token_id")
@click.pass_context
def revoke_cmd(ctx: click.Context, token_id: str) -> None:
    """Revoke a token (by id, or the whole token as printed)."""
    from securekv.proto import join_pb2

    token_id = token_id.split(".", 1)[0]
    try:
        with _client(ctx) as client:
            client.unary(REVOKE, join_pb2.JoinTokenRevokeRequest(id=token_id), join_pb2.JoinTokenRevokeResponse)
    except SecureKVError as exc:
        _fail(exc)
    click.echo(f"join token {token_id} revoked")


@click.command("join")
@click.option("--token", required=True, envvar="SECUREKV_JOIN_TOKEN",
              help="id.secret[@sha256:<hex>] from `securekv cluster token create`.")
@click.option("--ca-cert-hash", default="", help="sha256:<hex> of the CA to trust (if not in --token).")
@click.option("--endpoints", required=True, help="Client URL(s) of member(s) with a signing CA, comma-separated.")
@click.option("--name", required=True, help="This member's name.")
@click.option("--address", "addresses", multiple=True, help="This member's IP address (repeatable; the first is used in its URLs).")
@click.option("--dns", "dns_names", multiple=True, help="DNS name for its certificates (repeatable).")
@click.option("--client-port", default=2379, show_default=True, type=int)
@click.option("--peer-port", default=2380, show_default=True, type=int)
@click.option("--root", default="", help="Write everything under this directory instead of / (as `install` does).")
@click.option("--data-dir", default="/var/lib/securekv", show_default=True, help="Data directory of the member.")
@click.option("--exec", "exec_path", default=None, metavar="COMMAND",
              help="ExecStart of the unit: an absolute program plus arguments (default: this installation).")
@click.option("--user", "service_user", default="securekv", show_default=True, help="Service user of the unit.")
def join_cmd(token: str, ca_cert_hash: str, endpoints: str, name: str, addresses: tuple[str, ...],
             dns_names: tuple[str, ...], client_port: int, peer_port: int, root: str, data_dir: str,
             exec_path: str | None, service_user: str) -> None:
    """Join a running cluster with a join token: no CA key needed on this machine.

    Makes this member's keys, pins the cluster's CA by the token's fingerprint, gets server and
    peer certificates signed by a member, is added as a learner (promoted once caught up), and
    writes its keys, certificates, config and unit. A refusal writes nothing.
    """
    from securekv.cluster.join import JoinSpec, join
    from securekv.cluster.token import parse_token

    try:
        exec_start: tuple[str, ...] = ()
        if exec_path is not None:
            from securekv.cli.install_cmd import _split_exec

            exec_start = tuple(_split_exec(exec_path))
        spec = JoinSpec(parse_token(token, ca_cert_hash), tuple(e for e in endpoints.split(",") if e.strip()), name,
                        tuple(addresses), tuple(dns_names), client_port, peer_port, root, data_dir, service_user,
                        exec_start)
        result = join(spec)
    except (SecureKVError, UsageError) as exc:
        _fail(exc)
    click.echo(f"joined as member {result.member_id:x} ({name}): a learner until it has caught up, then promoted")
    for path in result.files:
        click.echo(f"wrote {path}")
    if root:
        click.echo(f"staged under {root} (as `install bundle --root`): put the tree in place on {name}, then "
                   "`systemctl daemon-reload && systemctl enable --now securekv securekv-renew.timer`")
    else:
        click.echo("start it: systemctl enable --now securekv securekv-renew.timer")


@click.command("renew")
@click.option("--endpoints", required=True, help="Client URL(s) of member(s) with a signing CA, comma-separated.")
@click.option("--cacert", required=True, help="CA bundle this member trusts (e.g. its --trusted-ca-file).")
@click.option("--server-cert", required=True, help="This member's client-port certificate (--cert-file): replaced.")
@click.option("--server-key", required=True, help="Its key (--key-file): replaced by a new key.")
@click.option("--peer-cert", required=True, help="This member's peer certificate (--peer-cert-file): authenticates "
              "the renewal, then replaced.")
@click.option("--peer-key", required=True, help="Its key (--peer-key-file): replaced by a new key.")
@click.option("--before", default="", help="Only if a certificate expires within this duration (e.g. 30d, "
              "720h): for a daily timer; otherwise print when it is due and change nothing.")
def renew_cmd(endpoints: str, cacert: str, server_cert: str, server_key: str, peer_cert: str, peer_key: str,
              before: str) -> None:
    """Renew this member's server and peer certificates through a signing member (no CA key here).

    New keys are made here; the member's current peer certificate authenticates the request;
    the new certificates name the same member and hosts. The files are replaced at once and
    the running member reloads them by itself: no restart, no dropped client.
    """
    from securekv.cluster.join import RenewSpec, renew

    if before:
        from datetime import datetime, timezone

        from securekv.pki.duration import parse_duration
        from securekv.pki.verify import load_cert

        try:
            window = parse_duration(before, what="--before")
            ends = min(load_cert(server_cert).not_valid_after_utc, load_cert(peer_cert).not_valid_after_utc)
        except SecureKVError as exc:
            _fail(exc)
        if ends - datetime.now(timezone.utc) > window:
            click.echo(f"not due: the first certificate expires {ends.isoformat()}, renewal within {before} of it")
            return
    try:
        written = renew(RenewSpec(tuple(e for e in endpoints.split(",") if e.strip()), cacert, server_cert,
                                  server_key, peer_cert, peer_key))
    except (SecureKVError, OSError) as exc:
        _fail(exc)
    for path in written:
        click.echo(f"renewed {path}")
