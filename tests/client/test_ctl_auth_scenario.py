"""The RBAC scenario (auth_scenario.txt, 100+ etcdctl steps) against the real etcd 3.4 and
against securekv: the same stdout, exit codes and ``Error:`` lines after masking IDs, ports,
hashes and durations — except the documented deviations (``DEV``), where etcd allows and
securekv must deny with ``permission denied``. Then the auth/user/role steps once more with
``securekv ctl`` against securekv: the same output as etcdctl gave against etcd.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from ctlharness import ETCD, ETCDCTL, REPO, error_lines, free_port

SCENARIO = Path(__file__).with_name("auth_scenario.txt")
USERS = ("root", "alice", "bob", "carol")
START_TIMEOUT = 30.0
WATCH_TIMEOUT = 20.0


@attrs.frozen
class Step:
    line: int
    mode: str  # "", "DEV", "WATCH:<lines>", "EXIT"
    cn: str
    args: tuple[str, ...]
    stdin: str | None

    @property
    def auth_command(self) -> bool:
        return any(a in ("user", "role", "auth") for a in self.args[:3] if not a.startswith("-"))


def load_steps() -> list[Step]:
    steps = []
    for n, raw in enumerate(SCENARIO.read_text().splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        mode = ""
        head, _, rest = text.partition("|")
        words = head.split()
        if len(words) == 2:
            mode, cn = words
        else:
            (cn,) = words
        stdin = None
        if "<<<" in rest:
            rest, _, given = rest.partition("<<<")
            stdin = given.strip().replace("\\n", "\n") + "\n"
        steps.append(Step(n, mode, cn, tuple(shlex.split(rest)), stdin))
    return steps


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert

    d = tmp_path_factory.mktemp("auth-pki")
    init_ca(d, cn="auth scenario CA")
    issue_cert(d, "server", "server", hosts=["127.0.0.1", "localhost"])
    for cn in USERS:
        issue_cert(d, "client", cn)
    return d


class Server:
    def __init__(self, kind: str, base: Path, pki: Path) -> None:
        self.kind, self.base, self.pki = kind, base, pki
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        for _attempt in range(3):
            self.port, peer = free_port(), free_port()
            ep, purl = f"https://127.0.0.1:{self.port}", f"https://127.0.0.1:{peer}"
            common = ["--name", "m1", "--data-dir", str(self.base / "data"), "--listen-client-urls", ep,
                      "--advertise-client-urls", ep, "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                      "--initial-cluster", f"m1={purl}", "--cert-file", str(self.pki / "server.pem"),
                      "--key-file", str(self.pki / "server-key.pem"), "--trusted-ca-file", str(self.pki / "ca.pem"),
                      "--client-cert-auth", "--bcrypt-cost", "4"]
            argv = ([ETCD, *common, "--peer-auto-tls"] if self.kind == "etcd"
                    else [sys.executable, "-m", "securekv", "serve", *common])
            log = open(self.base / "server.log", "ab")
            try:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.base,
                                             env={**os.environ, "PYTHONPATH": str(REPO)})
            finally:
                log.close()
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                probe = self.ctl("etcdctl", "root", ("endpoint", "health"), None, timeout=10)
                if probe.returncode == 0:
                    return self
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"{self.kind} did not start: {(self.base / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def argv(self, tool: str, cn: str, args: tuple[str, ...]) -> list[str]:
        flags = ["--endpoints", self.endpoint, "--cacert", str(self.pki / "ca.pem"), "--cert",
                 str(self.pki / f"{cn}.pem"), "--key", str(self.pki / f"{cn}-key.pem"), "--dial-timeout", "3s",
                 "--command-timeout", "10s"]
        if tool == "etcdctl":
            return [ETCDCTL, *flags, *args]
        return [sys.executable, "-m", "securekv", "ctl", *flags, *args]

    def popen(self, tool: str, cn: str, args: tuple[str, ...]) -> subprocess.Popen:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "ETCDCTL_API": "3"}
        return subprocess.Popen(self.argv(tool, cn, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=self.base)

    def ctl(self, tool: str, cn: str, args: tuple[str, ...], stdin: str | None,
            timeout: float = 30) -> subprocess.CompletedProcess:
        proc = self.popen(tool, cn, args)
        try:
            out, err = proc.communicate(input=stdin or "", timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def watch(self, tool: str, cn: str, args: tuple[str, ...], lines: int) -> subprocess.CompletedProcess:
        """Run a watch that does not end by itself: its first ``lines`` lines, then kill it."""
        proc = self.popen(tool, cn, args)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()  # raw reads: select() must not miss lines buffered in Python
        data = b""
        deadline = time.monotonic() + WATCH_TIMEOUT
        try:
            while data.count(b"\n") < lines and time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
        finally:
            proc.send_signal(signal.SIGKILL)
            _rest, err = proc.communicate(timeout=10)
        shown = b"".join(data.splitlines(keepends=True)[:lines]).decode(errors="replace")
        return subprocess.CompletedProcess(proc.args, "killed", shown, err)


_PORT = re.compile(r"127\.0\.0\.1:\d+")
_HEX = re.compile(r"\b[0-9a-f]{12,16}\b")
_HEADER = re.compile(r'"(cluster_id|member_id|raft_term|revision|ID)":\d+')
_TOOK = re.compile(r"took = \S+")
_REMAINING = re.compile(r"remaining\(\d+s\)")
_COMPACTED = re.compile(r"compacted revision \d+")


def norm(text: str, tmp: str = "") -> str:
    if tmp:
        text = text.replace(tmp, "{TMP}")
    text = _PORT.sub("127.0.0.1:PORT", text)
    text = _HEADER.sub(lambda m: f'"{m.group(1)}":N', text)
    text = _HEX.sub("<hex>", text)
    text = _TOOK.sub("took", text)
    return _REMAINING.sub("remaining(N)", text)


@attrs.frozen
class Outcome:
    code: object
    stdout: str
    errors: tuple[str, ...]


def run_scenario(server: Server, tools: list[str], steps: list[Step], tmp: Path) -> list[Outcome]:
    """Run every step (with ``tools[i]``) in order; returns the normalised outcomes."""
    lease = ""
    out: list[Outcome] = []
    for tool, step in zip(tools, steps):
        args = tuple(a.replace("{LEASE}", lease).replace("{TMP}", str(tmp)).replace("{EP}", server.endpoint)
                     for a in step.args)
        if step.mode.startswith("WATCH:"):
            r = server.watch(tool, step.cn, args, int(step.mode.split(":")[1]))
        else:
            r = server.ctl(tool, step.cn, args, step.stdin)
        assert "Traceback" not in r.stderr, (step, r.stderr)
        m = re.search(r"lease ([0-9a-f]{16}) granted", r.stdout)
        if m:
            lease = m.group(1)
        out.append(Outcome(r.returncode, norm(r.stdout, str(tmp)),
                           tuple(norm(line, str(tmp)) for line in error_lines(r.stderr))))
    return out


def compare(steps: list[Step], reference: list[Outcome], got: list[Outcome], what: str) -> list[str]:
    problems = []
    for step, ref, mine in zip(steps, reference, got):
        where = f"{what}: line {step.line}: {step.cn} | {' '.join(step.args)}"
        if step.mode == "DEV":
            if ref.code != 0:
                problems.append(f"{where}: etcd was expected to allow this (exit {ref.code}, {ref.errors})")
            if mine.code == 0 or not any("permission denied" in e for e in mine.errors):
                problems.append(f"{where}: securekv must deny (exit {mine.code}, {mine.errors})")
            continue
        if mine.code != ref.code:
            problems.append(f"{where}: exit {mine.code} != etcd's {ref.code} ({mine.errors} vs {ref.errors})")
        if mine.errors != ref.errors:
            problems.append(f"{where}: errors {mine.errors} != etcd's {ref.errors}")
        if step.mode != "EXIT" and mine.stdout != ref.stdout:
            problems.append(f"{where}: stdout {mine.stdout!r} != etcd's {ref.stdout!r}")
    return problems


def test_scenario_matches_etcd(pki: Path, tmp_path: Path) -> None:
    steps = load_steps()
    assert len(steps) >= 50
    assert sum(s.mode == "DEV" for s in steps) >= 5
    etcdctl = ["etcdctl"] * len(steps)
    # securekv ctl runs the auth/user/role steps of the third run (etcdctl the others, so the
    # state is the same as in the first two runs).
    mixed = ["securekv" if s.auth_command else "etcdctl" for s in steps]
    results = {}
    for name, kind, tools in (("etcd", "etcd", etcdctl), ("securekv", "securekv", etcdctl),
                              ("ctl", "securekv", mixed)):
        base = tmp_path / name
        base.mkdir()
        server = Server(kind, base, pki).start()
        try:
            results[name] = run_scenario(server, tools, steps, base)
        finally:
            server.stop()
    problems = compare(steps, results["etcd"], results["securekv"], "etcdctl: etcd vs securekv")
    auth = [i for i, s in enumerate(steps) if s.auth_command and s.mode != "DEV"]
    assert len(auth) >= 40
    problems += compare([steps[i] for i in auth], [results["etcd"][i] for i in auth],
                        [results["ctl"][i] for i in auth], "etcdctl@etcd vs securekv ctl@securekv")
    assert not problems, "\n".join(problems)
