"""`securekv install firewall`: rules checked by the real nft/iptables-restore, XML and ufw grammar.

Rules are only ever loaded inside a private network namespace (`unshare -n`): the test machine's
own firewall is never touched.
"""

from __future__ import annotations

import ipaddress
import re
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from deploy_helpers import run_securekv, snapshot
from securekv.deploy import firewall as fw

PEERS = "10.0.0.13,10.0.0.11,10.0.0.12,fd00:10::11"
CLIENTS = "10.0.0.0/16,192.168.7.0/24,2001:db8:7::/48"
NETNS = ("unshare", "--net")


def spec() -> fw.FirewallSpec:
    return fw.make_spec(PEERS, CLIENTS)


def netns(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NETNS, "sh", "-euc", script], capture_output=True, text=True, timeout=30)


def test_inputs_are_normalised_sorted_and_deduplicated() -> None:
    s = fw.make_spec(" 10.0.0.2, ::1,10.0.0.1,10.0.0.2,[fd00::1]", "10.1.0.0/16,10.0.0.0/8,::1,192.168.0.5")
    assert [str(a) for a in s.peers] == ["10.0.0.1", "10.0.0.2", "::1", "fd00::1"]
    assert [str(n) for n in s.clients] == ["10.0.0.0/8", "192.168.0.5/32", "::1/128"]


@pytest.mark.parametrize("backend", fw.BACKENDS)
def test_rendering_is_deterministic(backend: str) -> None:
    again = fw.make_spec(",".join(reversed(PEERS.split(","))), ",".join(reversed(CLIENTS.split(","))))
    assert fw.render(backend, spec()) == fw.render(backend, again)


# --------------------------------------------------------------------------- nftables


def test_nft_checks_the_rendered_ruleset(tmp_path: Path, cli) -> None:
    result = cli("firewall", "--backend", "nftables", "--peers", PEERS, "--clients", CLIENTS, "--print")
    assert result.exit_code == 0, result.output
    path = tmp_path / "securekv.nft"
    path.write_text(result.output)
    proc = netns(f"nft -c -f {path}")
    assert proc.returncode == 0, proc.stderr


def test_nft_apply_twice_in_a_private_netns_is_idempotent(tmp_path: Path) -> None:
    args = "install firewall --backend nftables --peers {p} --clients {c}".format(p=PEERS, c=CLIENTS)
    script = (
        f"cd {Path(__file__).resolve().parents[2]}; export PYTHONPATH=$PWD;"
        f"python3 -m securekv {args} >/dev/null; nft list ruleset > {tmp_path}/once;"
        f"python3 -m securekv {args} >/dev/null; nft list ruleset > {tmp_path}/twice;"
        f"python3 -m securekv install firewall --backend nftables --peers 10.9.9.9 --clients 10.9.0.0/16 >/dev/null;"
        f"nft list ruleset > {tmp_path}/changed"
    )
    proc = netns(script)
    assert proc.returncode == 0, proc.stderr
    once = (tmp_path / "once").read_text()
    assert once == (tmp_path / "twice").read_text()
    assert once.count("table inet securekv") == 1
    assert "tcp dport 2380 ip saddr @peers_v4 accept" in once
    assert "10.0.0.11" in once and "fd00:10::11" in once and "2001:db8:7::/48" in once
    assert re.search(r"tcp dport \{ 2379, 2380 \} drop", once)
    changed = (tmp_path / "changed").read_text()
    assert "10.9.9.9" in changed and "10.0.0.11" not in changed and "peers_v6" not in changed


# --------------------------------------------------------------------------- iptables


