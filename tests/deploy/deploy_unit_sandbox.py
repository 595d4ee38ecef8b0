"""Run a program under the sandbox a rendered securekv.service describes, without systemd as PID 1.

Why: the unit keeps a directive only if securekv still works under it, and this machine cannot
start units. So this script reads the unit's ``[Service]`` section and reproduces each directive
with the kernel primitives systemd 252 itself uses (mount namespace, read-only and tmpfs mounts,
a fresh procfs, dropped capabilities and uid, no_new_privs, one seccomp filter per directive),
then execs the program. A directive it does not know is an error (exit 3), so a directive added
to the unit cannot skip this proof.

Usage (as root, inside ``unshare --mount --uts --propagation private``)::

    python deploy_unit_sandbox.py UNIT --state-dir DIR --keep PATH... -- PROGRAM ARGS...

``--state-dir`` is where StateDirectory= points for this run (the config's data-dir parent);
``--keep`` re-exposes, read-only, paths that the masked trees (/tmp, /root, ...) would hide: the
test's config, certificates and notify socket, and the interpreter. ExecStart= is replaced by
PROGRAM (the unit names host paths); everything else comes from the unit.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import deploy_mdwe_probe as mdwe

# Directives that are manager policy, not a restriction on the process; the test covers them
# (SIGTERM → STOPPING=1 and exit 0; WATCHDOG_USEC / NOTIFY_SOCKET given by the test;
# NotifyAccess=main checked from the sender's SCM_CREDENTIALS).
MANAGER_SIDE = {"Type", "NotifyAccess", "ExecStart", "Restart", "RestartSec", "TimeoutStopSec", "WatchdogSec",
                "ConfigurationDirectory", "ConfigurationDirectoryMode", "RemoveIPC"}
# Reproduced only through other directives (documented in docs/deployment.md).
NOT_REPRODUCED = {
    "DevicePolicy": "cgroup device controller; PrivateDevices= already leaves only null/zero/full/random/urandom/tty",
}
REPRODUCED = {
    "User", "Group", "LimitNOFILE", "UMask", "StateDirectory", "StateDirectoryMode", "ReadWritePaths",
    "LoadCredential", "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem",
    "PrivateUsers", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset",
    "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
    "MemoryDenyWriteExecute", "PrivateMounts", "KeyringMode", "SystemCallArchitectures", "SystemCallFilter",
    "SystemCallErrorNumber",
}

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 1, 2, 4, 8, 32, 4096, 8192, 16384
_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def umount(target: str) -> None:
    if _libc.umount2(target.encode(), 0) != 0:
        raise OSError(ctypes.get_errno(), f"umount {target}")


def parse_service(unit: Path) -> list[tuple[str, str]]:
    section, out = "", []
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


# --------------------------------------------------------------------------- file system


def mounts() -> list[tuple[str, set[str]]]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        out.append((fields[4].replace("\\040", " "), set(fields[5].split(","))))
    return out


def _flags(options: set[str]) -> int:
    return (MS_NOSUID if "nosuid" in options else 0) | (MS_NODEV if "nodev" in options else 0) | (
        MS_NOEXEC if "noexec" in options else 0)


def make_read_only(path: str, options: set[str] = frozenset()) -> None:
    mount("none", path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _flags(options))


def mask(path: str, mode: int) -> None:
    """Cover ``path`` with an empty tmpfs (what systemd does for PrivateTmp=/ProtectHome=)."""
    if os.path.isdir(path):
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:o}")


def private_dev() -> None:
    """PrivateDevices=yes: a tmpfs /dev with only the pseudo devices (no /dev/kmsg, no disks)."""
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755")
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                               ("urandom", 1, 9), ("tty", 5, 0)):
        os.mknod(f"/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(f"/dev/{name}", 0o666)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    make_read_only("/dev", {"nosuid", "noexec"})


def setup_files(service: dict[str, list[str]], state_dir: Path, keep: list[str], uid: int, gid: int) -> None:
    one = lambda key: service.get(key, [""])[-1]  # noqa: E731
    # ProtectSystem=strict: every mount read-only; /dev, /proc and /sys get their own treatment.
    assert one("ProtectSystem") == "strict", one("ProtectSystem")
    for target, options in mounts():
        if target.startswith(("/proc", "/dev")) or "ro" in options:
            continue
        make_read_only(target, options)
    # A fresh /run (read-only, below) holds the staging area and the credentials.
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    stage = Path("/run/.stage")
    stage.mkdir()
    staged = []
    for i, path in enumerate(keep):
        spot = stage / str(i)
        spot.mkdir() if os.path.isdir(path) else spot.touch()
        mount(path, str(spot), None, MS_BIND | MS_REC)
        staged.append((spot, path))
    state_spot = stage / "state"
    state_spot.mkdir()
    mount(str(state_dir), str(state_spot), None, MS_BIND)
    if one("PrivateTmp") == "yes":
        for path in ("/tmp", "/var/tmp"):
            mask(path, 0o1777)
    if one("ProtectHome") == "yes":
        for path in ("/home", "/root", "/run/user"):
            mask(path, 0o755)
    if one("ProtectKernelModules") == "yes":
        for path in ("/usr/lib/modules", "/lib/modules"):
            if os.path.isdir(path) and not os.path.islink(path):
                mask(path, 0o000)
    for spot, path in staged:  # the kept paths, read-only as under ProtectSystem=strict
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir(exist_ok=True) if spot.is_dir() else target.touch(exist_ok=True)
        mount(str(spot), path, None, MS_MOVE)
    # StateDirectory=: owned by the service user, StateDirectoryMode, the one writable place.
    state_dir.mkdir(parents=True, exist_ok=True)
    mount(str(state_spot), str(state_dir), None, MS_MOVE)
    mount("none", str(state_dir), None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    os.chown(state_dir, uid, gid)
    os.chmod(state_dir, int(one("StateDirectoryMode") or "0755", 8))
    for path in service.get("ReadWritePaths", []):
        if not os.path.isdir(path):  # systemd fails such a unit with 226/NAMESPACE
            raise SystemExit(f"ReadWritePaths={path} does not exist")
        mount(path, path, None, MS_BIND)
        mount("none", path, None, MS_REMOUNT | MS_BIND)
    for path in ("/home", "/root", "/run/user", "/usr/lib/modules", "/lib/modules"):
        if os.path.ismount(path) and not os.path.islink(path):
            make_read_only(path, {"nosuid", "nodev"})
    for spot in stage.iterdir():  # empty mount points left behind by the moves
        spot.rmdir() if spot.is_dir() else spot.unlink()
    stage.rmdir()
    # LoadCredential=NAME:PATH: a private read-only copy for the service user only.
    credentials = service.get("LoadCredential", [])
    if credentials:
        cred_dir = Path("/run/credentials/securekv.service")
        cred_dir.mkdir(parents=True)
        mount("tmpfs", str(cred_dir), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0500")
        for entry in credentials:
            name, _, source = entry.partition(":")
            target = cred_dir / name
            shutil.copyfile(source, target)
            os.chown(target, uid, gid)
            os.chmod(target, 0o400)
        os.chown(cred_dir, uid, gid)
        make_read_only(str(cred_dir), {"nosuid", "nodev", "noexec"})
    make_read_only("/run", {"nosuid", "nodev"})
    if one("PrivateDevices") == "yes":
        private_dev()
    # ProtectProc=invisible + ProcSubset=pid: a procfs showing only processes (no /proc/sys,
    # /proc/kmsg: ProtectKernelTunables=/ProtectKernelLogs= for free), others' hidden.
    hidepid = one("ProtectProc") or "default"
    subset = ",subset=pid" if one("ProcSubset") == "pid" else ""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"hidepid={hidepid}{subset}")


# --------------------------------------------------------------------------- seccomp


class Filter:
    """One libseccomp filter context (systemd loads one per directive; the strictest wins)."""

    ALLOW = 0x7FFF0000
    EQ, NE, MASKED_EQ = 4, 1, 7

    def __init__(self, default: int) -> None:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(mdwe._Cmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.lib, self.ctx = lib, lib.seccomp_init(default)

    @staticmethod
    def errno_action(number: int) -> int:
        return 0x00050000 | number

    def add(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> bool:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return False  # not a native system call (e.g. a 32-bit-only name): nothing to filter
        array = (mdwe._Cmp * max(len(cmps), 1))(*[mdwe._Cmp(*c) for c in cmps])
        return self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), array) == 0

    def load(self) -> None:
        if self.lib.seccomp_load(self.ctx) != 0:
            raise SystemExit(f"seccomp_load failed: errno {ctypes.get_errno()}")


def syscall_groups() -> dict[str, list[str]]:
    """The named sets as this machine's systemd defines them (systemd-analyze syscall-filter)."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif line.startswith("    ") and current and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def allowed_syscalls(lines: list[str], groups: dict[str, list[str]]) -> set[str]:
    """systemd.exec(5): the first SystemCallFilter= line without ~ starts an allow list; later
    lines add to it, ~ lines remove from it."""
    allowed: set[str] = set()
    assert lines and not lines[0].startswith("~"), "the unit's SystemCallFilter= must be an allow list"
    for line in lines:
        if line.startswith("~"):
            allowed -= expand(line[1:].split(), groups)
        else:
            allowed |= expand(line.split(), groups)
    return allowed


