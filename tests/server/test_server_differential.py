"""The same etcdctl session against securekv and the real etcd must print the same thing."""

from __future__ import annotations

import re

from server_harness import clean_stderr

SESSION: list[tuple[str, ...]] = [
    ("put", "foo", "bar"),
    ("put", "foo", "baz", "--prev-kv"),
    ("put", "fop", "1"),
    ("put", "zoo", "2"),
    ("put", "a/b", "3"),
    ("put", "a/c", "4"),
    ("get", "foo"),
    ("get", "foo", "-w", "json"),
    ("get", "fo", "--prefix"),
    ("get", "fo", "--prefix", "--limit", "1", "-w", "json"),
    ("get", "a", "--from-key", "--keys-only"),
    ("get", "a/", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND"),
    ("get", "a/", "--prefix", "--sort-by", "MODIFY", "--order", "ASCEND", "-w", "json"),
    ("get", "", "--prefix", "--print-value-only"),
    ("get", "foo", "--rev", "2"),
    ("get", "foo", "--consistency", "s", "-w", "json"),
    ("get", "a/b", "zzz"),
    ("get", "nothing", "-w", "json"),
    ("del", "a/", "--prefix", "--prev-kv"),
    ("del", "a/", "--prefix"),
    ("put", "foo", "--ignore-value", "--prev-kv"),
    ("get", "foo", "-w", "fields"),
    ("txn", "-w", "json"),
    ("compaction", "4"),
    ("get", "foo", "--rev", "3"),
    ("get", "foo", "--rev", "4", "-w", "json"),
    ("compaction", "4"),
    ("compaction", "99"),
    ("endpoint", "hashkv", "-w", "json"),
    ("alarm", "list"),
    ("alarm", "disarm"),
    ("lease", "timetolive", "abc"),
    ("lease", "list"),
    ("member", "list", "-w", "json"),
    ("get", "", "--prefix", "-w", "table"),
]
TXN_INPUT = 'value("foo") = "baz"\nversion("zoo") > "0"\n\nput zoo 3\nget fop\ndel fop\n\nput nope 1\n\n'


def _normalise(text: str, member) -> str:
    text = text.replace(member.endpoint, "<endpoint>").replace(str(member.peer_port), "<peer>")
    text = re.sub(r'"(cluster_id|member_id|ID)":\d+', r'"\1":<id>', text)
    text = re.sub(r'"hash":\d+', '"hash":<hash>', text)
    text = re.sub(r'"raft_term":\d+', '"raft_term":<term>', text)
    text = re.sub(r'"(ClusterID|MemberID|RaftTerm)" : \d+', r'"\1" : <id>', text)
    text = re.sub(r'"(ID|leader)":\d+', r'"\1":<id>', text)
    return text


def _run(member) -> list[str]:
    out = []
    for args in SESSION:
        stdin = TXN_INPUT if args[0] == "txn" else None
        proc = member.ctl(*args, check=False, stdin=stdin)
        text = proc.stdout + clean_stderr(proc.stderr)
        out.append(f"$ {' '.join(args)} -> {proc.returncode}\n{_normalise(text, member)}")
    return out


def test_same_session_same_output(make_member) -> None:
    etcd = make_member("etcd", name="etcd")
    ours = make_member("securekv", name="ours")
    expected, actual = _run(etcd), _run(ours)
    for want, got in zip(expected, actual):
        assert got == want
