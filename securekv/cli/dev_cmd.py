"""``securekv dev``: a local N-member cluster in one command (etcd's goreman Procfile, secured).

``securekv dev --members 3 [--dir D]`` makes a CA and certificates under ``D/pki`` (once),
starts N ``securekv serve`` members with mutual TLS on loopback (client and peer ports of
etcd's Procfile: 2379/12380, 22379/22380, 32379/32380, or ``--base-port``), waits until each
says READY=1 (sd_notify on a private socket), prints the ``securekv ctl``/``etcdctl``
environment, and streams every member's log lines prefixed with its name. Ctrl-C (or
SIGTERM, or ``securekv dev down`` from another shell) stops them all: SIGTERM, then SIGKILL
after a grace period. Members are also tied to the supervisor with PR_SET_PDEATHSIG, so not
even a killed supervisor leaves a member behind.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

STATE_FILE = "dev.json"
STOP_GRACE = 15.0
PROCFILE_PORTS = [(2379, 12380), (22379, 22380), (32379, 32380)]


def _ports(members: int, base: int | None) -> list[tuple[int, int]]:
    if base is None and members <= len(PROCFILE_PORTS):
        return PROCFILE_PORTS[:members]
    base = 2379 if base is None else base
    ports = [(base + 2 * i, base + 2 * i + 1) for i in range(members)]
    if ports[-1][1] > 65535:
        raise click.UsageError(f"--base-port {base} leaves no room for {members} members")
    return ports


def _check_free(ports: list[tuple[int, int]]) -> None:
    for pair in ports:
        for port in pair:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the members' listeners
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    raise click.ClickException(f"port {port} on 127.0.0.1 is in use; pick others with "
                                               "--base-port N") from None


def _pki(directory: Path, names: list[str]) -> dict[str, Path]:
    """A CA and server/peer certificates per member plus a client certificate (CN root). Each
    peer certificate names its member (CN and URI SAN): the members bind it to that member."""
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.verify import load_cert_chain
    from securekv.tlspolicy import VerifiedPeer

    ca = directory / "pki"
    if not (ca / "ca.pem").exists():
        init_ca(ca, cn="securekv dev CA")
    hosts = ["127.0.0.1", "localhost", "::1"]
    for name in names:
        if not (ca / f"{name}.pem").exists():
            issue_cert(ca, "server", name, hosts=hosts)
        peer = ca / f"{name}-peer.pem"
        if not peer.exists() or VerifiedPeer((load_cert_chain(peer)[0],)).member_name != name:
            issue_cert(ca, "peer", f"{name}-peer", cn=name, hosts=hosts)
    if not (ca / "root.pem").exists():
        issue_cert(ca, "client", "root")
    return {"dir": ca, "ca": ca / "ca.pem", "cert": ca / "root.pem", "key": ca / "root-key.pem"}


def _member_argv(name: str, directory: Path, pki: Path, client: int, peer: int, cluster: str,
                 extra: tuple[str, ...]) -> list[str]:
    return [
        sys.executable, "-m", "securekv", "serve", "--name", name, "--data-dir", str(directory / f"{name}.securekv"),
        "--listen-client-urls", f"https://127.0.0.1:{client}", "--advertise-client-urls", f"https://127.0.0.1:{client}",
        "--listen-peer-urls", f"https://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer}",
        "--initial-cluster", cluster, "--initial-cluster-token", "securekv-dev", "--initial-cluster-state", "new",
        "--cert-file", str(pki / f"{name}.pem"), "--key-file", str(pki / f"{name}-key.pem"),
        "--trusted-ca-file", str(pki / "ca.pem"), "--client-cert-auth",
        "--peer-cert-file", str(pki / f"{name}-peer.pem"), "--peer-key-file", str(pki / f"{name}-peer-key.pem"),
        "--peer-trusted-ca-file", str(pki / "ca.pem"), "--peer-client-cert-auth",
        "--logger", "capnslog", *extra,
    ]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.setpgid(0, 0)  # its own process group: a terminal's Ctrl-C reaches the supervisor only


def environment(endpoints: str, pki: dict[str, Path]) -> list[str]:
    ca, cert, key = (str(Path(pki[k]).resolve()) for k in ("ca", "cert", "key"))
    return [
        f"export ETCDCTL_API=3 ETCDCTL_ENDPOINTS={endpoints} ETCDCTL_CACERT={ca} ETCDCTL_CERT={cert} "
        f"ETCDCTL_KEY={key}",
        f"export SECUREKV_CTL_ENDPOINTS={endpoints} SECUREKV_CTL_CACERT={ca} SECUREKV_CTL_CERT={cert} "
        f"SECUREKV_CTL_KEY={key}",
    ]


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--members", default=3, show_default=True, type=click.IntRange(1, 9), help="How many members.")
@click.option("--dir", "directory", default="securekv-dev", show_default=True, type=click.Path(file_okay=False),
              help="Where the PKI, data dirs and the state file live.")
@click.option("--base-port", type=click.IntRange(1, 65535), default=None,
              help="Member i gets client port BASE+2i and peer port BASE+2i+1 (default: etcd's Procfile ports).")
@click.option("--serve-arg", "extra", multiple=True, help="An extra argument for every `securekv serve` (repeatable).")
@click.pass_context
def cli(ctx: click.Context, members: int, directory: str, base_port: int | None, extra: tuple[str, ...]) -> None:
    """Run a local cluster with mutual TLS (Ctrl-C or `securekv dev down` stops it)."""
    if ctx.invoked_subcommand is not None:
        return
    import trio

    d = Path(directory)
    state = d / STATE_FILE
    if state.exists() and _alive(json.loads(state.read_text()).get("supervisor", 0)):
        raise click.ClickException(f"a dev cluster already runs from {d} (stop it with `securekv dev down --dir {d}`)")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = [f"infra{i + 1}" for i in range(members)]
    ports = _ports(members, base_port)
    _check_free(ports)
    pki = _pki(d, names)
    try:
        code = trio.run(_supervise, d, names, ports, pki, extra)
    finally:
        state.unlink(missing_ok=True)
    sys.exit(code)


async def _supervise(d: Path, names: list[str], ports: list[tuple[int, int]], pki: dict[str, Path],
                     extra: tuple[str, ...]) -> int:
    import trio

    cluster = ",".join(f"{n}=https://127.0.0.1:{p}" for n, (_, p) in zip(names, ports))
    endpoints = ",".join(f"https://127.0.0.1:{c}" for c, _ in ports)
    width = max(len(n) for n in names)
    procs: dict[str, Any] = {}
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = d / ".notify.sock"
    notify_path.unlink(missing_ok=True)
    await notify.bind(str(notify_path))
    ready: set[str] = set()
    all_ready = trio.Event()
    code = 0
    with notify, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def pump(name: str, proc: Any) -> None:
                buf = b""
                async for chunk in trio.lowlevel.FdStream(os.dup(proc.stdout.fileno())):
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        sys.stdout.write(f"{name:<{width}} | {line.decode('utf-8', 'replace')}\n")
                    sys.stdout.flush()
                if buf:
                    sys.stdout.write(f"{name:<{width}} | {buf.decode('utf-8', 'replace')}\n")

            async def watch(name: str, proc: Any) -> None:
                nonlocal code
                rc = await _wait(proc)
                if not stopping.is_set():
                    sys.stdout.write(f"securekv dev: {name} exited with status {rc}; stopping the others\n")
                    code = 1
                    stopping.set()

            async def listen_ready() -> None:
                import re

                while True:
                    data, _addr = await notify.recvfrom(4096)
                    text = data.decode("utf-8", "replace")
                    if "READY=1" not in text:
                        continue
                    # each member's READY=1 carries "STATUS=serving clients on <its URLs>"
                    for name, (client, _p) in zip(names, ports):
                        if re.search(rf"127\.0\.0\.1:{client}(?!\d)", text):
                            ready.add(name)
                    if len(ready) == len(names):
                        all_ready.set()

            stopping = trio.Event()

            async def stop_on_signal() -> None:
                async for _sig in signals:
                    stopping.set()
                    return

            nursery.start_soon(listen_ready)
            nursery.start_soon(stop_on_signal)
            for name, (client, peer) in zip(names, ports):
                argv = _member_argv(name, d, pki["dir"], client, peer, cluster, extra)
                env = dict(os.environ, NOTIFY_SOCKET=str(notify_path.resolve()))
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                  env.get("PYTHONPATH", "")]))
                # Popen from this (the main) thread: PR_SET_PDEATHSIG fires when the creating
                # *thread* exits, so trio's worker threads must not create the members.
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=_die_with_parent)
                procs[name] = proc
                nursery.start_soon(pump, name, proc)
                nursery.start_soon(watch, name, proc)
            _write_state(d, procs, endpoints)
            with trio.move_on_after(120) as scope:
                async with trio.open_nursery() as waiting:
                    async def first(event: Any) -> None:
                        await event.wait()
                        waiting.cancel_scope.cancel()

                    waiting.start_soon(first, all_ready)
                    waiting.start_soon(first, stopping)
            if all_ready.is_set() and not stopping.is_set():
                lines = [f"securekv dev: {len(names)} members ready ({endpoints}); data and PKI in {d.resolve()}",
                         "securekv dev: for etcdctl and securekv ctl, run:",
                         *(f"  {line}" for line in environment(endpoints, pki)),
                         "securekv dev: Ctrl-C or `securekv dev down"
                         + (f" --dir {shlex.quote(str(d))}" if str(d) != "securekv-dev" else "") + "` stops it"]
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
            elif scope.cancelled_caught:
                sys.stdout.write("securekv dev: members not ready within 120 s; stopping\n")
                code = 1
            await stopping.wait()
            await _stop_all(procs)
            nursery.cancel_scope.cancel()
    notify_path.unlink(missing_ok=True)
    sys.stdout.write("securekv dev: stopped\n")
    sys.stdout.flush()
    return code


async def _wait(proc: subprocess.Popen) -> int:
    """Wait for a child without a thread: its pidfd becomes readable when it exits."""
    import trio

    if proc.returncode is not None:
        return proc.returncode
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:  # already reaped by another waiter
        return proc.wait()
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    return proc.wait()


async def _stop_all(procs: dict[str, Any]) -> None:
    import trio

    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE):
        for proc in procs.values():
            await _wait(proc)
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            await _wait(proc)
    for proc in procs.values():
        proc.stdout.close()


def _write_state(d: Path, procs: dict[str, Any], endpoints: str) -> None:
    from securekv.fsutil import atomic_write

    data = {"supervisor": os.getpid(), "members": {n: p.pid for n, p in procs.items()}, "endpoints": endpoints}
    atomic_write(d / STATE_FILE, json.dumps(data, indent=2).encode() + b"\n", mode=0o600)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_ours(pid: int, directory: Path) -> bool:
    """The pid still runs a member of this dev cluster (not a pid reused by something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in cmdline and any(str(directory.resolve()).encode() in arg for arg in cmdline)


@cli.command("down")
@click.option("--dir", "directory", default="securekv-dev", show_default=True, type=click.Path(file_okay=False))
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for everything to stop.")
def down(directory: str, timeout: float) -> None:
    """Stop the dev cluster started from DIR (its supervisor and every member)."""
    d = Path(directory)
    state = d / STATE_FILE
    if not state.exists():
        raise click.ClickException(f"no dev cluster runs from {d} (no {state})")
    data = json.loads(state.read_text())
    supervisor = int(data.get("supervisor", 0))
    members = {n: int(p) for n, p in data.get("members", {}).items()}
    if _alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in members.values() if _alive(p) and _is_ours(p, d)]
        if not left and not _alive(supervisor):
            break
        time.sleep(0.1)
    for name, pid in members.items():  # a supervisor that could not stop them: do it here
        if _alive(pid) and _is_ours(pid, d):
            click.echo(f"securekv dev: {name} (pid {pid}) did not stop; killing it", err=True)
            os.kill(pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    click.echo(f"securekv dev: stopped the cluster in {d}")
