"""Run securekv's runtime stack under MemoryDenyWriteExecute, as the unit does.

``python deploy_mdwe_probe.py seccomp|prctl`` first installs the restriction, proves it is in
force (a W+X mapping must fail), then imports everything the member uses and does a real
mutual-TLS handshake, starts a TLS gRPC server and calls a ctypes callback.

``seccomp`` reproduces systemd 252's MemoryDenyWriteExecute= filter with libseccomp (refuse
mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, shmat with SHM_EXEC);
``prctl`` is the kernel's PR_SET_MDWE that newer systemd uses instead.
``python deploy_mdwe_probe.py seccomp --exec PROGRAM ARGS...`` runs PROGRAM under the filter.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import sys


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def seccomp_mdwe() -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    allow, deny, masked_eq = 0x7FFF0000, 0x00050000 | errno.EPERM, 7
    prot_write, prot_exec, shm_exec = 2, 4, 0o100000
    ctx = lib.seccomp_init(allow)
    rules = (
        ("mmap", prot_write | prot_exec, prot_write | prot_exec),
        ("mprotect", prot_exec, prot_exec),
        ("pkey_mprotect", prot_exec, prot_exec),
        ("shmat", shm_exec, shm_exec),
    )
    for name, mask, value in rules:
        cmp = _Cmp(2, masked_eq, mask, value)
        if lib.seccomp_rule_add_array(ctx, deny, lib.seccomp_syscall_resolve_name(name.encode()), 1, ctypes.byref(cmp)) != 0:
            raise SystemExit(f"seccomp_rule_add {name} failed")
    if lib.seccomp_load(ctx) != 0:
        raise SystemExit("seccomp_load failed")


def prctl_mdwe() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise SystemExit(f"PR_SET_MDWE failed: errno {ctypes.get_errno()}")


def exercise() -> None:
    import pathlib
    import socket
    import sqlite3
    import tempfile
    import threading
    from concurrent import futures

    import bcrypt  # noqa: F401  (imported for its native code)
    import grpc
    import trio  # noqa: F401
    import yaml  # noqa: F401

    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.tls import client_context, server_context

    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(tmp)
        init_ca(d)
        srv = issue_cert(d, "peer", "server", hosts=["127.0.0.1"])
        cli = issue_cert(d, "client", "alice")
        sctx = server_context(srv.cert_path, srv.key_path, d / "ca.pem")
        cctx = client_context(d / "ca.pem", cli.cert_path, cli.key_path)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)

        def echo() -> None:
            conn, _ = listener.accept()
            with sctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(5))

        thread = threading.Thread(target=echo)
        thread.start()
        with cctx.wrap_socket(socket.create_connection(listener.getsockname(), timeout=10), server_hostname="127.0.0.1") as tls:
            tls.sendall(b"hello")
            assert tls.recv(5) == b"hello"
        thread.join(10)
        server = grpc.server(futures.ThreadPoolExecutor(2))
        creds = grpc.ssl_server_credentials([(srv.key_path.read_bytes(), srv.cert_path.read_bytes())])
        assert server.add_secure_port("127.0.0.1:0", creds) > 0
        server.start()
        server.stop(0)
        db = sqlite3.connect(str(d / "x.db"))
        db.execute("create table t (k)")
        db.close()
    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
    assert callback(1) == 2


def main() -> None:
    {"seccomp": seccomp_mdwe, "prctl": prctl_mdwe}[sys.argv[1]]()
    if len(sys.argv) > 2 and sys.argv[2] == "--exec":
        import os

        os.execv(sys.argv[3], sys.argv[3:])  # the filter survives execve, as under systemd
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        raise SystemExit("MemoryDenyWriteExecute is not in force")
    exercise()
    print("ok")


if __name__ == "__main__":
    main()