def load_filters(service: dict[str, list[str]], groups: dict[str, list[str]]) -> list[str]:
    one = lambda key: service.get(key, [""])[-1]  # noqa: E731
    loaded = []
    eperm = Filter.errno_action(errno.EPERM)
    assert one("SystemCallArchitectures") == "native"  # libseccomp filters for the native ABI only
    families = Filter(Filter.ALLOW)
    allowed_af = {getattr(__import__("socket"), af) for af in one("RestrictAddressFamilies").split()}
    for af in range(0, 46):
        if af not in allowed_af:
            families.add(Filter.errno_action(errno.EAFNOSUPPORT), "socket", (0, Filter.EQ, af, 0))
    families.load()
    loaded.append("RestrictAddressFamilies")

    if one("RestrictNamespaces") == "yes":
        ns = Filter(Filter.ALLOW)
        for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080):
            ns.add(eperm, "unshare", (0, Filter.MASKED_EQ, flag, flag))
            ns.add(eperm, "clone", (0, Filter.MASKED_EQ, flag, flag))
            ns.add(eperm, "setns", (1, Filter.MASKED_EQ, flag, flag))
        ns.add(eperm, "setns", (1, Filter.EQ, 0, 0))
        ns.add(Filter.errno_action(errno.ENOSYS), "clone3")  # systemd: glibc then falls back to clone
        ns.load()
        loaded.append("RestrictNamespaces")
    if one("LockPersonality") == "yes":
        persona = Filter(Filter.ALLOW)
        persona.add(eperm, "personality", (0, Filter.NE, 0, 0))  # PER_LINUX
        persona.load()
        loaded.append("LockPersonality")
    if one("RestrictRealtime") == "yes":
        realtime = Filter(Filter.ALLOW)
        for policy in (1, 2, 6):  # SCHED_FIFO, SCHED_RR, SCHED_DEADLINE
            realtime.add(eperm, "sched_setscheduler", (1, Filter.EQ, policy, 0))
        realtime.load()
        loaded.append("RestrictRealtime")
    if one("RestrictSUIDSGID") == "yes":
        suid = Filter(Filter.ALLOW)
        for bit in (stat.S_ISUID, stat.S_ISGID):
            for name, arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("mkdir", 1), ("mkdirat", 2),
                              ("mknod", 1), ("mknodat", 2), ("creat", 1)):
                suid.add(eperm, name, (arg, Filter.MASKED_EQ, bit, bit))
            suid.add(eperm, "open", (1, Filter.MASKED_EQ, os.O_CREAT, os.O_CREAT), (2, Filter.MASKED_EQ, bit, bit))
            suid.add(eperm, "openat", (2, Filter.MASKED_EQ, os.O_CREAT, os.O_CREAT), (3, Filter.MASKED_EQ, bit, bit))
        suid.load()
        loaded.append("RestrictSUIDSGID")
    if one("MemoryDenyWriteExecute") == "yes":
        mdwe.seccomp_mdwe()
        loaded.append("MemoryDenyWriteExecute")
    # Last, as systemd does: the allow list has no seccomp(), so nothing can be loaded after it.
    default = Filter.errno_action(getattr(errno, one("SystemCallErrorNumber")))
    syscalls = Filter(default)
    allowed = allowed_syscalls(service["SystemCallFilter"], groups)
    added = [name for name in sorted(allowed) if syscalls.add(Filter.ALLOW, name)]
    assert "execve" in added and "seccomp" not in added, added
    # ProtectClock=, ProtectHostname=, ProtectKernelModules=/Logs= also deny these system calls;
    # none is in the allow list, so this filter already refuses them.
    for name in ("setuid", "setrlimit", "settimeofday", "clock_settime", "sethostname", "init_module", "syslog"):
        assert name not in added, name
    syscalls.load()
    loaded.append(f"SystemCallFilter ({len(added)} allowed)")
    return loaded


