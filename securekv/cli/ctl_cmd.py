"""``securekv ctl``: etcdctl 3.4's commands, flags, output formats and exit codes.

Global flags may appear before or after the subcommand (etcdctl's persistent flags) and
come from ``SECUREKV_CTL_<FLAG>`` or ``ETCDCTL_<FLAG>`` env vars. Errors print
``Error: <message>`` on stderr with etcdctl's exit codes (1 error, 2 bad connection,
3 invalid input, 4 bad feature, 5 interrupted, 128 bad args).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, NoReturn

import click

from securekv import __version__

EXIT_ERROR, EXIT_BAD_CONNECTION, EXIT_INVALID_INPUT, EXIT_BAD_FEATURE, EXIT_INTERRUPTED = 1, 2, 3, 4, 5
EXIT_BAD_ARGS = 128

# flag -> takes a value. Hoisted to the front so they work anywhere on the line.
GLOBAL_FLAGS = {"--endpoints": True, "--cacert": True, "--cert": True, "--key": True, "--dial-timeout": True,
                "--command-timeout": True, "--write-out": True, "-w": True, "--hex": False,
                "--user": True, "--password": True, "--discovery-srv": True, "-d": True,
                "--discovery-srv-name": True, "--insecure-discovery": False}


class Die(Exception):
    def __init__(self, code: int, message: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def die(code: int, message: object) -> NoReturn:
    raise Die(code, str(message))


def hoist_globals(args: list[str]) -> list[str]:
    """Move global flags (and their values) that follow the subcommand to the front."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        name = a.split("=", 1)[0]
        if name in GLOBAL_FLAGS:
            front.append(a)
            if GLOBAL_FLAGS[name] and "=" not in a and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
        elif a.startswith("-w") and len(a) > 2 and not a.startswith("--"):
            front.extend(["-w", a[2:]])
        else:
            rest.append(a)
        i += 1
    return front + rest


class CtlGroup(click.Group):
    """Hoists global flags, and turns click usage errors into etcdctl's ``Error:`` lines."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, hoist_globals(list(args)))
        except click.UsageError as exc:
            _report(_usage(exc))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Die as exc:
            _report(exc)
        except click.UsageError as exc:
            _report(_usage(exc))
        except (click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # never a traceback: one clear line, exit 1
            _report(Die(EXIT_ERROR, str(exc) or type(exc).__name__))


class SubGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage(exc) from None


def _usage(exc: click.UsageError) -> Die:
    if isinstance(exc, click.NoSuchOption):
        return Die(EXIT_ERROR, f"unknown flag: {exc.option_name}")
    return Die(EXIT_ERROR, exc.format_message())


def _report(exc: Die) -> NoReturn:
    if exc.message is not None:
        sys.stderr.write(f"Error: {exc.message}\n")
        sys.stderr.flush()
    sys.exit(exc.code)


def _env(name: str) -> list[str]:
    flag = name.upper().replace("-", "_")
    return [f"SECUREKV_CTL_{flag}", f"ETCDCTL_{flag}"]


class Ctl:
    """Global settings shared by every subcommand."""

    def __init__(self, endpoints: str, cacert: str | None, cert: str | None, key: str | None,
                 dial_timeout: float, command_timeout: float, command_timeout_set: bool, write_out: str,
                 is_hex: bool, user: str | None = None, password: str | None = None) -> None:
        self.user, self.password = user, password
        self.endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        self.cacert, self.cert, self.key = cacert, cert, key
        self.dial_timeout = dial_timeout
        self.command_timeout = command_timeout
        self.command_timeout_set = command_timeout_set
        self.write_out = write_out
        self.is_hex = is_hex
        self._client = None
        self._printer = None

    def client(self, endpoints: list[str] | None = None, timeout: float | None = -1.0):
        from securekv.client import Client
        from securekv.errors import UsageError

        self.printer  # etcdctl rejects an unknown -w before it connects
        try:
            c = Client(endpoints or self.endpoints, cacert=self.cacert, cert=self.cert, key=self.key,
                       timeout=self.command_timeout if timeout == -1.0 else timeout,
                       dial_timeout=self.dial_timeout, user=self.user, password=self.password)
        except UsageError as exc:
            die(EXIT_BAD_ARGS, exc)
        if self.user:
            self._authenticate(c)
        if endpoints is None and timeout == -1.0:
            self._client = c
        return c

    @staticmethod
    def _authenticate(c) -> None:
        """clientv3.New gets the token while dialing; a failure there is etcdctl's exit 2."""
        from securekv.client.errors import ClientError

        try:
            c.authenticate()
        except ClientError as exc:
            die(EXIT_BAD_CONNECTION, exc)

    @property
    def printer(self):
        from securekv.client.printer import FORMATS, Printer

        if self._printer is None:
            if self.write_out not in FORMATS:
                die(EXIT_BAD_FEATURE, "unsupported output format")
            self._printer = Printer(self.write_out, self.is_hex)
        return self._printer

    def show(self, method: str, *args: Any) -> None:
        from securekv.client.printer import Unsupported

        try:
            getattr(self.printer, method)(*args)
        except Unsupported as exc:
            die(EXIT_BAD_FEATURE, exc)


def _duration(flag: str, value: str) -> float:
    from securekv.client.gofmt import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        die(EXIT_ERROR, f'invalid argument "{value}" for "--{flag}" flag: {exc}')


