"""``securekv gateway [start]``: etcd's L4 gateway with etcd's flags (server/tcpgateway.py)."""

from __future__ import annotations

import logging
import signal
import sys
from urllib.parse import urlsplit

import click


def _split_hostport(text: str) -> tuple[str, int]:
    text = text.strip()
    parts = urlsplit(text if "://" in text else f"//{text}")  # etcd strips the scheme
    if not parts.hostname or parts.port is None:
        raise click.UsageError(f'error parsing endpoint "{text}" (want host:port or https://host:port)')
    return parts.hostname, parts.port


def _duration(text: str) -> float:
    from securekv.client.gofmt import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.UsageError(f"--retry-delay: {exc}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("start", required=False, type=click.Choice(["start"]))
@click.option("--endpoints", default="127.0.0.1:2379", show_default=True, envvar="ETCD_GATEWAY_ENDPOINTS",
              help="Comma separated member client endpoints (host:port or https://host:port).")
@click.option("--listen-addr", default="127.0.0.1:23790", show_default=True, help="Listen address.")
@click.option("--retry-delay", default="1m0s", show_default=True, help="Delay before retrying failed endpoints.")
@click.option("--discovery-srv", default="", help="DNS domain whose _etcd-client-ssl._tcp records list the endpoints.")
@click.option("--discovery-srv-name", default="", help="Suffix of the SRV names.")
@click.option("--insecure-discovery", is_flag=True, help="Accept http:// (_etcd-client._tcp) SRV records.")
@click.option("--trusted-ca-file", default="",
              help="With --discovery-srv: keep only endpoints whose TLS certificate this CA verifies.")
@click.option("--logger", default="zap", type=click.Choice(["zap", "capnslog"]), show_default=True)
@click.option("--log-level", default="info", show_default=True)
def cli(start: str | None, endpoints: str, listen_addr: str, retry_delay: str, discovery_srv: str,
        discovery_srv_name: str, insecure_discovery: bool, trusted_ca_file: str, logger: str, log_level: str) -> None:
    """etcd's L4 gateway: TCP pass-through to the members with endpoint health and failover.

    TLS stays end to end: clients keep presenting their certificates to the members.
    """
    import trio

    from securekv.server.etcdlog import LEVELS, setup
    from securekv.server.tcpgateway import Remote, TCPGateway

    if log_level not in LEVELS:
        raise click.UsageError(f"--log-level must be one of {', '.join(LEVELS)}")
    setup(logger, log_level, ["stderr"])
    delay = _duration(retry_delay)
    if delay <= 0:
        raise click.UsageError("--retry-delay must be positive")
    remotes: list[Remote] = []
    if discovery_srv:
        remotes = _discover(discovery_srv, discovery_srv_name, insecure_discovery, trusted_ca_file)
    if not remotes:
        remotes = [Remote(*_split_hostport(e)) for e in endpoints.split(",") if e.strip()]
    if not remotes:
        raise click.UsageError("no endpoints")
    lhost, lport = _split_hostport(listen_addr)
    for r in remotes:
        if r.port == lport and r.host == lhost:
            raise click.UsageError(f"gateway is listening on the endpoint {r.addr} it proxies to (a loop)")
    gateway = TCPGateway(remotes, retry_delay=delay)

    async def main() -> None:
        from securekv.server.sdnotify import Notifier

        try:
            listeners = await trio.open_tcp_listeners(lport, host=lhost)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {listen_addr}: {exc.strerror or exc}") from None
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(gateway.serve, listeners)
                Notifier.from_environment().ready(status=f"proxying {listen_addr}")
                async for _sig in signals:
                    logging.getLogger("securekv.gateway").info("received signal; shutting down")
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        matched, _ = group.split(click.ClickException)
        if matched is None:
            raise
        leaf = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    sys.exit(0)


def _discover(domain: str, service_name: str, insecure: bool, ca_file: str) -> list:
    """etcd's discoverEndpoints: client SRV records; with a CA, only endpoints that pass a TLS
    handshake verified by it (by the SRV target name) are kept."""
    from securekv.client.srv import DiscoveryError, Resolver, get_client
    from securekv.server.tcpgateway import Remote

    resolver = Resolver.from_env()
    try:
        endpoints, records = get_client("etcd-client", domain, service_name, resolver)
    except DiscoveryError as exc:
        logging.getLogger("securekv.gateway").warning("failed to discover endpoints: %s", exc)
        return []
    remotes = []
    for ep, record in zip(endpoints, records):
        if ep.startswith("http://") and not insecure:
            logging.getLogger("securekv.gateway").warning("ignoring discovered insecure endpoint %s", ep)
            continue
        if ca_file and ep.startswith("https://") and not _tls_ok(record.target, record.port, ca_file, resolver):
            logging.getLogger("securekv.gateway").warning("dropping endpoint %s: TLS verification failed", ep)
            continue
        remotes.append(Remote(record.target, record.port, record.priority, record.weight))
    return remotes


def _tls_ok(host: str, port: int, ca_file: str, resolver) -> bool:
    import socket
    import ssl

    from securekv.tlspolicy import simple_client_context

    ctx = simple_client_context(ca_file)  # the one TLS policy (securekv/tlspolicy), as every dialer
    try:
        address = resolver.addresses(host)[0]
        with socket.create_connection((address, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host):
                return True
    except (OSError, ssl.SSLError, IndexError):
        return False
