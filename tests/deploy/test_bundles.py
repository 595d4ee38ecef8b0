"""`securekv cluster plan` + `securekv install bundle`, for real.

The main test plans a 3-member cluster on 127.0.0.1/.2/.3, installs each bundle under its own
`--root` (twice: the second run changes nothing), and starts each member from its *installed*
files, unchanged: each member runs in a private mount namespace whose /etc is the installed root's
etc stacked on the host's (a read-only overlay) and whose /var/lib is a fresh tmpfs, so the
config's /etc/securekv/pki/... and /var/lib/securekv/... paths are the real ones. Members say
READY=1 on their own notify socket; the real etcdctl, configured only by the planned admin env
file, finds three healthy members over mutual TLS. The installed nftables rules pass `nft -c` and,
loaded in a private network namespace, admit exactly the planned sources.

The other tests refuse bad input (one error line, exit status 2, nothing written) and forged,
damaged, expired, mislabelled or sealed-without-passphrase bundles.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy_helpers import EXEC, REPO, NotifyReceiver, free_port, run_securekv, snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount and network namespaces and nft -c need root")

ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
DEADLINE_S = 60

MEMBER = r"""
set -eu
mount -t overlay overlay -o "lowerdir=$ROOT/etc:/etc" /etc
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mkdir -m 0700 /var/lib/securekv
exec "$PYTHON" -m securekv serve --config-file /etc/securekv/securekv.yaml
"""


def _port_free_on_all() -> int:
    for _ in range(100):
        port = free_port()
        ok = True
        for address in ADDRESSES[1:]:
            with socket.socket() as s:
                try:
                    s.bind((address, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise AssertionError("no port free on 127.0.0.1-3")


def _plan(out: Path, *extra: str, members: tuple[str, ...] = ("n1", "n2", "n3")) -> subprocess.CompletedProcess:
    args = ["cluster", "plan", "--name", "prod", "--out", str(out), "--exec", EXEC]
    for name, address in zip(members, ADDRESSES):
        args += ["--member", f"{name}={address}"]
    return run_securekv(*args, *extra)


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_three_bundles_start_a_healthy_cluster(tmp_path: Path) -> None:
    client_port, peer_port = _port_free_on_all(), _port_free_on_all()
    out = tmp_path / "plan"
    planned = _plan(out, "--client-port", str(client_port), "--peer-port", str(peer_port),
                    "--client-network", "127.0.0.0/29", "--dns", "n1=db1.example.com")
    assert planned.returncode == 0, planned.stderr
    fingerprint = re.search(r"CA fingerprint: (sha256:[0-9a-f]{64})", planned.stdout)[1]
    for name in ("n1", "n2", "n3"):
        assert (out / f"{name}.bundle").stat().st_mode & 0o777 == 0o600
    assert (out / "admin" / "root-key.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "ca" / "ca-key.pem").exists()

    roots = []
    for name in ("n1", "n2", "n3"):
        root = tmp_path / f"root-{name}"
        first = run_securekv("install", "bundle", str(out / f"{name}.bundle"), "--root", str(root),
                             "--ca-fingerprint", fingerprint, "--member", name)
        assert first.returncode == 0, first.stderr
        assert f"wrote {root}/etc/securekv/pki/{name}-peer-key.pem" in first.stdout
        before = snapshot(root)
        second = run_securekv("install", "bundle", str(out / f"{name}.bundle"), "--root", str(root))
        assert second.returncode == 0, second.stderr
        assert "nothing changed" in second.stdout and "wrote" not in second.stdout
        assert snapshot(root) == before
        pki = root / "etc/securekv/pki"
        assert {p.name: p.stat().st_mode & 0o777 for p in pki.iterdir()} == {
            "ca.pem": 0o644, f"{name}.pem": 0o644, f"{name}-key.pem": 0o600, f"{name}-peer.pem": 0o644,
            f"{name}-peer-key.pem": 0o600}
        roots.append(root)
        from cryptography import x509

        peer_cert = x509.load_pem_x509_certificate((pki / f"{name}-peer.pem").read_bytes())
        uris = peer_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
        assert uris == [f"securekv://member/{name}"] and peer_cert.subject.rfc4514_string() == f"CN={name}"

    # The rendered rules: valid for nft, and exactly the planned sources once loaded.
    for name, root, address in zip(("n1", "n2", "n3"), roots, ADDRESSES):
        rules = root / "etc/nftables.d/securekv.nft"
        check = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        loaded = subprocess.run(["unshare", "--net", "sh", "-c", f"nft -f {rules} && nft -j list table inet securekv"],
                                capture_output=True, text=True, timeout=30)
        assert loaded.returncode == 0, loaded.stderr
        sets = {item["set"]["name"]: item["set"].get("elem", [])
                for item in json.loads(loaded.stdout)["nftables"] if "set" in item}
        others = sorted(a for a in ADDRESSES if a != address)
        assert sorted(sets["peers_v4"]) == others, sets
        assert sets["clients_v4"] == [{"prefix": {"addr": "127.0.0.0", "len": 29}}], sets
        assert set(sets) == {"peers_v4", "clients_v4"}
        assert f"tcp dport {peer_port} ip saddr @peers_v4 accept" in rules.read_text()
        assert f"tcp dport {{ {client_port}, {peer_port} }} drop" in rules.read_text()

    procs: list[subprocess.Popen] = []
    receivers = [NotifyReceiver(tmp_path / f"notify-{n}.sock") for n in ("n1", "n2", "n3")]
    try:
        for name, root, receiver in zip(("n1", "n2", "n3"), roots, receivers):
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ROOT": str(root), "PYTHON": sys.executable,
                   "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(receiver.path)}
            with open(tmp_path / f"{name}.log", "wb") as log:
                # unshare execs sh, which execs serve: one pid, the one NotifyAccess=main expects
                procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", MEMBER],
                                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        for name, proc, receiver in zip(("n1", "n2", "n3"), procs, receivers):
            try:
                message, sender = receiver.recv(DEADLINE_S)
            except TimeoutError:
                raise AssertionError(f"{name} sent no READY=1:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}")
            assert "READY=1" in message.splitlines() and sender == proc.pid, message

        admin = _env_file(out / "admin" / "securekv.env")
        assert admin["ETCDCTL_ENDPOINTS"] == ",".join(f"https://{a}:{client_port}" for a in ADDRESSES)
        env = {"PATH": os.environ["PATH"], **admin}

        def etcdctl(*args: str, **override: str) -> subprocess.CompletedProcess:
            return subprocess.run(["etcdctl", *args], capture_output=True, text=True, env={**env, **override},
                                  timeout=30)

        health = etcdctl("endpoint", "health")
        assert health.returncode == 0 and (health.stdout + health.stderr).count("is healthy") == 3, health
        members = json.loads(etcdctl("member", "list", "-w", "json").stdout)["members"]
        assert sorted(m["name"] for m in members) == ["n1", "n2", "n3"]
        assert etcdctl("put", "planned", "cluster").stdout == "OK\n"
        get = etcdctl("get", "planned", "--print-value-only", ETCDCTL_ENDPOINTS=f"https://127.0.0.3:{client_port}")
        assert get.stdout == "cluster\n", get
        # securekv ctl reads the same ETCDCTL_* variables
        ctl = subprocess.run([sys.executable, "-m", "securekv", "ctl", "get", "planned", "--print-value-only"],
                             capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO)}, timeout=30)
        assert ctl.stdout == "cluster\n", ctl
        # mutual TLS: without the admin client certificate the client port refuses the handshake
        no_cert = subprocess.run(["etcdctl", "--endpoints", f"https://127.0.0.1:{client_port}", "--cacert",
                                  admin["ETCDCTL_CACERT"], "--dial-timeout", "2s", "get", "planned"],
                                 capture_output=True, text=True, env={"PATH": os.environ["PATH"], "ETCDCTL_API": "3"},
                                 timeout=30)
        assert no_cert.returncode != 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=20)
        for receiver in receivers:
            receiver.close()


# --------------------------------------------------------------------------- refusals


def _cli(*args: str):  # type: ignore[no-untyped-def]
    from securekv.cli.main import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _refused(result, text: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and text in lines[0], result.output


BASE = ("cluster", "plan", "--name", "prod", "--exec", EXEC)


@pytest.mark.parametrize("members, message", [
    (("n1=10.0.0.1", "n1=10.0.0.2", "n3=10.0.0.3"), "member name 'n1' is given twice"),
    (("n1=10.0.0.1", "n2=10.0.0.1", "n3=10.0.0.3"), "address 10.0.0.1 is given to both n1 and n2"),
    (("n1=db1.example.com",), "is not an IP address"),
    (("n1",), "is not NAME=ADDRESS"),
    (("bad name=10.0.0.1",), "--member name must be"),
    (("n1=fe80::1%eth0",), "--member 'n1=fe80::1%eth0': fe80::1%eth0 has a zone index"),
    (("n1=0.0.0.0",), "is not a member's address"),
])
def test_plan_refuses_bad_members_and_writes_nothing(tmp_path: Path, members: tuple[str, ...], message: str) -> None:
    args = [*BASE, "--out", str(tmp_path / "out")]
    for member in members:
        args += ["--member", member]
    _refused(_cli(*args), message)
    assert list(tmp_path.iterdir()) == []


def test_plan_refuses_bad_options_and_an_unreadable_ca(tmp_path: Path) -> None:
    three = ["--member", "n1=10.0.0.1", "--member", "n2=10.0.0.2", "--member", "n3=10.0.0.3"]
    out = str(tmp_path / "out")
    _refused(_cli(*BASE, *three, "--out", out, "--dns", "n9=db.example.com"), "no member is called 'n9'")
    _refused(_cli(*BASE, *three, "--out", out, "--client-network", "10.0.0.1/24"), "has host bits set")
    _refused(_cli(*BASE, *three, "--out", out, "--client-port", "2380"), "port 2380 is used twice")
    _refused(_cli(*BASE, *three, "--out", out, "--ca", str(tmp_path / "nowhere")), "does not exist")
    bad_ca = tmp_path / "bad-ca"
    from securekv.pki.ca import init_ca

    init_ca(bad_ca)
    (bad_ca / "ca-key.pem").write_text("not a key\n")
    _refused(_cli(*BASE, *three, "--out", out, "--ca", str(bad_ca)), f"cannot use the CA in {bad_ca}")
    (bad_ca / "ca-key.pem").unlink()
    _refused(_cli(*BASE, *three, "--out", out, "--ca", str(bad_ca)), "CA key")
    (bad_ca / "ca.pem").write_text("garbage\n")
    _refused(_cli(*BASE, *three, "--out", out, "--ca", str(bad_ca)), "holds no PEM certificate")
    (bad_ca / "ca.pem").unlink()
    _refused(_cli(*BASE, *three, "--out", out, "--ca", str(bad_ca)), "no CA certificate")
    locked = tmp_path / "locked-ca"
    init_ca(locked, passphrase=b"ca passphrase")
    _refused(_cli(*BASE, *three, "--out", out, "--ca", str(locked)), "is passphrase-protected; give --ca-passphrase-file")
    (tmp_path / "wrong").write_text("not the passphrase\n")
    _refused(_cli(*BASE, *three, "--out", out, "--ca", str(locked), "--ca-passphrase-file", str(tmp_path / "wrong")),
             "wrong passphrase")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-ca", "locked-ca", "wrong"]


def test_even_member_count_warns_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dry = _plan(out, "--dry-run", members=("n1", "n2"))
    assert dry.returncode == 0, dry.stderr
    assert "warning: 2 members (an even count) need a quorum of 2 and survive 0 failure(s), as 1 would" in dry.stderr
    assert "n1" in dry.stdout and "127.0.0.2" in dry.stdout and "peer port admits" in dry.stdout
    assert not out.exists()
    again = _cli(*BASE, "--out", str(out), "--member", "a=10.0.0.1", "--member", "b=10.0.0.2")
    assert again.exit_code == 0 and (out / "a.bundle").exists()
    _refused(_cli(*BASE, "--out", str(out), "--member", "a=10.0.0.1", "--member", "b=10.0.0.2"),
             "already exist; pass --force")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("planned") / "out"
    result = _cli(*BASE, "--out", str(out), "--member", "n1=10.0.0.1", "--member", "n2=10.0.0.2",
                  "--member", "n3=10.0.0.3", "--client-network", "10.0.0.0/24")
    assert result.exit_code == 0, result.output
    return out


def test_install_refuses_bad_input_and_writes_nothing(planned: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    bundle = str(planned / "n1.bundle")
    _refused(_cli("install", "bundle", bundle, "--root", str(root), "--firewall", "pf"),
             "unknown firewall backend 'pf'")
    _refused(_cli("install", "bundle", bundle, "--root", str(root), "--member", "n2"), "is for member 'n1', not 'n2'")
    _refused(_cli("install", "bundle", bundle, "--root", str(root), "--ca-fingerprint", "sha256:" + "0" * 64),
             "this bundle was not made by your CA")
    _refused(_cli("install", "bundle", str(planned / "missing.bundle"), "--root", str(root)), "cannot read bundle")
    _refused(_cli("install", "bundle", str(planned / "admin" / "ca.pem"), "--root", str(root)), "not a securekv bundle")
    edited = tmp_path / "edited.bundle"
    edited.write_text((planned / "n1.bundle").read_text().replace("10.0.0.1:2379", "10.0.0.9:2379"))
    _refused(_cli("install", "bundle", str(edited), "--root", str(root)), "its sha256 does not match")
    assert not root.exists()


def test_install_writes_the_renewal_timer(planned: Path, tmp_path: Path) -> None:
    """The daily renewal `cluster join` writes, rendered at install time: valid for systemd,
    through every member by default or --renew-endpoints, restored byte for byte if edited."""
    import shutil

    root = tmp_path / "root"
    bundle = str(planned / "n1.bundle")
    _refused(_cli("install", "bundle", bundle, "--root", str(root), "--renew-endpoints", "http://10.0.0.2:2379"),
             "--renew-endpoints: 'http://10.0.0.2:2379' is not https://HOST:PORT")
    assert not root.exists()
    first = _cli("install", "bundle", bundle, "--root", str(root), "--firewall", "none")
    assert first.exit_code == 0, first.output
    units = root / "etc/systemd/system"
    service, timer = units / "securekv-renew.service", units / "securekv-renew.timer"
    assert f"wrote {service}" in first.output and f"wrote {timer}" in first.output
    assert ("ExecStart=/usr/bin/env securekv cluster renew --endpoints https://10.0.0.1:2379,https://10.0.0.2:2379,"
            "https://10.0.0.3:2379 --cacert /etc/securekv/pki/ca.pem --server-cert /etc/securekv/pki/n1.pem "
            "--server-key /etc/securekv/pki/n1-key.pem --peer-cert /etc/securekv/pki/n1-peer.pem "
            "--peer-key /etc/securekv/pki/n1-peer-key.pem --before 30d\n") in service.read_text()
    assert "OnCalendar=daily" in timer.read_text() and service.stat().st_mode & 0o777 == 0o644
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", "--man=no", str(service), str(timer)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
    rendered = service.read_text()
    service.write_text(rendered.replace("--before 30d", "--before 30d\nExecStartPost=/bin/sh -c id"))
    again = _cli("install", "bundle", bundle, "--root", str(root), "--firewall", "none")
    assert again.exit_code == 0 and again.output.count("wrote ") == 1 and f"wrote {service}" in again.output, again.output
    assert service.read_text() == rendered
    assert "nothing changed" in _cli("install", "bundle", bundle, "--root", str(root), "--firewall", "none").output
    other = _cli("install", "bundle", bundle, "--root", str(root), "--firewall", "none",
                 "--renew-endpoints", "https://10.0.0.2:2379")
    assert other.exit_code == 0 and other.output.count("wrote ") == 1, other.output
    assert "cluster renew --endpoints https://10.0.0.2:2379 --cacert" in service.read_text()


def _rewrite(path: Path, target: Path, **changes: object) -> Path:
    from securekv.cluster.bundle import encode, read_bundle
    import attrs

    target.write_bytes(encode(attrs.evolve(read_bundle(path), **changes)))
    return target


def test_forged_bundles_are_refused(planned: Path, tmp_path: Path) -> None:
    """Digest intact (re-encoded), contents wrong: the certificate checks catch each."""
    from securekv.cluster.bundle import read_bundle

    n1, n2 = read_bundle(planned / "n1.bundle"), read_bundle(planned / "n2.bundle")
    root = str(tmp_path / "root")
    swapped = _rewrite(planned / "n1.bundle", tmp_path / "a.bundle",
                       pems={**n1.pems, "peer-cert": n2.pems["peer-cert"], "peer-key": n2.pems["peer-key"]})
    _refused(_cli("install", "bundle", str(swapped), "--root", root), "does not cover 10.0.0.1")
    mismatched = _rewrite(planned / "n1.bundle", tmp_path / "b.bundle", pems={**n1.pems, "server-key": n2.pems["server-key"]})
    _refused(_cli("install", "bundle", str(mismatched), "--root", root), "server-key does not match its server certificate")
    from securekv.pki.ca import init_ca

    other = init_ca(tmp_path / "other-ca")
    foreign = _rewrite(planned / "n1.bundle", tmp_path / "c.bundle",
                       pems={**n1.pems, "ca": other.cert_path.read_text()})
    _refused(_cli("install", "bundle", str(foreign), "--root", root), "is not signed by the trusted CA")
    from securekv.cluster.plan import _signing, issue_leaf
    from securekv.pki.ca import load_ca

    ca = load_ca(planned / "ca")
    impostor = issue_leaf(ca, _signing(ca), "peer", "n2", ["10.0.0.1"])  # right address, another member's name
    named = _rewrite(planned / "n1.bundle", tmp_path / "e.bundle",
                     pems={**n1.pems, "peer-cert": impostor.cert_pem, "peer-key": impostor.key_pem})
    _refused(_cli("install", "bundle", str(named), "--root", root), "names member 'n2', not 'n1'")
    from securekv.cluster.bundle import FirewallPlan

    opened = _rewrite(planned / "n1.bundle", tmp_path / "f.bundle",
                      firewall=FirewallPlan(("10.0.0.2", "10.0.0.3", "192.0.2.1"), ("10.0.0.0/24",), 2379, 2380))
    _refused(_cli("install", "bundle", str(opened), "--root", root), "but the other members are 10.0.0.2, 10.0.0.3")
    renamed = _rewrite(planned / "n1.bundle", tmp_path / "d.bundle", member="n2")
    _refused(_cli("install", "bundle", str(renamed), "--root", root), "its config names 'n1'")
    assert not Path(root).exists()


def test_bundle_with_an_edited_unit_or_sysusers_is_refused_even_with_the_ca_pinned(planned: Path,
                                                                                    tmp_path: Path) -> None:
    """Issue 12: the unit is installed as a root-owned system file. A bundle whose certificates
    are the real ones (so the CA pin holds) but whose unit gained an ``ExecStartPre=+`` line (a
    command run as root outside the sandbox), or whose sysusers entry gained a user, re-encoded
    with a fresh digest, is refused and nothing is written."""
    from securekv.cluster.bundle import ca_fingerprint, read_bundle
    from securekv.pki.ca import load_ca

    pin = ca_fingerprint(load_ca(planned / "ca").cert)
    n1 = read_bundle(planned / "n1.bundle")
    root = tmp_path / "root"
    edits = {
        "ExecStartPre": {"unit": n1.unit.replace("[Service]\n", "[Service]\nExecStartPre=+/bin/sh -c id\n")},
        "sandbox off": {"unit": n1.unit.replace("ProtectSystem=strict", "ProtectSystem=no")},
        "ExecStart program": {"unit": n1.unit.replace("ExecStart=/usr/bin/env securekv",
                                                      "ExecStart=/bin/sh -c id; /usr/bin/env securekv")},
        "ExecStart user": {"unit": n1.unit.replace("User=securekv", "User=root")},
        "sysusers": {"sysusers": n1.sysusers + "u evil 0 - /\n"},
    }
    for label, change in edits.items():
        assert change != {"unit": n1.unit}, label  # the edit took
        edited = _rewrite(planned / "n1.bundle", tmp_path / f"{label}.bundle", **change)
        _refused(_cli("install", "bundle", str(edited), "--root", str(root), "--ca-fingerprint", pin,
                      "--firewall", "none"), "(edited?); refusing to install it")
    assert not root.exists()
    # The untouched bundle, pinned, installs (its unit is exactly the rendered one).
    result = _cli("install", "bundle", str(planned / "n1.bundle"), "--root", str(root), "--ca-fingerprint", pin,
                  "--firewall", "none")
    assert result.exit_code == 0, result.output
    assert (root / "etc/systemd/system/securekv.service").read_text() == n1.unit


def test_plan_with_an_unusual_program_path_still_installs(tmp_path: Path) -> None:
    """The unit check reads the program back from ExecStart= (systemd quoting, % and $
    doubled): a legitimate --exec with such characters is not mistaken for an edit."""
    out = tmp_path / "out"
    result = _cli("cluster", "plan", "--name", "odd", "--exec", "/opt/sk%v/bin/securekv --x=$HOME", "--out", str(out),
                  "--member", "n1=10.0.0.1")
    assert result.exit_code == 0, result.output
    root = tmp_path / "root"
    result = _cli("install", "bundle", str(out / "n1.bundle"), "--root", str(root), "--firewall", "none")
    assert result.exit_code == 0, result.output
    assert "ExecStart=/opt/sk%%v/bin/securekv --x=$$HOME serve" in (root / "etc/systemd/system/securekv.service").read_text()


def test_expired_bundle_is_refused(tmp_path: Path) -> None:
    from securekv.cli.install_cmd import _split_exec
    from securekv.cluster import bundle, plan
    from securekv.pki.ca import init_ca, load_ca
    from securekv.pki.verify import utcnow

    then = utcnow() - timedelta(days=800)
    init_ca(tmp_path / "ca", now=then)
    spec = plan.make_spec("old", ["n1=10.0.0.1"], exec_start=_split_exec(EXEC))
    result = plan.build_plan(spec, tmp_path / "out", load_ca(tmp_path / "ca"), ca_created=False, now=then)
    plan.write_plan(result)
    with pytest.raises(bundle.BundleError, match="expired"):
        bundle.verify(bundle.read_bundle(tmp_path / "out" / "n1.bundle"))
    soon = bundle.verify(bundle.read_bundle(tmp_path / "out" / "n1.bundle"), now=then + timedelta(days=350))
    assert any("expires on" in w for w in soon.warnings)


def test_sealed_bundle_needs_its_passphrase(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("correct horse battery\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("incorrect horse battery\n")
    out = tmp_path / "out"
    result = _cli(*BASE, "--out", str(out), "--member", "n1=10.0.0.1", "--passphrase-file", str(secret))
    assert result.exit_code == 0, result.output
    sealed = out / "n1.bundle"
    assert sealed.read_bytes().startswith(b"securekv sealed bundle v1\n") and b"BEGIN" not in sealed.read_bytes()
    root = tmp_path / "root"
    _refused(_cli("install", "bundle", str(sealed), "--root", str(root)), "sealed with a passphrase; give --passphrase-file")
    _refused(_cli("install", "bundle", str(sealed), "--root", str(root), "--passphrase-file", str(wrong)),
             "wrong passphrase")
    damaged = tmp_path / "damaged.bundle"
    data = bytearray(sealed.read_bytes())
    data[-5] ^= 1
    damaged.write_bytes(bytes(data))
    _refused(_cli("install", "bundle", str(damaged), "--root", str(root), "--passphrase-file", str(secret)),
             "damaged or was modified")
    assert not root.exists()
    args = ("install", "bundle", str(sealed), "--root", str(root), "--passphrase-file", str(secret), "--firewall", "none")
    dry = _cli(*args, "--dry-run")
    assert dry.exit_code == 0 and f"would write {root}/etc/securekv/pki/n1-key.pem" in dry.output, dry.output
    assert not root.exists()
    ok = _cli(*args)
    assert ok.exit_code == 0, ok.output
    assert "nothing would change" in _cli(*args, "--dry-run").output
    assert (root / "etc/securekv/pki/n1-key.pem").stat().st_mode & 0o777 == 0o600
    assert not (root / "etc/nftables.d").exists()


LIVE = r"""
set -eu
mount -t tmpfs tmpfs "$TMP/etc"
cp -a /etc/. "$TMP/etc/"
mount --bind "$TMP/etc" /etc
mount -t tmpfs tmpfs /var/lib
install() { PYTHONPATH="$REPO" "$PYTHON" -m securekv install bundle "$BUNDLE" --member n1; }
install > "$TMP/first.out"
install > "$TMP/second.out"
stat -c '%n %U:%G %a' /etc/securekv/pki/ca.pem /etc/securekv/pki/n1-key.pem /etc/securekv/pki/n1-peer-key.pem \
    /etc/securekv/securekv.yaml /etc/nftables.d/securekv.nft /var/lib/securekv