@click.group(cls=CtlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoints", multiple=True, envvar=_env("endpoints"),
              help="gRPC endpoints, comma separated; repeatable (default 127.0.0.1:2379).")
@click.option("--cacert", envvar=_env("cacert"), help="Verify server certificates with this CA bundle.")
@click.option("--cert", envvar=_env("cert"), help="Client certificate (mutual TLS).")
@click.option("--key", envvar=_env("key"), help="Client certificate's private key.")
@click.option("--dial-timeout", default="2s", envvar=_env("dial-timeout"), show_default=True,
              help="Dial timeout for client connections.")
@click.option("--command-timeout", default=None, envvar=_env("command-timeout"),
              help="Timeout for short running commands (default 5s).")
@click.option("-w", "--write-out", default="simple", envvar=_env("write-out"), show_default=True,
              help="Output format: simple, json or table.")
@click.option("--hex", "is_hex", is_flag=True, default=False, envvar=_env("hex"),
              help="Print keys and values as hex escapes.")
@click.option("--user", default="", envvar=_env("user"),
              help="username[:password] for authentication (prompt if password is not supplied).")
@click.option("--password", default="", envvar=_env("password"),
              help="Password for authentication (then --user must not include one).")
@click.option("-d", "--discovery-srv", default="", envvar=_env("discovery-srv"),
              help="Domain whose _etcd-client-ssl._tcp SRV records list the endpoints.")
@click.option("--discovery-srv-name", default="", envvar=_env("discovery-srv-name"),
              help="Suffix of the SRV names (_etcd-client-ssl-NAME._tcp).")
@click.option("--insecure-discovery", default="true", envvar=_env("insecure-discovery"), metavar="[BOOL]",
              is_flag=False, flag_value="true",
              help="Accept http:// endpoints from SRV records (etcdctl's default: true).")
@click.pass_context
def cli(ctx: click.Context, endpoints: tuple[str, ...], cacert: str | None, cert: str | None, key: str | None,
        dial_timeout: str, command_timeout: str | None, write_out: str, is_hex: bool, user: str,
        password: str, discovery_srv: str, discovery_srv_name: str, insecure_discovery: str) -> None:
    """etcdctl-compatible client commands (etcd v3 API over mutual TLS)."""
    for flag, value in (("cacert", cacert), ("cert", cert), ("key", key)):
        if value == "":
            die(EXIT_BAD_ARGS, f"empty string is passed to --{flag} option")
    if discovery_srv:
        found = _discover_endpoints(discovery_srv, discovery_srv_name, insecure_discovery.lower() != "false")
        if found:
            endpoints = (",".join(found),)
    ctx.obj = Ctl(",".join(endpoints) or "127.0.0.1:2379", cacert, cert, key, _duration("dial-timeout", dial_timeout),
                  _duration("command-timeout", command_timeout or "5s"), command_timeout is not None,
                  write_out, is_hex, *_auth_cfg(user, password))


def _discover_endpoints(domain: str, service_name: str, insecure: bool) -> list[str]:
    """etcdctl's endpointsFromFlagValue: endpoints from the client SRV records; without
    --insecure-discovery, http:// ones are dropped with etcdctl's message. Names are resolved
    through $SECUREKV_DNS_RESOLVER when set (client/srv.py) and still verified by TLS."""
    from securekv.client import endpoints as ep_mod
    from securekv.client.srv import DiscoveryError, Resolver, get_client

    resolver = Resolver.from_env()
    try:
        found, records = get_client("etcd-client", domain, service_name, resolver)
        if resolver.nameserver is not None:
            for r in records:
                addresses = resolver.addresses(r.target)
                if addresses:
                    ep_mod.RESOLVED[r.target] = addresses[0]
    except DiscoveryError as exc:
        die(EXIT_ERROR, exc)
    if insecure:
        return found
    kept = []
    for ep in found:
        if ep.startswith("http://"):
            sys.stderr.write(f'ignoring discovered insecure endpoint "{ep}"\n')
            continue
        kept.append(ep)
    return kept


def _auth_cfg(user: str, password: str) -> tuple[str | None, str | None]:
    """etcdctl's authCfgFromCmd: ``--user name:pw``, ``--user name --password pw``, or a prompt."""
    if not user:
        return None, None
    if password:
        return user, password
    name, sep, pw = user.partition(":")
    if sep:
        return name, pw
    return user, _ask_password()


def _ask_password() -> str:
    """speakeasy.Ask as etcdctl uses it: the prompt on stdout, one line from stdin, a newline."""
    if sys.stdin.isatty():
        import getpass

        try:
            return getpass.getpass("Password: ", stream=sys.stdout)
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return ""
    sys.stdout.write("Password: ")
    sys.stdout.flush()
    line = sys.stdin.readline()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return line[:-1] if line.endswith("\n") else line


pass_ctl = click.pass_obj


def _rpc(fn: Callable[[], Any], code: int = EXIT_ERROR, wrap: str | None = None) -> Any:
    from securekv.client.errors import ClientError

    try:
        return fn()
    except ClientError as exc:
        die(code, f"{wrap} ({exc})" if wrap else exc)


def _lease_id(text: str) -> int:
    try:
        value = int(text, 16)
        if value >= 1 << 63 or value < -(1 << 63) or text.strip() != text or text.startswith(("0x", "+")):
            raise ValueError
        return value
    except ValueError:
        die(EXIT_BAD_ARGS, f'bad lease ID arg (strconv.ParseInt: parsing "{text}": invalid syntax), expecting ID in Hex')


# -- KV ---------------------------------------------------------------------------------------
@cli.command("put", context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1)
@click.option("--lease", default="0", help="Lease ID (hex) to attach to the key.")
@click.option("--prev-kv", is_flag=True, help="Return the previous key-value pair.")
@click.option("--ignore-value", is_flag=True, help="Update the key using its current value.")
@click.option("--ignore-lease", is_flag=True, help="Update the key using its current lease.")
@pass_ctl
def put_cmd(ctl: Ctl, args: tuple[str, ...], lease: str, prev_kv: bool, ignore_value: bool,
            ignore_lease: bool) -> None:
    """Put KEY VALUE (VALUE may come from stdin)."""
    if not args:
        die(EXIT_BAD_ARGS, "put command needs 1 argument and input from stdin or 2 arguments")
    key = args[0]
    if ignore_value and len(args) > 1:
        die(EXIT_BAD_ARGS, "put command needs only 1 argument when 'ignore-value' is set")
    value: bytes = b""
    if not ignore_value:
        if len(args) > 1:
            value = os.fsencode(args[1])
        else:
            value = sys.stdin.buffer.read()
            if not value:
                die(EXIT_BAD_ARGS, "put command needs 1 argument and input from stdin or 2 arguments")
    try:
        lease_id = int(lease, 16)
    except ValueError:
        die(EXIT_BAD_ARGS, f'bad lease ID (strconv.ParseInt: parsing "{lease}": invalid syntax), expecting ID in Hex')
    c = ctl.client()
    resp = _rpc(lambda: c.put(os.fsencode(key), value, lease=lease_id, prev_kv=prev_kv, ignore_value=ignore_value,
                              ignore_lease=ignore_lease))
    ctl.show("put", resp)


def _sort_args(order: str, sort_by: str) -> tuple[str, str]:
    o = order.upper()
    if o not in ("", "ASCEND", "DESCEND"):
        die(EXIT_BAD_FEATURE, f"bad sort order {order}")
    t = sort_by.upper()
    targets = {"": "KEY", "KEY": "KEY", "CREATE": "CREATE", "MODIFY": "MOD", "VALUE": "VALUE", "VERSION": "VERSION"}
    if t not in targets:
        die(EXIT_BAD_FEATURE, f"bad sort target {sort_by}")
    return o or "NONE", targets[t]


@cli.command("get")
@click.argument("args", nargs=-1)
@click.option("--consistency", default="l", help="Linearizable(l) or Serializable(s).")
@click.option("--order", default="", help="ASCEND or DESCEND.")
@click.option("--sort-by", default="", help="CREATE, KEY, MODIFY, VALUE, or VERSION.")
@click.option("--limit", default=0, type=int, help="Maximum number of results.")
@click.option("--prefix", is_flag=True, help="Get keys with matching prefix.")
@click.option("--from-key", is_flag=True, help="Get keys >= the given key.")
@click.option("--rev", default=0, type=int, help="Revision to read at.")
@click.option("--keys-only", is_flag=True, help="Get only the keys.")
@click.option("--count-only", is_flag=True, help="Get only the count.")
@click.option("--print-value-only", is_flag=True, help="Only write values (simple format).")
@pass_ctl
def get_cmd(ctl: Ctl, args: tuple[str, ...], consistency: str, order: str, sort_by: str, limit: int, prefix: bool,
            from_key: bool, rev: int, keys_only: bool, count_only: bool, print_value_only: bool) -> None:
    """Get KEY [RANGE_END]."""
    if not args:
        die(EXIT_BAD_ARGS, "get command needs one argument as key and an optional argument as range_end")
    if prefix and from_key:
        die(EXIT_BAD_ARGS, "`--prefix` and `--from-key` cannot be set at the same time, choose one")
    if consistency not in ("l", "s"):
        die(EXIT_BAD_FEATURE, f'unknown consistency flag "{consistency}"')
    if len(args) > 1 and (prefix or from_key):
        die(EXIT_BAD_ARGS, "too many arguments, only accept one argument when `--prefix` or `--from-key` is set")
    sort_order, sort_target = _sort_args(order, sort_by)
    c = ctl.client()
    resp = _rpc(lambda: c.get(os.fsencode(args[0]), os.fsencode(args[1]) if len(args) > 1 else None, prefix=prefix,
                              from_key=from_key, limit=limit, revision=max(rev, 0), sort_order=sort_order,
                              sort_target=sort_target, serializable=consistency == "s", keys_only=keys_only,
                              count_only=count_only))
    if print_value_only:
        if ctl.write_out != "simple":
            die(EXIT_BAD_ARGS, "print-value-only is only for `--write-out=simple`")
        ctl.printer.value_only = True
    ctl.show("get", resp)


@cli.command("del")
@click.argument("args", nargs=-1)
@click.option("--prefix", is_flag=True, help="Delete keys with matching prefix.")
@click.option("--prev-kv", is_flag=True, help="Return deleted key-value pairs.")
@click.option("--from-key", is_flag=True, help="Delete keys >= the given key.")
@pass_ctl
def del_cmd(ctl: Ctl, args: tuple[str, ...], prefix: bool, prev_kv: bool, from_key: bool) -> None:
    """Delete KEY or the range [KEY, RANGE_END)."""
    if not args or len(args) > 2:
        die(EXIT_BAD_ARGS, "del command needs one argument as key and an optional argument as range_end")
    if prefix and from_key:
        die(EXIT_BAD_ARGS, "`--prefix` and `--from-key` cannot be set at the same time, choose one")
    if len(args) > 1 and (prefix or from_key):
        die(EXIT_BAD_ARGS, "too many arguments, only accept one argument when `--prefix` or `--from-key` is set")
    c = ctl.client()
    resp = _rpc(lambda: c.delete(os.fsencode(args[0]), os.fsencode(args[1]) if len(args) > 1 else None,
                                 prefix=prefix, from_key=from_key, prev_kv=prev_kv))
    ctl.show("delete", resp)


@cli.command("txn")
@click.argument("args", nargs=-1)
@click.option("-i", "--interactive", is_flag=True, help="Prompt for each section.")
@pass_ctl
def txn_cmd(ctl: Ctl, args: tuple[str, ...], interactive: bool) -> None:
    """One transaction read from stdin (compares, success ops, failure ops; blank-line separated)."""
    from securekv.client.txnparse import TxnInputError, parse_compare, parse_op

    if args:
        die(EXIT_BAD_ARGS, "txn command does not accept argument")
    c = ctl.client()
    readline = sys.stdin.readline

    def section(prompt: str, parse) -> list:
        if interactive:
            click.echo(prompt)
        items = []
        while True:
            line = readline()
            if not line.endswith("\n"):
                die(EXIT_INVALID_INPUT, "EOF")
            line = line.strip()
            if not line:
                return items
            try:
                items.append(parse(line))
            except TxnInputError as exc:
                die(EXIT_INVALID_INPUT, exc)

    cmps = section("compares:", parse_compare)
    success = section("success requests (get, put, del):", parse_op)
    failure = section("failure requests (get, put, del):", parse_op)
    resp = _rpc(lambda: c.txn(cmps, success, failure))
    ctl.show("txn", resp)


@cli.command("compaction")
@click.argument("args", nargs=-1)
@click.option("--physical", is_flag=True, help="Wait for the compaction to physically remove old revisions.")
@pass_ctl
def compaction_cmd(ctl: Ctl, args: tuple[str, ...], physical: bool) -> None:
    """Compact the event history up to REVISION."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "compaction command needs 1 argument")
    try:
        rev = int(args[0], 10)
    except ValueError:
        die(EXIT_ERROR, f'strconv.ParseInt: parsing "{args[0]}": invalid syntax')
    c = ctl.client()
    _rpc(lambda: c.compact(rev, physical=physical))
    click.echo(f"compacted revision {rev}")


# -- watch ------------------------------------------------------------------------------------
def _print_watch(ctl: Ctl, w, lock: threading.Lock) -> None:
    from securekv.client import cancel_error
    from securekv.client.errors import ClientError

    try:
        for resp in w:
            with lock:
                if resp.canceled:
                    sys.stderr.write(f"watch was canceled ({cancel_error(resp)})\n")
                    sys.stderr.flush()
                if not resp.events and not resp.canceled and not resp.compact_revision and resp.header.revision:
                    click.echo(f"progress notify: {resp.header.revision}")
                ctl.show("watch", resp)
    except ClientError as exc:
        with lock:
            sys.stderr.write(f"watch was canceled ({exc})\n")


def _watch_args(args: list[str], prefix: bool) -> tuple[str, str | None]:
    if not args:
        die(EXIT_BAD_ARGS, "bad number of arguments")
    if len(args) == 2 and prefix:
        die(EXIT_BAD_ARGS, "`range_end` and `--prefix` are mutually exclusive")
    if len(args) > 2:
        die(EXIT_BAD_ARGS, "bad number of arguments")
    return args[0], (args[1] if len(args) == 2 else None)


@cli.command("watch")
@click.argument("args", nargs=-1)
@click.option("-i", "--interactive", is_flag=True, help="Read 'watch ...' and 'progress' lines from stdin.")
@click.option("--prefix", is_flag=True, help="Watch a prefix.")
@click.option("--rev", default=0, type=int, help="Revision to start watching from.")
@click.option("--prev-kv", is_flag=True, help="Include the previous key-value pair in events.")
@pass_ctl
def watch_cmd(ctl: Ctl, args: tuple[str, ...], interactive: bool, prefix: bool, rev: int, prev_kv: bool) -> None:
    """Watch KEY [RANGE_END] (or a prefix) and print events until interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # like Go: die by the signal, no traceback
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    env_key, env_range = os.environ.get("ETCDCTL_WATCH_KEY", ""), os.environ.get("ETCDCTL_WATCH_RANGE_END", "")
    if not env_key and env_range:
        die(EXIT_BAD_ARGS, f'ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END="{env_range}"')
    c = ctl.client()
    ctl.printer  # validate -w before connecting
    lock = threading.Lock()
    if interactive:
        _watch_interactive(ctl, c, lock)
        return
    watch_args = list(args)
    if env_key:
        if watch_args:
            die(EXIT_BAD_ARGS, "bad number of arguments (found conflicting environment key)")
        watch_args = [env_key] + ([env_range] if env_range else [])
    key, end = _watch_args(watch_args, prefix)
    w = c.watch(os.fsencode(key), os.fsencode(end) if end is not None else None, prefix=prefix,
                start_revision=rev, prev_kv=prev_kv)
    _print_watch(ctl, w, lock)
    die(EXIT_INTERRUPTED, "watch is canceled by the server")