# --------------------------------------------------------------------------- process


PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING = 250, 1


CLONE_NEWUSER = 0x10000000


def private_users(uid: int, gid: int) -> None:
    """PrivateUsers=yes: a user namespace mapping root and the service user to themselves only.

    A process cannot map other ids into its own new namespace, so a child still in the parent
    namespace writes the maps, as systemd's helper does.
    """
    parent = os.getpid()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_w)
        os.read(ready_r, 1)
        code = 0
        try:
            for name, value in (("uid_map", uid), ("gid_map", gid)):
                fd = os.open(f"/proc/{parent}/{name}", os.O_WRONLY)
                os.write(fd, f"0 0 1\n{value} {value} 1\n".encode())
                os.close(fd)
        except OSError:
            code = 1
        os._exit(code)
    os.close(ready_r)
    if _libc.unshare(CLONE_NEWUSER) != 0:
        raise SystemExit(f"unshare(CLONE_NEWUSER) failed: errno {ctypes.get_errno()}")
    os.write(ready_w, b"x")
    os.close(ready_w)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise SystemExit("writing the user namespace maps failed")


def drop_privileges(service: dict[str, list[str]], uid: int, gid: int, cap_last: int) -> None:
    one = lambda key: service.get(key, [""])[-1]  # noqa: E731
    import resource

    limit = int(one("LimitNOFILE"))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE in this container: the highest we may set
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"sandbox: LimitNOFILE={limit} capped at the container's hard limit {hard}", file=sys.stderr)
    os.umask(int(one("UMask"), 8))
    if one("KeyringMode") == "private":  # a fresh anonymous session keyring
        if _libc.syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
            raise SystemExit(f"keyctl join failed: errno {ctypes.get_errno()}")
    if one("PrivateUsers") == "yes":
        private_users(uid, gid)
    assert one("CapabilityBoundingSet") == "" and one("AmbientCapabilities") == ""
    for cap in range(cap_last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if one("NoNewPrivileges") == "yes" and _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit("PR_SET_NO_NEW_PRIVS failed")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # leaving uid 0 clears the permitted and effective capabilities


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("unit", type=Path)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--keep", action="append", default=[])
    split = sys.argv.index("--")
    args = parser.parse_args(sys.argv[1:split])
    argv = sys.argv[split + 1:]
    pairs = parse_service(args.unit)
    service: dict[str, list[str]] = {}
    for key, value in pairs:
        service.setdefault(key, []).append(value)
    unknown = set(service) - REPRODUCED - MANAGER_SIDE - set(NOT_REPRODUCED)
    if unknown:
        print(f"sandbox: no reproduction for {sorted(unknown)}", file=sys.stderr)
        raise SystemExit(3)
    for ns in ("mnt", "uts"):  # PrivateMounts=, ProtectHostname=: not the namespaces of whoever started us
        if os.readlink(f"/proc/self/ns/{ns}") == os.readlink(f"/proc/{os.getppid()}/ns/{ns}"):
            raise SystemExit(f"run me under unshare --mount --uts: the {ns} namespace is the host's")
    user = pwd.getpwnam(service["User"][-1])
    gid = grp.getgrnam(service["Group"][-1]).gr_gid
    cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    groups = syscall_groups()
    setup_files(service, args.state_dir, args.keep, user.pw_uid, gid)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(USER=user.pw_name, LOGNAME=user.pw_name, HOME=user.pw_dir, SHELL=user.pw_shell,
               STATE_DIRECTORY=str(args.state_dir))
    if service.get("LoadCredential"):
        env["CREDENTIALS_DIRECTORY"] = "/run/credentials/securekv.service"
    drop_privileges(service, user.pw_uid, gid, cap_last)
    loaded = load_filters(service, groups)
    print(f"sandbox: {', '.join(loaded)}; not reproduced: {', '.join(sorted(NOT_REPRODUCED))}", file=sys.stderr, flush=True)
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
