"""The rules do what they say: real TCP connections between two private network namespaces.

Layout (all inside `unshare --net`, so the machine's own firewall is never touched): the "host"
namespace runs listeners on the client port, the peer port and an unrelated control port, with
the securekv rules applied; a second namespace joined by a veth pair connects from a member
address, a client-network address and an outsider address, over IPv4 and IPv6.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PEERS = "10.0.0.11,fd00::11"
CLIENTS = "10.0.0.8/29,fd00::10/124,10.0.0.20/32"
CONTROL_PORT = 2390

LISTEN = f"""
import socket, sys, time
socks = []
for port in (2379, 2380, {CONTROL_PORT}):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(64); socks.append(s)
open(sys.argv[1], "w").close()
time.sleep(60)
"""

PROBE = f"""
import json, socket
results = {{}}
for src, dst in (("10.0.0.11", "10.0.0.1"), ("10.0.0.20", "10.0.0.1"), ("10.0.0.99", "10.0.0.1"),
                 ("fd00::11", "fd00::1"), ("fd00::99", "fd00::1")):
    # The unfiltered control port first, with a generous timeout: it settles neighbour discovery,
    # so that a filtered port that does not answer afterwards is dropped, not merely slow.
    for port in ({CONTROL_PORT}, 2379, 2380):
        family = socket.AF_INET6 if ":" in src else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(10 if port == {CONTROL_PORT} else 0.5)  # a dropped SYN never answers: the timeout is the observation
        s.bind((src, 0))
        try:
            s.connect((dst, port)); results[f"{{src}}:{{port}}"] = "open"
        except OSError:
            results[f"{{src}}:{{port}}"] = "dropped"
        finally:
            s.close()
print(json.dumps(results))
"""

SCRIPT = r"""
set -eu
ip link set lo up
echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
unshare --net sh -c 'echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; exec sleep 60' &
child=$!
trap 'kill $child $server 2>/dev/null || true' EXIT
server=
i=0
until [ "$(readlink /proc/$child/ns/net)" != "$(readlink /proc/self/ns/net)" ] && [ "$(cat /proc/$child/comm)" = sleep ]; do
    i=$((i+1)); [ $i -lt 500 ] || { echo "child netns never appeared" >&2; exit 1; }
    sleep 0.01
done
ip link add veth0 type veth peer name veth1 netns $child
ip addr add 10.0.0.1/24 dev veth0
ip -6 addr add fd00::1/64 dev veth0 nodad
ip link set veth0 up
nsenter -t $child -n sh -euc '
    ip link set lo up
    for a in 10.0.0.11 10.0.0.20 10.0.0.99; do ip addr add $a/24 dev veth1; done
    for a in fd00::11 fd00::99; do ip -6 addr add $a/64 dev veth1 nodad; done
    ip link set veth1 up'
PYTHONPATH="$REPO" "$PYTHON" -m securekv install firewall --backend "$BACKEND" --peers "$PEERS" --clients "$CLIENTS" >&2
"$PYTHON" -c "$LISTEN" "$TMP/ready" &
server=$!
i=0
until [ -e "$TMP/ready" ]; do
    i=$((i+1)); [ $i -lt 500 ] || { echo "listener never became ready" >&2; exit 1; }
    sleep 0.01
done
nsenter -t $child -n "$PYTHON" -c "$PROBE"
"""

EXPECTED = {
    # member address: both ports; it is also inside a client network
    "10.0.0.11:2379": "open", "10.0.0.11:2380": "open",
    # client network, not a member: client port only
    "10.0.0.20:2379": "open", "10.0.0.20:2380": "dropped",
    # outsider: neither
    "10.0.0.99:2379": "dropped", "10.0.0.99:2380": "dropped",
    "fd00::11:2379": "open", "fd00::11:2380": "open",
    "fd00::99:2379": "dropped", "fd00::99:2380": "dropped",
}


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_only_members_reach_the_peer_port_and_only_clients_the_client_port(tmp_path: Path, backend: str) -> None:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "REPO": str(REPO), "PYTHON": sys.executable, "BACKEND": backend, "PEERS": PEERS, "CLIENTS": CLIENTS,
        "LISTEN": LISTEN, "PROBE": PROBE, "TMP": str(tmp_path),
    }
    proc = subprocess.run(["unshare", "--net", "sh", "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for src in ("10.0.0.11", "10.0.0.20", "10.0.0.99", "fd00::11", "fd00::99"):
        assert results.pop(f"{src}:{CONTROL_PORT}") == "open"  # other ports are not our business
    assert results == EXPECTED