def _watch_interactive(ctl: Ctl, c, lock: threading.Lock) -> None:
    from securekv.client.txnparse import _flags, argify

    watches = []
    for raw in iter(sys.stdin.readline, ""):
        line = raw.rstrip("\n")
        args = argify(line)
        if not args:
            sys.stderr.write(f"Invalid command: {line} (watch and progress supported)\n")
            continue
        if args[0] == "watch":
            try:
                opts, pos = _flags(args[1:], {"prefix": False, "rev": True, "prev-kv": False, "interactive": False})
                start = int(str(opts.get("rev", 0)))
            except ValueError as exc:
                die(EXIT_BAD_ARGS, f"unknown flag: --{exc}")
            if not pos:
                sys.stderr.write(f"Invalid command {line} (command type or key is not provided)\n")
                continue
            if len(pos) == 2 and opts.get("prefix"):
                sys.stderr.write(f"Invalid command {line} (`range_end` and `--prefix` are mutually exclusive)\n")
                continue
            w = c.watch(os.fsencode(pos[0]), os.fsencode(pos[1]) if len(pos) > 1 else None,
                        prefix=bool(opts.get("prefix")), start_revision=start, prev_kv=bool(opts.get("prev-kv")))
            t = threading.Thread(target=_print_watch, args=(ctl, w, lock), daemon=True)
            t.start()
            watches.append(w)
        elif args[0] == "progress":
            for w in watches:
                w.request_progress()
        else:
            sys.stderr.write(f"Invalid command {line} (only support watch)\n")
    die(EXIT_INVALID_INPUT, "Error reading watch request line: EOF")


# -- leases -----------------------------------------------------------------------------------
@cli.group("lease", cls=SubGroup)
def lease_grp() -> None:
    """Lease commands."""