def test_iptables_restore_test_accepts_both_families(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    result = cli("firewall", "--backend", "iptables", "--peers", PEERS, "--clients", CLIENTS, "--root", str(root))
    assert result.exit_code == 0, result.output
    v4 = root / "etc/iptables/securekv.rules"
    v6 = root / "etc/iptables/securekv6.rules"
    assert "-A SECUREKV -s 10.0.0.11/32 -p tcp -m tcp --dport 2380 -j ACCEPT" in v4.read_text()
    assert not [line for line in v4.read_text().splitlines() if line.startswith("-A") and ":" in line]
    assert "-A SECUREKV -s fd00:10::11/128 -p tcp -m tcp --dport 2380 -j ACCEPT" in v6.read_text()
    assert "-A SECUREKV -s 2001:db8:7::/48 -p tcp -m tcp --dport 2379 -j ACCEPT" in v6.read_text()
    proc = netns(f"iptables-restore --test --noflush {v4}; ip6tables-restore --test --noflush {v6}")
    assert proc.returncode == 0, proc.stderr


def test_iptables_apply_twice_in_a_private_netns_is_idempotent(tmp_path: Path) -> None:
    args = f"install firewall --backend iptables --peers {PEERS} --clients {CLIENTS}"
    dump = "iptables -S; echo ===; ip6tables -S"
    script = (
        f"cd {Path(__file__).resolve().parents[2]}; export PYTHONPATH=$PWD;"
        f"python3 -m securekv {args} >/dev/null; ({dump}) > {tmp_path}/once;"
        f"python3 -m securekv {args} >/dev/null; ({dump}) > {tmp_path}/twice"
    )
    proc = netns(script)
    assert proc.returncode == 0, proc.stderr
    once = (tmp_path / "once").read_text()
    assert once == (tmp_path / "twice").read_text()
    v4, v6 = once.split("===")
    for dump_text in (v4, v6):
        assert dump_text.count("-A INPUT -j SECUREKV") == 1
        assert dump_text.count("-N SECUREKV") == 1
        assert "-A SECUREKV -i lo -j RETURN" in dump_text
        assert "-A SECUREKV -p tcp -m tcp --dport 2380 -j DROP" in dump_text
        assert "-A SECUREKV -p tcp -m tcp --dport 2379 -j DROP" in dump_text
    assert "-A SECUREKV -s 10.0.0.0/16 -p tcp -m tcp --dport 2379 -j ACCEPT" in v4
    assert "-A SECUREKV -s 2001:db8:7::/48 -p tcp -m tcp --dport 2379 -j ACCEPT" in v6


# --------------------------------------------------------------------------- firewalld


def test_firewalld_policy_xml_follows_the_documented_format(cli) -> None:
    result = cli("firewall", "--backend", "firewalld", "--peers", PEERS, "--clients", CLIENTS, "--print")
    assert result.exit_code == 0, result.output
    assert result.output.startswith('<?xml version="1.0" encoding="utf-8"?>\n')
    root = ET.fromstring(result.output.encode())
    # firewalld.policy(5): <policy [target] [priority]>, ingress/egress zones, short, description, rules.
    assert root.tag == "policy"
    assert root.get("target") in ("CONTINUE", "ACCEPT", "REJECT", "DROP")
    assert int(root.get("priority")) < 0  # runs before the zones
    assert [z.get("name") for z in root.findall("ingress-zone")] == ["ANY"]
    assert [z.get("name") for z in root.findall("egress-zone")] == ["HOST"]
    assert len(fw.POLICY) <= 17
    accepts: dict[int, set[str]] = {2379: set(), 2380: set()}
    drops = set()
    priorities = {"accept": set(), "drop": set()}
    for rule in root.findall("rule"):
        assert set(rule.attrib) <= {"family", "priority"}
        actions = [child.tag for child in rule if child.tag in ("accept", "reject", "drop", "mark")]
        assert len(actions) == 1
        (port,) = rule.findall("port")
        assert port.get("protocol") == "tcp"
        number = int(port.get("port"))
        source = rule.find("source")
        priorities[actions[0]].add(int(rule.get("priority")))
        if actions[0] == "accept":
            network = ipaddress.ip_network(source.get("address"))
            assert rule.get("family") == f"ipv{network.version}"  # an address needs its family
            accepts[number].add(str(network))
        else:
            assert source is None and rule.get("family") is None  # both families
            drops.add(number)
    assert max(priorities["accept"]) < min(priorities["drop"])  # accepts are evaluated first
    assert accepts[2380] == {"10.0.0.11/32", "10.0.0.12/32", "10.0.0.13/32", "fd00:10::11/128"}
    assert accepts[2379] == {"10.0.0.0/16", "192.168.7.0/24", "2001:db8:7::/48"}
    assert drops == {2379, 2380}


# --------------------------------------------------------------------------- ufw

# ufw(8): ufw [rule] [delete] [insert NUM] [prepend] allow|deny|reject|limit [in|out [on IFACE]]
#   [log|log-all] [proto PROTOCOL] [from ADDRESS [port PORT]] [to ADDRESS [port PORT]] [comment COMMENT]
UFW_RULE = re.compile(
    r"^ufw (?:prepend )?(?P<action>allow|deny|reject|limit)"
    r" proto (?P<proto>tcp|udp)"
    r" from (?P<src>any|[0-9a-fA-F.:/]+)"
    r" to (?P<dst>any|[0-9a-fA-F.:/]+) port (?P<port>\d+)"
    r"(?: comment '(?P<comment>[^']*)')?$"
)


def test_ufw_commands_follow_the_documented_grammar(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    assert cli("firewall", "--backend", "ufw", "--peers", PEERS, "--clients", CLIENTS, "--root", str(root)).exit_code == 0
    script = root / "etc/securekv/firewall/ufw.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rules = [UFW_RULE.match(line) for line in script.read_text().splitlines() if line.startswith("ufw ")]
    assert rules and all(rules), script.read_text()
    # Each `prepend` lands on top, so the effective order is the reverse of the script.
    effective = [(m["action"], m["src"], int(m["port"])) for m in reversed(rules)]
    assert effective[-2:] == [("deny", "any", 2380), ("deny", "any", 2379)]
    allowed = {(src, port) for action, src, port in effective[:-2] if action == "allow"}
    for src in ("10.0.0.11", "10.0.0.12", "10.0.0.13", "fd00:10::11"):
        ipaddress.ip_address(src)
        assert (src, 2380) in allowed
    for src in ("10.0.0.0/16", "192.168.7.0/24", "2001:db8:7::/48"):
        assert (src, 2379) in allowed
    assert len(allowed) == 7


# --------------------------------------------------------------------------- files and errors


@pytest.mark.parametrize(
    "backend, files",
    [
        ("nftables", ["etc/nftables.d/securekv.nft"]),
        ("iptables", ["etc/iptables/securekv.rules", "etc/iptables/securekv6.rules"]),
        ("firewalld", ["etc/firewalld/policies/securekv.xml"]),
        ("ufw", ["etc/securekv/firewall/ufw.sh"]),
    ],
)
def test_root_writes_only_the_rule_files(tmp_path: Path, cli, backend: str, files: list[str]) -> None:
    root = tmp_path / "root"
    result = cli("firewall", "--backend", backend, "--peers", PEERS, "--clients", CLIENTS, "--root", str(root))
    assert result.exit_code == 0, result.output
    assert sorted(p for p in snapshot(root) if not p.endswith("/")) == sorted(files)
    before = snapshot(root)
    assert cli("firewall", "--backend", backend, "--peers", PEERS, "--clients", CLIENTS, "--root", str(root)).exit_code == 0
    assert snapshot(root) == before


BAD = [
    (["--backend", "pf"], "unknown firewall backend 'pf'; choose one of nftables, iptables, firewalld, ufw"),
    (["--peers", "10.0.0.300"], "--peers: '10.0.0.300' is not an IPv4 or IPv6 address"),
    (["--peers", "member-1.example"], "--peers: 'member-1.example' is not an IPv4 or IPv6 address"),
    (["--peers", "10.0.0.1,,10.0.0.2"], "--peers has an empty entry"),
    (["--clients", "10.0.0.0/33"], "--clients: '10.0.0.0/33' is not an IPv4 or IPv6 network"),
    (["--clients", "10.0.0.1/8"], "--clients: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
    (["--clients", "2001:db8::/129"], "is not an IPv4 or IPv6 network"),
    (["--client-port", "2380"], "port 2380 is used twice: --client-port and --peer-port must differ"),
    (["--peer-port", "70000"], "--peer-port must be a TCP port between 1 and 65535"),
    (["--print", "--root", "{root}"], "--root and --print are mutually exclusive"),
    (["--peers", "fe80::1%eth0"], "--peers: fe80::1%eth0 has a zone index (%eth0); firewall rules match addresses only, give fe80::1"),
    (["--clients", "fe80::%eth0/64"], "--clients: fe80::%eth0/64 has a zone index (%eth0); firewall rules match addresses only, give fe80::/64"),
    (["--peers", "::ffff:10.0.0.1"], "--peers: ::ffff:10.0.0.1 is an IPv4-mapped IPv6 address; packets from it arrive as IPv4, give 10.0.0.1"),
    (["--clients", "::ffff:10.0.0.0/120"], "--clients: ::ffff:10.0.0.0/120 is an IPv4-mapped IPv6 address; packets from it arrive as IPv4, give 10.0.0.0/24"),
    (["--client-port", "abc"], "--client-port must be a TCP port between 1 and 65535, got 'abc'"),
    (["--client-port", "0"], "--client-port must be a TCP port between 1 and 65535, got 0"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path: Path, cli, extra: list[str], message: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    options = {"--backend": "nftables", "--peers": PEERS, "--clients": CLIENTS}
    extra = [e.format(root=root) for e in extra]
    for i in range(0, len(extra) - 1):
        if extra[i] in options:
            options[extra[i]] = extra[i + 1]
    argv = [x for pair in options.items() for x in pair] + [e for i, e in enumerate(extra) if e not in options and (i == 0 or extra[i - 1] not in options)]
    if "--root" not in argv:
        argv += ["--root", str(root)]
    result = cli("firewall", *argv)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert snapshot(root) == {}


def test_real_process_error_has_no_traceback(tmp_path: Path) -> None:
    proc = run_securekv("install", "firewall", "--backend", "pf", "--peers", "10.0.0.1", "--clients", "10.0.0.0/8", "--root", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr == "Error: unknown firewall backend 'pf'; choose one of nftables, iptables, firewalld, ufw\n"
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []
