"""clientv3's peer-URL check (etcd ``types.NewURLs`` over Go's ``url.Parse``), with Go's messages.

``member add`` and ``member update`` validate the URLs before sending anything; etcdctl prints
these errors, so the same input must fail with the same text here.
"""

from __future__ import annotations

from securekv.client.printer import go_quote

_SCHEMES = ("http", "https", "unix", "unixs")


def _valid_optional_port(port: str) -> bool:
    if port == "":
        return True
    return port[0] == ":" and all("0" <= c <= "9" for c in port[1:])


def go_url_parse(raw: str) -> tuple[str, str, str]:
    """(scheme, host, path) the way Go's url.Parse splits them; ValueError with Go's text."""

    def fail(msg: str) -> None:
        raise ValueError(f"parse {go_quote(raw)}: {msg}")

    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        fail("net/url: invalid control character in URL")
    rest = raw.split("#", 1)[0]
    scheme = ""
    for i, c in enumerate(rest):
        if ("a" <= c <= "z") or ("A" <= c <= "Z"):
            continue
        if ("0" <= c <= "9") or c in "+-.":
            if i == 0:
                break
            continue
        if c == ":":
            if i == 0:
                fail("missing protocol scheme")
            scheme, rest = rest[:i].lower(), rest[i + 1:]
        break
    rest = rest.split("?", 1)[0]
    if scheme and not rest.startswith("/"):
        return scheme, "", ""  # opaque ("localhost:2380"): no host
    if not scheme and not rest.startswith("/"):
        if ":" in rest.split("/", 1)[0]:
            fail("first path segment in URL cannot contain colon")
        return "", "", rest
    if not rest.startswith("//"):
        return scheme, "", rest
    authority, slash, path = rest[2:].partition("/")
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            fail("missing ']' in host")
        colon_port = host[end + 1:]
        if not _valid_optional_port(colon_port):
            fail(f"invalid port {go_quote(colon_port)} after host")
    else:
        i = host.rfind(":")
        if i != -1 and not _valid_optional_port(host[i:]):
            fail(f"invalid port {go_quote(host[i:])} after host")
    return scheme, host, slash + path


def _split_host_port(host: str) -> bool:
    """Whether Go's net.SplitHostPort accepts ``host``."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or not host[end + 1:].startswith(":"):
            return False
        return "[" not in host[1:] and "]" not in host[end + 1:]
    i = host.rfind(":")
    if i < 0 or ":" in host[:i]:
        return False
    return "[" not in host and "]" not in host


def check_peer_urls(urls: list[str]) -> None:
    """etcd's types.NewURLs: ValueError with the message etcdctl prints for a bad URL."""
    if not urls:
        raise ValueError("no valid URLs given")
    for raw in urls:
        text = raw.strip()
        scheme, host, path = go_url_parse(text)
        if scheme not in _SCHEMES:
            raise ValueError(f"URL scheme must be http, https, unix, or unixs: {text}")
        if not _split_host_port(host):
            raise ValueError(f'URL address does not have the form "host:port": {text}')
        if path:
            raise ValueError(f"URL must not contain a path: {text}")
