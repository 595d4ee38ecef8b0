"""Harness for 3-member cluster scenarios against the real etcd 3.4 or `securekv serve`.

Every member runs with mutual TLS on its client and peer ports, certificates from securekv's PKI
API, its own data dir under tmp, free loopback ports, and advertises a test-controlled TCP proxy
(tcpproxy.py) as its peer URL so the tests can partition the cluster. Readiness is `etcdctl
endpoint health` polled with a bounded deadline; every process started here is killed by the
fixture's finalizer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import attrs

from tcpproxy import Proxy, pid_owning, socket_inode

REPO = Path(__file__).resolve().parents[2]
ETCDCTL = "/usr/bin/etcdctl"
ETCD = "/usr/bin/etcd"
KINDS = ["etcd", "securekv"]
START_DEADLINE = 60.0
PEER_CN = "securekv-peer"
TOKEN = "cluster-test-token"


from ports import free_port  # noqa: E402  (tests/ports.py: outside the ephemeral range)


def poll(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Return condition()'s first truthy value; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = condition()
        except AssertionError as exc:  # a failing probe is "not yet"
            last = exc
            value = None
        else:
            value = last
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


@attrs.frozen
class ClusterPKI:
    ca: Path
    server_cert: Path  # client port, SANs 127.0.0.1 + localhost
    server_key: Path
    peer_cert: Path  # peer port (server + client auth), CN PEER_CN
    peer_key: Path
    client_cert: Path  # CN root
    client_key: Path
    intruder_cert: Path  # same CA, peer profile, CN outside --peer-cert-allowed-cn
    intruder_key: Path
    foreign_ca: Path
    foreign_cert: Path  # another CA, CN PEER_CN
    foreign_key: Path


def make_pki(base: Path) -> ClusterPKI:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert

    ca, foreign = base / "ca", base / "foreign"
    hosts = ["127.0.0.1", "localhost"]
    init_ca(ca, cn="cluster test CA")
    issue_cert(ca, "server", "server", hosts=hosts)
    issue_cert(ca, "peer", "peer", cn=PEER_CN, hosts=hosts)
    issue_cert(ca, "client", "root")
    issue_cert(ca, "peer", "intruder", cn="intruder", hosts=hosts)
    init_ca(foreign, cn="foreign CA")
    issue_cert(foreign, "peer", "peer", cn=PEER_CN, hosts=hosts)
    return ClusterPKI(
        ca=ca / "ca.pem", server_cert=ca / "server.pem", server_key=ca / "server-key.pem",
        peer_cert=ca / "peer.pem", peer_key=ca / "peer-key.pem",
        client_cert=ca / "root.pem", client_key=ca / "root-key.pem",
        intruder_cert=ca / "intruder.pem", intruder_key=ca / "intruder-key.pem",
        foreign_ca=foreign / "ca.pem", foreign_cert=foreign / "peer.pem", foreign_key=foreign / "peer-key.pem",
    )

def etcdctl(endpoints: str, pki: ClusterPKI, *args: str, check: bool = True, timeout: float = 30,
            command_timeout: str = "10s") -> subprocess.CompletedProcess:
    argv = [ETCDCTL, "--endpoints", endpoints, "--cacert", str(pki.ca), "--cert", str(pki.client_cert),
            "--key", str(pki.client_key), "--dial-timeout", "3s", "--command-timeout", command_timeout, *args]
    env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"etcdctl --endpoints {endpoints} {' '.join(args)} failed ({proc.returncode}): "
                             f"{proc.stdout}{proc.stderr}")
    return proc


class Node:
    """One member process: real client/peer ports plus the proxy it advertises as its peer URL."""

    def __init__(self, cluster: "Cluster", name: str, data_dir: Path) -> None:
        self.cluster = cluster
        self.name = name
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proxy = Proxy(self.peer_port, name, cluster.identify)
        self.proc: Optional[subprocess.Popen] = None
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.peer_cert = cluster.pki.peer_cert
        self.peer_key = cluster.pki.peer_key
        self.peer_ca = cluster.pki.ca
        # The shared peer certificate (CN PEER_CN) is admitted by etcd's --peer-cert-allowed-cn;
        # tests with one certificate per member (named after it) set this to None.
        self.allowed_cn: Optional[str] = PEER_CN
        self.peer_client_cert_auth_flag = True

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return self.proxy.url

    def argv(self, initial_cluster: str, state: str, extra: Iterable[str]) -> list[str]:
        c = self.cluster
        p = c.pki
        flags = [
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", f"https://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", TOKEN,
            "--cert-file", str(p.server_cert), "--key-file", str(p.server_key),
            "--trusted-ca-file", str(p.ca), "--client-cert-auth",
            *(["--peer-client-cert-auth"] if self.peer_client_cert_auth_flag else []),
            "--peer-trusted-ca-file", str(self.peer_ca),
            "--peer-cert-file", str(self.peer_cert), "--peer-key-file", str(self.peer_key),
            *(["--peer-cert-allowed-cn", self.allowed_cn] if self.allowed_cn else []),
            "--heartbeat-interval", str(c.heartbeat_ms), "--election-timeout", str(c.election_ms),
            "--snapshot-count", str(c.snapshot_count),
            *extra,
        ]
        if c.kind == "etcd":
            return [ETCD, *flags]
        return [sys.executable, "-m", "securekv", "serve", *flags]

    def start(self, initial_cluster: str, state: str = "new", extra: Iterable[str] = ()) -> "Node":
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.log, "ab") as log:
            log.write(f"\n==== start {self.name} {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv(initial_cluster, state, extra), stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.data_dir.parent)
        self.last_args = (initial_cluster, state, tuple(extra))
        return self

    def restart(self, extra: Iterable[str] | None = None) -> "Node":
        initial_cluster, state, old_extra = self.last_args
        return self.start(initial_cluster, state, old_extra if extra is None else extra)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ctl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return etcdctl(self.endpoint, self.cluster.pki, *args, **kw)

    def healthy(self) -> bool:
        return self.ctl("endpoint", "health", check=False, command_timeout="3s").returncode == 0

    def wait_healthy(self, timeout: float = START_DEADLINE) -> "Node":
        def ok() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.cluster.kind} member {self.name} exited with "
                                   f"{self.proc.returncode if self.proc else None}:\n{self.output()[-3000:]}")
            return self.healthy()

        try:
            poll(ok, timeout, f"{self.name} to report healthy", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} log tail ---\n{self.output()[-3000:]}") from None
        return self

    def status(self) -> dict:
        """`endpoint status -w json` of this member: header.member_id, leader, raftIndex, raftTerm ..."""
        out = self.ctl("endpoint", "status", "-w", "json", command_timeout="3s").stdout
        data = json.loads(out)[0]["Status"]
        return data

    def member_id(self) -> int:
        return int(self.status()["header"]["member_id"])

    def get(self, key: str, serializable: bool = False, **kw) -> subprocess.CompletedProcess:
        args = ["get", key, "--print-value-only"]
        if serializable:
            args.append("--consistency=s")
        return self.ctl(*args, **kw)


class Cluster:
    def __init__(self, kind: str, pki: ClusterPKI, base: Path, snapshot_count: int = 100000,
                 heartbeat_ms: int = 100, election_ms: int = 1000) -> None:
        self.kind = kind
        self.pki = pki
        self.base = base
        self.snapshot_count = snapshot_count
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.nodes: dict[str, Node] = {}

    # -- proxy source identification --------------------------------------------------------
    def identify(self, client_port: int, proxy_port: int) -> Optional[str]:
        inode = socket_inode(client_port, proxy_port)
        if inode is None:
            return None
        by_pid = {n.proc.pid: n.name for n in list(self.nodes.values()) if n.proc is not None and n.proc.poll() is None}
        pid = pid_owning(inode, by_pid)
        return by_pid.get(pid) if pid is not None else None

    # -- membership --------------------------------------------------------------------------
    def new_node(self, name: str, data_dir: Path | None = None) -> Node:
        node = Node(self, name, data_dir or self.base / name)
        self.nodes[name] = node
        return node

    def initial_cluster(self, names: Iterable[str] | None = None) -> str:
        names = list(names or self.nodes)
        return ",".join(f"{n}={self.nodes[n].peer_url}" for n in names)

    def start(self, names: Iterable[str] = ("m1", "m2", "m3"), extra: Iterable[str] = ()) -> "Cluster":
        names = list(names)
        for n in names:
            self.new_node(n)
        ic = self.initial_cluster(names)
        for n in names:
            self.nodes[n].start(ic, "new", extra)
        for n in names:
            self.nodes[n].wait_healthy()
        # Healthy members that each formed a cluster of their own would pass the health check.
        for n in names:
            poll(lambda: sorted(m.get("name", "") for m in self.members(self.nodes[n])) == sorted(names), 30,
                 f"{n}'s member list to show the started members {names}")
        return self

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running]

    def endpoints(self, nodes: Iterable[Node] | None = None) -> str:
        return ",".join(n.endpoint for n in (nodes if nodes is not None else self.running()))

    def ctl(self, *args: str, nodes: Iterable[Node] | None = None, **kw) -> subprocess.CompletedProcess:
        return etcdctl(self.endpoints(nodes), self.pki, *args, **kw)

    def members(self, via: Node | None = None) -> list[dict]:
        node = via or self.running()[0]
        return json.loads(node.ctl("member", "list", "-w", "json").stdout)["members"]

    def member_id(self, name: str) -> int:
        for m in self.members():
            if m.get("name") == name:
                return int(m["ID"])
        raise AssertionError(f"no member named {name}: {self.members()}")

    def leader(self, among: Iterable[Node] | None = None) -> Node:
        """The member every member in ``among`` agrees is leader (polled until they agree)."""
        among = list(among or self.running())

        def agreed() -> Optional[Node]:
            leaders = set()
            for n in among:
                st = n.status()
                leaders.add(int(st.get("leader", 0)))
            if len(leaders) != 1 or 0 in leaders:
                return None
            (lid,) = leaders
            for n in among:
                if n.member_id() == lid:
                    return n
            return None

        return poll(agreed, 30, f"{[n.name for n in among]} to agree on a leader", interval=0.2)

    def add_member(self, name: str, learner: bool = False, via: Node | None = None) -> tuple[Node, str]:
        """`member add` then a new (not yet started) node; returns it and ETCD_INITIAL_CLUSTER."""
        node = self.new_node(name)
        args = ["member", "add", name, f"--peer-urls={node.peer_url}"]
        if learner:
            args.append("--learner")

        def add() -> Optional[str]:
            # etcd refuses reconfiguration until every member has been connected for a while
            # ("unhealthy cluster"): retry that, fail on anything else.
            res = via.ctl(*args, check=False) if via else self.ctl(*args, check=False)
            if res.returncode == 0:
                return res.stdout
            if "unhealthy cluster" in res.stderr:
                return None
            raise RuntimeError(f"member add {name} failed: {res.stdout}{res.stderr}")

        out = poll(add, 30, f"member add {name} to be accepted", interval=0.5)
        ic = next(line.split("=", 1)[1].strip('"') for line in out.splitlines()
                  if line.startswith("ETCD_INITIAL_CLUSTER="))
        return node, ic

    def partition(self, minority: Iterable[str]) -> None:
        """Cut every peer link between ``minority`` and the other members, both directions."""
        minority = set(minority)
        majority = set(self.nodes) - minority
        for node in self.nodes.values():
            node.proxy.block(majority if node.name in minority else minority)

    def heal(self) -> None:
        for node in self.nodes.values():
            node.proxy.heal()

    def hashkvs(self, nodes: Iterable[Node] | None = None) -> dict[str, tuple[int, int]]:
        """name -> (hash, compact revision) from `endpoint hashkv` (latest revision) of each member."""
        result = {}
        for n in nodes or self.running():
            data = json.loads(n.ctl("endpoint", "hashkv", "-w", "json", command_timeout="5s").stdout)[0]
            hk = data["HashKV"]
            result[n.name] = (int(hk.get("hash", 0)), int(hk["header"]["revision"]))
        return result

    def wait_converged(self, nodes: Iterable[Node] | None = None, timeout: float = 60) -> int:
        """Poll until every member reports the same revision and the same `endpoint hashkv`."""
        nodes = list(nodes or self.running())

        def same() -> Optional[int]:
            h = self.hashkvs(nodes)
            return next(iter(h.values()))[1] if len(set(h.values())) == 1 else None

        return poll(same, timeout, f"{[n.name for n in nodes]} to converge on one hashkv", interval=0.3)

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
        for node in self.nodes.values():
            node.proxy.close()


def grpc_put_many(node: Node, pki: ClusterPKI, keys: list[bytes], value: bytes, window: int = 64) -> int:
    """Put ``keys`` through ``node`` with up to ``window`` requests in flight; returns how many were
    acknowledged (every one must be)."""
    import grpc

    from securekv.proto import rpc_pb2, rpc_pb2_grpc

    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key.read_bytes(),
                                         pki.client_cert.read_bytes())
    acked = 0
    with grpc.secure_channel(f"127.0.0.1:{node.client_port}", creds) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(0, len(keys), window):
            futures = [kv.Put.future(rpc_pb2.PutRequest(key=k, value=value), timeout=30)
                       for k in keys[i:i + window]]
            for f in futures:
                f.result()
                acked += 1
    return acked
