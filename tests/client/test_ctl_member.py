"""Differential tests of the membership commands, ``move-leader`` and ``--user/--password``:
the same command through the real etcdctl and through ``securekv ctl`` against a real etcd 3.4
single member must print the same (stdout, exit code, ``Error:`` lines).

Membership changes are not idempotent, so each tool runs the whole add → list → update →
promote → remove sequence on its own (etcdctl first, then ``securekv ctl``), and the two
transcripts are compared with the new member's random ID masked."""

from __future__ import annotations

import json
import re

import pytest

from ctlharness import Server, certs, error_lines, free_port, same  # noqa: F401 (fixtures)

TOOLS = ("etcdctl", "securekv")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory, certs, request: pytest.FixtureRequest) -> Server:  # noqa: F811
    s = Server("etcd", tmp_path_factory.mktemp("member-etcd"), certs)
    request.addfinalizer(s.stop)
    return s.start()


def _transcript(server: Server, tool: str, steps: list[tuple[str, ...]], mask: dict[str, str]) -> list[str]:
    out = []
    for args in steps:
        r = server.run(tool, *args)
        assert "Traceback" not in r.stderr, r.stderr
        text = f"$ {' '.join(args)}\n{r.stdout}exit {r.returncode}\n" + "\n".join(error_lines(r.stderr))
        out.append(_mask(text, mask))
    return out


def _self_id(server: Server) -> int:
    r = server.run("etcdctl", "member", "list", "-w", "json")
    return json.loads(r.stdout)["members"][0]["ID"]


def _learner_ids(server: Server) -> list[int]:
    r = server.run("etcdctl", "member", "list", "-w", "json")
    return [m["ID"] for m in json.loads(r.stdout)["members"] if m.get("isLearner")]


def _add(server: Server, tool: str, *args: str) -> tuple[object, int, str]:
    """``member add NAME --peer-urls=URL args`` through ``tool``.

    etcd derives a member ID from the peer URLs, the cluster token and the time in whole
    seconds, and refuses a removed ID: every attempt uses a fresh URL (returned, for masking).
    It retries until the new random ID sorts after this member's, so that both tools'
    transcripts list the members in the same order."""
    self_id = _self_id(server)
    for _attempt in range(40):
        url = f"https://127.0.0.1:{free_port()}"
        r = server.run(tool, "member", "add", args[0], f"--peer-urls={url}", *args[1:])
        assert r.returncode in (0, 4), r.stderr
        (new_id,) = _learner_ids(server)
        if (new_id > self_id) == (self_id < 1 << 63):
            return r, new_id, url
        assert server.run("etcdctl", "member", "remove", f"{new_id:x}").returncode == 0
    raise AssertionError("no member ID in the wanted order after 40 adds")


def _masks(new_id: int, url: str) -> dict[str, str]:
    """etcdctl prints ``Member %16x added ...``: an ID of fewer than 16 hex digits is padded with
    spaces, so the mask takes the padding with it (anchored on "Member ", so that a space that
    merely precedes the ID elsewhere, e.g. in a table cell, is never eaten). Applied in order."""
    return {url: "<NEW-URL>", f"Member {new_id:16x} ": "Member <NEW-ID> ", f"{new_id:x}": "<NEW-ID>",
            str(new_id): "<NEW-ID>"}


_PAD = re.compile(r" {2,}")
_RULE = re.compile(r"-+")