@lease_grp.command("grant")
@click.argument("args", nargs=-1)
@pass_ctl
def lease_grant(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Grant a lease with TTL seconds."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "lease grant command needs TTL argument")
    try:
        ttl = int(args[0], 10)
    except ValueError:
        die(EXIT_BAD_ARGS, f'bad TTL (strconv.ParseInt: parsing "{args[0]}": invalid syntax)')
    c = ctl.client()
    ctl.show("grant", _rpc(lambda: c.lease_grant(ttl), wrap="failed to grant lease"))


@lease_grp.command("revoke")
@click.argument("args", nargs=-1)
@pass_ctl
def lease_revoke(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Revoke a lease (its keys are deleted)."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "lease revoke command needs 1 argument")
    lid = _lease_id(args[0])
    c = ctl.client()
    ctl.show("revoke", lid, _rpc(lambda: c.lease_revoke(lid), wrap="failed to revoke lease"))


@lease_grp.command("timetolive")
@click.argument("args", nargs=-1)
@click.option("--keys", is_flag=True, help="Also list the keys attached to the lease.")
@pass_ctl
def lease_ttl(ctl: Ctl, args: tuple[str, ...], keys: bool) -> None:
    """Remaining TTL of a lease."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "lease timetolive command needs lease ID as argument")
    lid = _lease_id(args[0])
    c = ctl.client()
    ctl.show("timetolive", _rpc(lambda: c.lease_timetolive(lid, keys=keys), code=EXIT_BAD_CONNECTION), keys)


@lease_grp.command("list")
@pass_ctl
def lease_list(ctl: Ctl) -> None:
    """List all active leases."""
    c = ctl.client()
    ctl.show("leases", _rpc(c.leases, code=EXIT_BAD_CONNECTION))


@lease_grp.command("keep-alive")
@click.argument("args", nargs=-1)
@click.option("--once", is_flag=True, help="Renew once and exit.")
@pass_ctl
def lease_keepalive(ctl: Ctl, args: tuple[str, ...], once: bool) -> None:
    """Keep a lease alive (renew every TTL/3) until it is gone or interrupted."""
    from securekv.client.errors import ClientError

    if len(args) != 1:
        die(EXIT_BAD_ARGS, "lease keep-alive command needs lease ID as argument")
    lid = _lease_id(args[0])
    c = ctl.client()
    if once:
        ctl.show("keepalive", _rpc(lambda: c.lease_keepalive_once(lid), code=EXIT_BAD_CONNECTION))
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        for resp in c.lease_keepalive(lid):
            ctl.show("keepalive", resp)
    except ClientError:
        pass
    if ctl.write_out == "simple":
        click.echo(f"lease {lid:016x} expired or revoked.")


# -- lock / elect -----------------------------------------------------------------------------
class _Signals:
    """SIGINT/SIGTERM set an event instead of raising (the lock/elect commands clean up)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        signal.signal(signal.SIGINT, self._on)
        signal.signal(signal.SIGTERM, self._on)

    def _on(self, *_: object) -> None:
        self.event.set()


def _wait_future(fut, stop: threading.Event, session) -> Any:
    from securekv.client.errors import from_rpc_error

    while not fut.done():
        if stop.is_set():
            fut.cancel()
            die(EXIT_ERROR, "context canceled")
        if session.done.is_set():
            fut.cancel()
            die(EXIT_ERROR, "session expired")
        time.sleep(0.05)
    try:
        return fut.result()
    except Exception as exc:  # grpc.RpcError from the future
        import grpc

        if isinstance(exc, grpc.RpcError):
            die(EXIT_ERROR, from_rpc_error(exc))
        raise


def _get_resp(header, kv):
    from securekv.proto import rpc_pb2

    resp = rpc_pb2.RangeResponse(kvs=[kv], count=1)
    resp.header.CopyFrom(header)
    return resp


@cli.command("lock", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--ttl", default=10, type=int, help="Session (lease) TTL in seconds.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctl
def lock_cmd(ctl: Ctl, ttl: int, args: tuple[str, ...]) -> None:
    """Acquire LOCKNAME; print the owner key (or run a command while holding it)."""
    from securekv.client import Session
    from securekv.proto import v3lock_pb2

    args = tuple(a for i, a in enumerate(args) if not (a == "--" and i <= 1))
    if not args:
        die(EXIT_BAD_ARGS, "lock takes a lock name argument and an optional command to execute")
    sig = _Signals()
    c = ctl.client()
    session = _rpc(lambda: Session(c, ttl))
    try:
        fut = c.stubs().lock.Lock.future(v3lock_pb2.LockRequest(name=os.fsencode(args[0]), lease=session.lease),
                                         wait_for_ready=True)
        held = _wait_future(fut, sig.event, session)
        if len(args) > 1:
            env = {"ETCD_LOCK_KEY": held.key.decode("utf-8", "replace"),
                   "ETCD_LOCK_REV": str(held.header.revision), **os.environ}
            try:
                rc = subprocess.run(list(args[1:]), env=env).returncode
            except OSError as exc:
                rc = None
                err = f"exec: {exc}"
            _rpc(lambda: c.unlock(held.key))
            if rc is None:
                die(EXIT_ERROR, err)
            if rc != 0:
                die(EXIT_ERROR, f"exit status {rc}" if rc > 0 else f"signal: {signal.Signals(-rc).name}")
            return
        got = _rpc(lambda: c.get(held.key))
        if not got.kvs:
            die(EXIT_ERROR, "lock lost on init")
        ctl.show("get", got)
        while not sig.event.wait(0.1):
            if session.done.is_set():
                die(EXIT_ERROR, "session expired")
        _rpc(lambda: c.unlock(held.key))
    finally:
        session.close()


@cli.command("elect")
@click.argument("args", nargs=-1)
@click.option("-l", "--listen", is_flag=True, help="Observe the election instead of campaigning.")
@pass_ctl
def elect_cmd(ctl: Ctl, args: tuple[str, ...], listen: bool) -> None:
    """Campaign in ELECTION with PROPOSAL (print the leader key), or observe it with -l."""
    from securekv.client import Session
    from securekv.client.errors import ClientError
    from securekv.proto import v3election_pb2

    if len(args) not in (1, 2):
        die(EXIT_BAD_ARGS, "elect takes one election name argument and an optional proposal argument")
    if len(args) == 1 and not listen:
        die(EXIT_BAD_ARGS, "no proposal argument but -l not set")
    if len(args) == 2 and listen:
        die(EXIT_BAD_ARGS, "proposal given but -l is set")
    sig = _Signals()
    c = ctl.client()
    name = os.fsencode(args[0])
    if listen:
        obs = c.observe(name)
        lost = threading.Event()

        def run() -> None:
            try:
                for resp in obs:
                    ctl.show("get", _get_resp(resp.header, resp.kv))
            except ClientError:
                pass
            lost.set()

        threading.Thread(target=run, daemon=True).start()
        while not sig.event.wait(0.1):
            if lost.is_set():
                die(EXIT_ERROR, "elect: observer lost")
        obs.cancel()
        return
    session = _rpc(lambda: Session(c, 60))
    try:
        req = v3election_pb2.CampaignRequest(name=name, lease=session.lease, value=os.fsencode(args[1]))
        fut = c.stubs().election.Campaign.future(req, wait_for_ready=True)
        won = _wait_future(fut, sig.event, session)
        got = _rpc(lambda: c.get(won.leader.key))
        ctl.show("get", got)
        while not sig.event.wait(0.1):
            if session.done.is_set():
                die(EXIT_ERROR, "elect: session expired")
        _rpc(lambda: c.resign(won.leader))
    finally:
        session.close()


# -- cluster / maintenance --------------------------------------------------------------------
@cli.group("member", cls=SubGroup)
def member_grp() -> None:
    """Membership commands."""


@member_grp.command("list")
@pass_ctl
def member_list(ctl: Ctl) -> None:
    """List the cluster's members."""
    c = ctl.client()
    ctl.show("member_list", _rpc(c.member_list))


def _member_id(text: str) -> int:
    try:
        return _parse_uint_hex(text)
    except ValueError as exc:
        die(EXIT_BAD_ARGS, f"bad member ID arg ({exc}), expecting ID in Hex")


def _parse_uint_hex(text: str) -> int:
    """Go's strconv.ParseUint(text, 16, 64), with its error text."""
    if not text or any(ch not in "0123456789abcdefABCDEF" for ch in text):
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text, 16)
    if value >= 1 << 64:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def _sizing_guard(c: Any, force: bool, doing: str, learner: int | None = None) -> None:
    """etcd's sizing advice (server/sizing.py): one more voter that makes the count even or
    larger than 7 is refused unless --force (then the arithmetic is printed as a warning).
    ``learner``: promoting this member; anything but a known learner is left to the server's
    own answer (not found, not a learner)."""
    from securekv.server.sizing import advice

    members = _rpc(c.member_list).members
    if learner is not None and not any(m.ID == learner and m.isLearner for m in members):
        return
    voters = sum(1 for m in members if not m.isLearner) + 1
    text = advice(voters, growing=True)
    if text is None:
        return
    if not force:
        die(EXIT_ERROR, f"{doing} this voter gives {text}; pass --force to do it anyway")
    sys.stderr.write(f"warning: {text}\n")


@member_grp.command("add")
@click.argument("args", nargs=-1)
@click.option("--peer-urls", default="", help="Comma separated peer URLs for the new member.")
@click.option("--learner", is_flag=True, help="Add the member as a raft learner (non-voting).")
@click.option("--force", is_flag=True, help="Add a voter even when the voter count becomes even or exceeds 7.")
@pass_ctl
def member_add(ctl: Ctl, args: tuple[str, ...], peer_urls: str, learner: bool, force: bool) -> None:
    """Add a member NAME to the cluster."""
    if not args:
        die(EXIT_BAD_ARGS, "member name not provided")
    if len(args) > 1:
        hint = "".join(f", did you mean --peer-urls={a}" for a in args if a.lower().startswith("http"))
        die(EXIT_BAD_ARGS, "too many arguments" + hint)
    if not peer_urls:
        die(EXIT_BAD_ARGS, "member peer urls not provided")
    c = ctl.client()
    if not learner:
        _sizing_guard(c, force, "adding")
    resp = _rpc(lambda: c.member_add(peer_urls.split(","), learner=learner))
    ctl.show("member_add", resp, args[0], peer_urls)


@member_grp.command("remove")
@click.argument("args", nargs=-1)
@pass_ctl
def member_remove(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Remove the member with hex ID from the cluster."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "member ID is not provided")
    mid = _member_id(args[0])
    c = ctl.client()
    ctl.show("member_remove", mid, _rpc(lambda: c.member_remove(mid)))


@member_grp.command("update")
@click.argument("args", nargs=-1)
@click.option("--peer-urls", default="", help="Comma separated peer URLs for the updated member.")
@pass_ctl
def member_update(ctl: Ctl, args: tuple[str, ...], peer_urls: str) -> None:
    """Change the peer URLs of the member with hex ID."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "member ID is not provided")
    mid = _member_id(args[0])
    if not peer_urls:
        die(EXIT_BAD_ARGS, "member peer urls not provided")
    c = ctl.client()
    ctl.show("member_update", mid, _rpc(lambda: c.member_update(mid, peer_urls.split(","))))


@member_grp.command("promote")
@click.argument("args", nargs=-1)
@click.option("--force", is_flag=True, help="Promote even when the voter count becomes even or exceeds 7.")
@pass_ctl
def member_promote(ctl: Ctl, args: tuple[str, ...], force: bool) -> None:
    """Promote the learner with hex ID to a voting member."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "member ID is not provided")
    mid = _member_id(args[0])
    c = ctl.client()
    _sizing_guard(c, force, "promoting", learner=mid)
    ctl.show("member_promote", mid, _rpc(lambda: c.member_promote(mid)))


@cli.command("move-leader")
@click.argument("args", nargs=-1)
@pass_ctl
def move_leader_cmd(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Transfer leadership to the member with hex ID (sent to the endpoint that leads)."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "move-leader command needs 1 argument")
    try:
        target = _parse_uint_hex(args[0])
    except ValueError as exc:
        die(EXIT_BAD_ARGS, exc)
    c = ctl.client()
    leader_ep, leader_id = None, 0
    for ep in ctl.endpoints:
        st = _rpc(lambda: c.status(ep))
        if st.header.member_id == st.leader:
            leader_ep, leader_id = ep, st.leader
            break
    if leader_ep is None:
        die(EXIT_BAD_ARGS, f"no leader endpoint given at [{' '.join(ctl.endpoints)}]")
    resp = _rpc(lambda: c.move_leader(target, leader_ep))
    ctl.show("move_leader", leader_id, target, resp)


@cli.group("endpoint", cls=SubGroup)
def endpoint_grp() -> None:
    """Per-endpoint health, status and hash."""


@endpoint_grp.command("health")
@pass_ctl
def ep_health(ctl: Ctl) -> None:
    """Check each endpoint with a linearizable read."""
    from securekv.client.errors import ClientError
    from securekv.client.gofmt import duration
    from securekv.client.printer import Health

    ctl.printer
    results: list[Health | None] = [None] * len(ctl.endpoints)

    def check(i: int, ep: str) -> None:
        try:
            c = ctl.client([ep], timeout=ctl.command_timeout)
        except Die as exc:
            results[i] = Health(ep, False, "", str(exc.message))
            return
        start = time.monotonic()
        err = ""
        try:
            c.get("health")
        except ClientError as exc:
            if str(exc) != "etcdserver: permission denied":
                err = str(exc)
        took = duration(time.monotonic() - start)
        c.close()
        results[i] = Health(ep, not err, took, err)

    threads = [threading.Thread(target=check, args=(i, ep)) for i, ep in enumerate(ctl.endpoints)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=ctl.command_timeout + ctl.dial_timeout + 5)
    items = [h for h in results if h is not None]
    ctl.show("endpoint_health", items)
    if any(h.error for h in items) or len(items) != len(ctl.endpoints):
        die(EXIT_ERROR, "unhealthy cluster")


@endpoint_grp.command("status")
@pass_ctl
def ep_status(ctl: Ctl) -> None:
    """Status of each endpoint (version, db size, leader, raft term and index)."""
    from securekv.client.errors import ClientError
    from securekv.client.printer import EndpointStatus

    c = ctl.client()
    items, failed = [], False
    for ep in ctl.endpoints:
        try:
            items.append(EndpointStatus(ep, c.status(ep)))
        except ClientError as exc:
            failed = True
            sys.stderr.write(f"Failed to get the status of endpoint {ep} ({exc})\n")
    ctl.show("endpoint_status", items)
    if failed:
        die(EXIT_ERROR, None)


@endpoint_grp.command("certs")
@pass_ctl
def ep_certs(ctl: Ctl) -> None:
    """Certificates and CRLs each endpoint serves with, and how long until they expire (securekv)."""
    import json
    import time

    from securekv.client.errors import ClientError
    from securekv.proto import join_pb2

    c = ctl.client()
    rows, failed = [], False
    for ep in ctl.endpoints:
        try:
            resp = c.unary("/securekvpb.Cluster/CertStatus", join_pb2.CertStatusRequest(), join_pb2.CertStatusResponse, ep)
        except ClientError as exc:
            failed = True
            sys.stderr.write(f"Failed to get the certificates of endpoint {ep} ({exc})\n")
            continue
        for info in resp.certs:
            rows.append((ep, resp.name, info))
    now = time.time()
    if ctl.write_out == "json":
        click.echo(json.dumps([{"endpoint": ep, "member": name, "role": i.role, "file": i.file, "subject": i.subject,
                                "issuer": i.issuer, "serial": i.serial, "not_after": i.not_after_unix,
                                "remaining_seconds": int(i.not_after_unix - now) if i.not_after_unix else None,
                                **({"error": i.error} if i.error else {})} for ep, name, i in rows]))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("ENDPOINT", "MEMBER", "ROLE", "SUBJECT", "EXPIRES", "REMAINING", box=None)
        for ep, name, i in rows:
            if i.error:
                table.add_row(ep, name, i.role, f"error: {i.error}", "", "")
                continue
            left = i.not_after_unix - now
            remaining = ("expired" if left < 0 else f"{int(left // 86400)}d{int(left % 86400 // 3600)}h") \
                if i.not_after_unix else "-"
            table.add_row(ep, name, i.role, i.subject or i.issuer,
                          time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(i.not_after_unix)) if i.not_after_unix
                          else "-", remaining)
        Console(width=200, highlight=False).print(table)
    if failed:
        die(EXIT_ERROR, None)


@endpoint_grp.command("hashkv")
@click.option("--rev", default=0, type=int, help="Maximum revision to hash (default: all).")
@pass_ctl
def ep_hashkv(ctl: Ctl, rev: int) -> None:
    """KV history hash of each endpoint."""
    from securekv.client.errors import ClientError
    from securekv.client.printer import EndpointHash

    c = ctl.client()
    items, last = [], None
    for ep in ctl.endpoints:
        try:
            items.append(EndpointHash(ep, c.hashkv(ep, rev)))
        except ClientError as exc:
            last = exc
            sys.stderr.write(f"Failed to get the hash of endpoint {ep} ({exc})\n")
    ctl.show("endpoint_hashkv", items)
    if last is not None:
        die(EXIT_ERROR, last)


@cli.command("defrag")
@pass_ctl
def defrag_cmd(ctl: Ctl) -> None:
    """Defragment the storage of each endpoint."""
    from securekv.client.errors import ClientError

    c = ctl.client()
    failures = 0
    for ep in ctl.endpoints:
        try:
            c.defragment(ep)
            click.echo(f"Finished defragmenting etcd member[{ep}]")
        except ClientError as exc:
            failures += 1
            sys.stderr.write(f"Failed to defragment etcd member[{ep}] ({exc})\n")
    if failures:
        die(EXIT_ERROR, None)


@cli.group("alarm", cls=SubGroup)
def alarm_grp() -> None:
    """Alarm commands."""


@alarm_grp.command("list")
@click.argument("args", nargs=-1)
@pass_ctl
def alarm_list(ctl: Ctl, args: tuple[str, ...]) -> None:
    """List active alarms."""
    if args:
        die(EXIT_BAD_ARGS, "alarm list command accepts no arguments")
    c = ctl.client()
    ctl.show("alarm", _rpc(c.alarm_list))


@alarm_grp.command("disarm")
@click.argument("args", nargs=-1)
@pass_ctl
def alarm_disarm(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Disarm all alarms."""
    if args:
        die(EXIT_BAD_ARGS, "alarm disarm command accepts no arguments")
    c = ctl.client()
    ctl.show("alarm", _rpc(c.alarm_disarm))


@cli.command("version")
def version_cmd() -> None:
    """Print the client version and the etcd API version it speaks."""
    click.echo(f"securekv ctl version: {__version__}")
    click.echo("API version: 3.4")


# The snapshot commands live in their own module (encryption, keys); imported last because it
# takes die/Ctl/... from this one.
from securekv.cli.snapshot_cmd import snapshot_grp  # noqa: E402

cli.add_command(snapshot_grp)

# The auth, user and role commands live in their own module; importing it registers them.
from securekv.cli import ctl_auth as _ctl_auth  # noqa: E402,F401
