"""Endpoint strings and TLS material -> grpcio channels (etcdctl's rules)."""

from __future__ import annotations

from pathlib import Path

import attrs
import grpc

from securekv.errors import UsageError

# The Go client accepts any size it is sent; grpcio's 4 MiB default would cut big ranges.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", 2 * 1024 * 1024 + 512 * 1024),
    ("grpc.enable_retries", 0),
]


@attrs.frozen
class TLSFiles:
    """Paths given by ``--cacert/--cert/--key``; any of them set means TLS (as in etcdctl)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.cacert or self.cert or self.key)

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise UsageError("both --cert and --key are needed for a client certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.cacert) if self.cacert else None,
            private_key=_read(self.key) if self.key else None,
            certificate_chain=_read(self.cert) if self.cert else None,
        )


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"open {path}: {exc.strerror.lower() if exc.strerror else exc}") from None


@attrs.frozen
class Endpoint:
    """One ``--endpoints`` entry: ``https://h:p``, ``http://h:p`` or a bare ``h:p``."""

    text: str
    target: str
    tls: bool


def parse_endpoint(text: str, tls_files: TLSFiles) -> Endpoint:
    text = text.strip()
    if text.startswith("https://"):
        rest, tls = text[len("https://"):], True
    elif text.startswith("http://"):
        rest, tls = text[len("http://"):], False
    elif text.startswith("unix://") or text.startswith("unixs://"):
        raise UsageError(f"unsupported endpoint scheme: {text}")
    else:
        rest, tls = text, tls_files.any
    rest = rest.rstrip("/")
    if not rest or "/" in rest:
        raise UsageError(f"invalid endpoint {text!r} (want [https://]host:port)")
    return Endpoint(text=text, target=rest, tls=tls)


# Host name -> IP address for names resolved by securekv's own resolver (SRV targets found
# through $SECUREKV_DNS_RESOLVER, client/srv.py): gRPC has its own resolver, so it dials the
# address while TLS still verifies the certificate against the name.
RESOLVED: dict[str, str] = {}


def open_channel(ep: Endpoint, tls_files: TLSFiles) -> grpc.Channel:
    target, options = ep.target, list(CHANNEL_OPTIONS)
    host, _, port = ep.target.rpartition(":")
    ip = RESOLVED.get(host.strip("[]"))
    if ip is not None:
        target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        if ep.tls:
            options.append(("grpc.ssl_target_name_override", host.strip("[]")))
    if ep.tls:
        return grpc.secure_channel(target, tls_files.credentials(), options=options)
    return grpc.insecure_channel(target, options=options)