def _mask(text: str, masks: dict[str, str]) -> str:
    for raw, label in masks.items():
        text = text.replace(raw, label)
    # etcdctl's tables size each column to its widest cell, so a new ID one hex digit shorter
    # widens or narrows the ID column's padding (header, rules and every row): padding is not
    # compared, cell contents are.
    lines = []
    for line in text.split("\n"):
        if line.startswith("|"):
            line = _PAD.sub(" ", line)
        elif line.startswith("+") and set(line) <= set("+-"):
            line = _RULE.sub("-", line)
        lines.append(line)
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> str:
    """etcdctl's table layout (olekukonko/tablewriter): columns as wide as their widest cell,
    headers centred, cells left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = "|" + "|".join(f" {c.center(w)} " for c, w in zip(rows[0], widths)) + "|"
    body = ["|" + "|".join(f" {c.ljust(w)} " for c, w in zip(r, widths)) + "|" for r in rows[1:]]
    return "\n".join([rule, head, rule, *body, rule]) + "\n"


def test_masks_take_the_padding_of_short_ids() -> None:
    """The flake: 1 random ID in 16 has fewer than 16 hex digits, which changes the padding of
    "Member %16x" and of the table's ID column. Runs whose IDs differ in length (also an existing
    member whose ID is short) must mask to the same text."""
    url = "https://127.0.0.1:1"
    for self_id in (0xAB00000000000001, 0x0AB0000000000001):
        outputs = []
        for new_id in (0x0FEDCBA987654321, 0xFEDCBA9876543210, 0x00000ABCDEF12345):
            table = _table([["ID", "STATUS", "NAME", "PEER ADDRS", "IS LEARNER"],
                            [f"{self_id:x}", "started", "m1", "https://127.0.0.1:2380", "false"],
                            [f"{new_id:x}", "unstarted", "", url, "true"]])
            text = (f"Member {new_id:16x} added to cluster {0xC1:16x}\n{table}"
                    f"{new_id:x}, unstarted, , {url}, , true\n{{\"ID\":{new_id}}}\n")
            outputs.append(_mask(text, _masks(new_id, url)))
        assert outputs[0] == outputs[1] == outputs[2], outputs
        assert outputs[0].startswith(f"Member <NEW-ID> added to cluster {0xC1:16x}\n+-+-+-+-+-+\n| ID | STATUS |")


def test_learner_add_list_update_promote_remove(etcd: Server) -> None:
    """The full life of a not-started learner, in every output format, through both tools."""
    p2 = f"https://127.0.0.1:{free_port()}"
    transcripts = []
    for tool in TOOLS:
        r, new_id, p1 = _add(etcd, tool, "newbie", "--learner")
        assert r.returncode == 0, r.stderr
        masks = _masks(new_id, p1)
        hx = f"{new_id:x}"
        text = [_mask(r.stdout, masks)]
        text += _transcript(etcd, tool, [
            ("member", "list"), ("member", "list", "-w", "json"), ("member", "list", "-w", "table"),
            ("member", "update", hx, f"--peer-urls={p2}"),
            ("member", "update", hx, "--peer-urls", p1, "-w", "json"),
            ("member", "update", hx, f"--peer-urls={p2}", "-w", "table"),  # updated, then exit 4
            ("member", "list"),
            ("member", "promote", hx),  # etcd: not in sync with the leader
            ("member", "promote", hx, "-w", "json"),
            ("member", "add", "again", f"--peer-urls={p2}", "--learner"),  # URL already taken
            ("member", "remove", hx),
            ("member", "remove", hx),  # now unknown
            ("member", "list"),
        ], masks)
        transcripts.append(text)
    assert transcripts[1] == transcripts[0]
    assert "promote" in transcripts[0][9] and "in sync with leader" in transcripts[0][9]


def test_member_add_and_remove_json_and_table(etcd: Server) -> None:
    transcripts = []
    for tool in TOOLS:
        r, new_id, p1 = _add(etcd, tool, "jay", "--learner", "-w", "json")
        assert r.returncode == 0, r.stderr
        masks = _masks(new_id, p1)
        text = [_mask(r.stdout, masks)]
        text += _transcript(etcd, tool, [("member", "remove", f"{new_id:x}", "-w", "json")], masks)
        # table: etcdctl adds the member, then reports the format as unsupported (exit 4)
        r, new_id, p1 = _add(etcd, tool, "tab", "--learner", "-w", "table")
        text.append(f"{r.stdout}exit {r.returncode}\n{error_lines(r.stderr)}")
        text += _transcript(etcd, tool, [("member", "remove", f"{new_id:x}", "-w", "table")], _masks(new_id, p1))
        assert _learner_ids(etcd) == []
        transcripts.append(text)
    assert transcripts[1] == transcripts[0]
    assert re.search(r"not supported as output format", transcripts[0][2])


def test_member_errors_match(etcd: Server) -> None:
    self_hex = f"{_self_id(etcd):x}"
    url = f"https://127.0.0.1:{free_port()}"
    for args in [
        ("member", "add"), ("member", "add", "x", "y", "HTTP://z", "https://w"), ("member", "add", "x"),
        ("member", "add", "x", "--peer-urls", "not a url", "--learner"),
        ("member", "remove"), ("member", "remove", "zz"), ("member", "remove", "1ffffffffffffffff"),
        ("member", "remove", "0x12"), ("member", "remove", "1234"), ("member", "remove", "a", "b"),
        ("member", "update", "1234"), ("member", "update", "1234", "--peer-urls", url),
        ("member", "update", "12g", "--peer-urls", url), ("member", "update"),
        ("member", "promote"), ("member", "promote", "1234"), ("member", "promote", self_hex),
        ("member", "promote", "g"),
    ]:
        same(etcd, *args)
    # clientv3 checks peer URLs itself (etcd's types.NewURLs over Go's url.Parse) before sending
    for urls in ["a,b", "http://[::1", "127.0.0.1:2380", "localhost:2380", "https://h:x", "https://h",
                 "https://h:1/p", "https://h:1/", "https://[::1]:1, ,x", ":80", "https://a:b:c", "ftp://h:1"]:
        same(etcd, "member", "add", "x", "--learner", "--peer-urls", urls)
        same(etcd, "member", "update", "1234", f"--peer-urls={urls}")


def test_move_leader_matches(etcd: Server) -> None:
    self_hex = f"{_self_id(etcd):x}"
    for args in [
        ("move-leader", self_hex), ("move-leader", self_hex, "-w", "json"), ("move-leader", self_hex, "-w", "table"),
        ("move-leader", "1234"), ("move-leader",), ("move-leader", "a", "b"), ("move-leader", "xyz"),
    ]:
        same(etcd, *args, normalise=True)


def test_user_flags_without_auth_enabled(etcd: Server) -> None:
    """Auth off: clientv3 ignores 'authentication is not enabled' and goes on without a token."""
    etcd.run("etcdctl", "put", "ua", "1")
    for args in [("--user", "alice:pw", "get", "ua"), ("get", "ua", "--user", "alice", "--password", "pw"),
                 ("--user", "alice:", "get", "ua")]:
        same(etcd, *args)


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory, certs, request: pytest.FixtureRequest) -> Server:  # noqa: F811
    """A second real etcd with auth enabled: root (also the client certificate's CN) and alice,
    who may only touch the a/ prefix."""
    s = Server("etcd", tmp_path_factory.mktemp("auth-etcd"), certs)
    request.addfinalizer(s.stop)
    s.start()
    for step in [
        ("user", "add", "root", "--new-user-password", "rootpw", "--interactive=false"),
        ("role", "add", "root"), ("user", "grant-role", "root", "root"),
        ("user", "add", "alice", "--new-user-password", "alicepw", "--interactive=false"),
        ("role", "add", "arole"), ("role", "grant-permission", "arole", "readwrite", "a/", "--prefix"),
        ("user", "grant-role", "alice", "arole"),
        ("auth", "enable"),
    ]:
        r = s.run("etcdctl", *step)
        assert r.returncode == 0, (step, r.stdout, r.stderr)
    return s


def test_user_token_is_sent(auth_etcd: Server) -> None:
    s = auth_etcd
    same(s, "--user", "alice:alicepw", "put", "a/1", "one", normalise=True)
    for args in [
        ("--user", "alice:alicepw", "get", "a/1"),
        ("get", "a/", "--prefix", "--user=alice", "--password=alicepw", "-w", "json"),
        ("--user", "alice:alicepw", "get", "b"),  # outside alice's prefix: permission denied
        ("--user", "alice:alicepw", "put", "b", "x"),
        ("--user", "alice:wrong", "get", "a/1"),  # exit 2, authentication failed
        ("--user", "nobody:pw", "get", "a/1"),
        ("--user", "root:rootpw", "get", "a/1"),
        ("--user", "alice:alicepw", "member", "list"),
        ("get", "a/1"),  # no token: the client certificate's CN (root) is the user
        ("--user", "alice:alicepw", "watch", "b", "--rev", "1"),  # streams carry the token too
        ("--user", "alice:alicepw", "txn"),
        ("--user", "alice:alicepw", "snapshot", "save", str(s.base / "snap.db")),
    ]:
        # securekv ctl encrypts snapshots: a key in its environment (etcdctl ignores it)
        same(s, *args, normalise=True, stdin="\n\nput b x\n\n" if "txn" in args else None,
             env={"SECUREKV_SNAPSHOT_KEY_FILE": _snapshot_key(s.base)} if "snapshot" in args else None)
    env = {"ETCDCTL_USER": "alice", "ETCDCTL_PASSWORD": "alicepw"}
    same(s, "get", "b", env=env)
    same(s, "get", "a/1", env=env)
    # no password given: etcdctl asks for it ("Password: " on stdout, a line from stdin)
    outs = [s.run(tool, "--user", "alice", "get", "a/1", stdin="alicepw\n") for tool in TOOLS]
    assert [(r.stdout, r.returncode) for r in outs[1:]] == [(r.stdout, r.returncode) for r in outs[:1]]
    assert outs[0].stdout == "Password: \na/1\none\n"
    r = s.run("securekv", "get", "b", env={"SECUREKV_CTL_USER": "alice:alicepw"})
    assert r.returncode == 1 and r.stderr == "Error: etcdserver: permission denied\n"


def _snapshot_key(base) -> str:
    from securekv.snapcrypt.keys import keygen

    path = base / "snapshot.key"
    if not path.exists():
        keygen(path)
    return str(path)
