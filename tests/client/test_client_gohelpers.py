"""Pure helpers behind the membership commands: Go's %q, strconv.ParseUint(s, 16, 64), and
etcd's peer-URL check with Go's url.Parse messages (the differential tests in
test_ctl_member.py check the same texts against the real etcdctl)."""

from __future__ import annotations

import pytest

from securekv.cli.ctl_cmd import _parse_uint_hex
from securekv.client.gourl import check_peer_urls, go_url_parse
from securekv.client.printer import Printer, go_quote
from securekv.proto import rpc_pb2


def test_go_quote() -> None:
    assert go_quote("m1=https://h:1,x=y") == '"m1=https://h:1,x=y"'
    assert go_quote('a"b\\c\n\t\x01é') == '"a\\"b\\\\c\\n\\t\\x01é"'


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("ff", 255), ("FFFFFFFFFFFFFFFF", (1 << 64) - 1)])
def test_parse_uint_hex(text: str, value: int) -> None:
    assert _parse_uint_hex(text) == value


@pytest.mark.parametrize(("text", "why"), [("", "invalid syntax"), ("0x1", "invalid syntax"), ("+1", "invalid syntax"),
                                           ("1_0", "invalid syntax"), (" 1", "invalid syntax"),
                                           ("10000000000000000", "value out of range")])
def test_parse_uint_hex_errors(text: str, why: str) -> None:
    with pytest.raises(ValueError) as exc:
        _parse_uint_hex(text)
    assert str(exc.value) == f'strconv.ParseUint: parsing "{text}": {why}'


def test_peer_urls() -> None:
    check_peer_urls(["https://127.0.0.1:2380", " http://[::1]:2380\n", "unix://sock:1", "https://h:"])
    assert go_url_parse("HTTPS://u@h:1/p?q#f") == ("https", "h:1", "/p")
    for urls, msg in [
        ([], "no valid URLs given"),
        (["https://h"], 'URL address does not have the form "host:port": https://h'),
        (["https://h:1/x"], "URL must not contain a path: https://h:1/x"),
        (["ftp://h:1"], "URL scheme must be http, https, unix, or unixs: ftp://h:1"),
        (["10.0.0.1:2380"], 'parse "10.0.0.1:2380": first path segment in URL cannot contain colon'),
        (["https://h\x01:1"], 'parse "https://h\\x01:1": net/url: invalid control character in URL'),
    ]:
        with pytest.raises(ValueError) as exc:
            check_peer_urls(urls)
        assert str(exc.value) == msg


def test_member_printers(capsysbinary) -> None:
    p = Printer("simple")
    resp = rpc_pb2.MemberAddResponse(member=rpc_pb2.Member(ID=0xabc, peerURLs=["https://n:2"]))
    resp.header.cluster_id = 0x1234
    resp.members.add(ID=0x1, name="m1", peerURLs=["https://a:1", "https://b:1"])
    resp.members.add(ID=0xabc, peerURLs=["https://n:2"])
    p.member_add(resp, "new", "https://n:2")
    p.member_remove(0xabc, rpc_pb2.MemberRemoveResponse(header=resp.header))
    p.move_leader(0x1, 0xabc, rpc_pb2.MoveLeaderResponse())
    out = capsysbinary.readouterr().out.decode()
    assert out == (
        "Member              abc added to cluster             1234\n\n"
        'ETCD_NAME="new"\n'
        'ETCD_INITIAL_CLUSTER="m1=https://a:1,m1=https://b:1,new=https://n:2"\n'
        'ETCD_INITIAL_ADVERTISE_PEER_URLS="https://n:2"\n'
        'ETCD_INITIAL_CLUSTER_STATE="existing"\n'
        "Member              abc removed from cluster             1234\n"
        "Leadership transferred from 1 to abc\n"
    )