"""


def test_live_install_hands_the_keys_to_the_service_user(tmp_path: Path) -> None:
    """Without --root: the service user is created, owns the certificates and keys (0600), and a
    second run changes nothing. In a mount namespace whose /etc is a copy and /var/lib a tmpfs."""
    out = tmp_path / "out"
    result = _cli("cluster", "plan", "--name", "live", "--exec", EXEC, "--out", str(out), "--user", "skvbundle",
                  "--member", "n1=10.0.0.1")
    assert result.exit_code == 0, result.output
    (tmp_path / "etc").mkdir()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMP": str(tmp_path), "REPO": str(REPO), "PYTHON": sys.executable,
           "BUNDLE": str(out / "n1.bundle")}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", LIVE],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "/etc/securekv/pki/ca.pem skvbundle:skvbundle 644",
        "/etc/securekv/pki/n1-key.pem skvbundle:skvbundle 600",
        "/etc/securekv/pki/n1-peer-key.pem skvbundle:skvbundle 600",
        "/etc/securekv/securekv.yaml root:root 644",
        "/etc/nftables.d/securekv.nft root:root 644",
        "/var/lib/securekv skvbundle:skvbundle 700",
    ]
    first = (tmp_path / "first.out").read_text()
    assert "wrote /etc/securekv/pki/n1-key.pem" in first and "owner of /etc/securekv/pki/n1-key.pem: skvbundle" in first
    assert "nft -f /etc/nftables.d/securekv.nft" in first and "systemctl enable --now securekv.service" in first
    second = (tmp_path / "second.out").read_text()
    assert "nothing changed" in second and "wrote" not in second and "owner of" not in second


def test_plan_with_a_name_constrained_intermediate(tmp_path: Path) -> None:
    """The CA key stays offline: an intermediate limited to the cluster's network signs. Its
    constraints leave out 127.0.0.1/localhost, so the members get no local listener (warned)."""
    from securekv.cluster.bundle import read_bundle, verify
    from securekv.pki.ca import init_ca, init_intermediate

    root = init_ca(tmp_path / "root")
    init_intermediate(tmp_path / "inter", tmp_path / "root", permit_ip=["10.0.0.0/24"], permit_dns=["example.com"])
    out = tmp_path / "out"
    result = _cli(*BASE, "--out", str(out), "--ca", str(tmp_path / "inter"), "--member", "n1=10.0.0.1",
                  "--dns", "n1=db1.example.com")
    assert result.exit_code == 0, result.output
    assert "no local client listener" in result.output
    assert not (out / "ca").exists()
    verified = verify(read_bundle(out / "n1.bundle"))
    assert verified.bundle.pems["ca"] == root.cert_path.read_text()  # members trust the root
    assert verified.config.data["listen-client-urls"] == "https://10.0.0.1:2379"
    _refused(_cli(*BASE, "--out", str(tmp_path / "out2"), "--ca", str(tmp_path / "inter"), "--member", "n1=10.0.1.1"),
             "outside the CA's name constraints")
    assert not (tmp_path / "out2").exists()
