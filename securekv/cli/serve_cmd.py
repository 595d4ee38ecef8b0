"""``securekv serve``: run one member with etcd's flag names (flags > env > config file)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path

import click

from securekv.config.options import BOOL, DURATION, IGNORED, OPTIONS, REFUSED, Option


def _support_note(option: Option) -> str:
    if option.support == IGNORED:
        return " [no effect in securekv]"
    if option.support == REFUSED:
        return " [refused unless left at etcd's default]"
    return ""


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`etcd --version`'s lines, with securekv's own version first."""
    if not value or ctx.resilient_parsing:
        return
    import platform

    from securekv import __version__
    from securekv.server.etcdserver import CLUSTER_VERSION, VERSION

    click.echo(f"securekv Version: {__version__}\netcd Version: {VERSION}\nAPI Version: {CLUSTER_VERSION[:3]}\n"
               f"Python Version: {platform.python_version()}\n"
               f"OS/Arch: {platform.system().lower()}/{platform.machine()}")
    ctx.exit()


def _options(fn):
    for option in reversed(OPTIONS):
        decl = f"--{option.flag}"
        env_help = f" [env SECUREKV_{option.env_suffix} / ETCD_{option.env_suffix}]"
        if option.kind == BOOL:
            fn = click.option(decl, option.field, default=None, is_flag=False, flag_value="true",
                              metavar="[BOOL]", help=option.help + _support_note(option) + env_help)(fn)
        else:
            metavar = "DURATION" if option.kind == DURATION else option.kind.upper()
            fn = click.option(decl, option.field, default=None, metavar=metavar,
                              help=option.help + _support_note(option) + env_help)(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config-file", default=None, help="YAML file with etcd's config-file keys [env ETCD_CONFIG_FILE].")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the version and exit.")
@_options
def cli(config_file: str | None, **flags: object) -> None:
    """Run a securekv member: etcd's v3 API over mutual TLS.

    With no arguments: data in ./default.securekv, https://127.0.0.1:2379, a local CA plus
    server and client certificates created under the data dir, client certificates required.
    """
    from securekv.config import resolve
    from securekv.errors import CorruptionError, DiskFullError, UsageError

    try:
        config = resolve(flags, os.environ, config_file)
    except UsageError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        _setup_logging(config)
    except UsageError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in config.warnings:
        logging.getLogger("securekv.config").warning(warning)
    if config.insecure_allow_plaintext:
        logging.getLogger("securekv").warning(
            "!!! --insecure-allow-plaintext is set: http:// listeners carry data and credentials "
            "UNENCRYPTED and UNAUTHENTICATED. Never use this outside a test. !!!"
        )
    import trio

    # The trio thread answers every client; worker threads (WAL fsync, sqlite commits) hold the
    # GIL only briefly between C calls. A short switch interval bounds how long the trio thread
    # can wait for the GIL behind them (Python's default 5 ms showed in sequential latency).
    sys.setswitchinterval(0.0005)

    try:
        try:
            trio.run(_main, config)
        except BaseExceptionGroup as group:  # trio's nurseries wrap what their tasks raised
            raise _sole_error(group) from None
    except UsageError as exc:
        raise click.ClickException(str(exc)) from None
    except CorruptionError as exc:
        _fail(f"Error: data corruption: {exc}", 2)
    except DiskFullError as exc:
        _fail(f"Error: disk full: {exc}", 3)
    except KeyboardInterrupt:
        pass


def _fail(message: str, code: int) -> None:
    """Say why on stderr, then exit with ``code``. The exit code is what systemd and scripts act
    on, so it must not depend on the message getting out: with a full disk, stderr is often a
    file on that same disk (found by the full-disk fault test: a failed write of this line made
    the member exit 1 instead of 3)."""
    try:
        click.echo(message, err=True)
    except OSError:
        pass
    sys.exit(code)


def _sole_error(group: BaseExceptionGroup) -> BaseException:
    """The error that stopped the member, out of the exception groups trio's nurseries raise.

    An operator's mistake (UsageError) or a corrupt data dir is reported on its own even when
    stopping the other tasks added cancellations around it; anything else stays the group.
    """
    import errno

    from securekv.errors import CorruptionError, DiskFullError, UsageError

    full, _ = group.split(lambda e: isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
    if full is not None:  # a write outside the WAL/backend (e.g. a received snapshot's temp file)
        first: BaseException = full
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        return DiskFullError(f"{getattr(first, 'filename', None) or 'data dir'}: {first}")
    for kind in (UsageError, CorruptionError, DiskFullError, KeyboardInterrupt):
        matched, _ = group.split(kind)
        if matched is not None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf
    return group


def _tune_gc() -> None:
    """Called once the member serves. Everything alive now (modules, the loaded key index)
    lives as long as the process: freeze it out of the cyclic collector's full scans. And
    collect the young generation less often: a large range creates a short-lived object per
    key, and each collection would otherwise walk every tracked object again (measured: a third
    of a 100,000-key range's CPU time)."""
    import gc

    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


async def _main(config) -> None:
    import trio

    from securekv.server.run import serve

    def announce(started) -> None:
        _tune_gc()
        lines = [f"securekv: member {started.member_id:x} (cluster {started.cluster_id:x}) serving clients on "
                 + ", ".join(started.client_urls)]
        if started.metrics_urls:
            lines.append("securekv: metrics on " + ", ".join(started.metrics_urls))
        text = "\n".join(lines) + "\n"
        if started.embedded is not None:
            text += connect_hint(started, config.data_dir)
        sys.stdout.write(text)
        sys.stdout.flush()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, config, announce=announce, on_fatal=_exit_if_stop_hangs))

            async def stop_on_signal() -> None:
                async for signum in signals:
                    from securekv.server.etcdlog import event

                    name = {signal.SIGTERM: "terminated", signal.SIGINT: "interrupt"}.get(signum, str(signum))
                    event(logging.getLogger("securekv.osutil"), logging.INFO, "received signal; shutting down",
                          capnslog=f"received {name} signal, shutting down...", pkg="pkg/osutil", signal=name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)


FATAL_STOP_SECONDS = 15.0


def _exit_if_stop_hangs(exc: BaseException) -> None:
    """The WAL or the backend failed: the member stops in an orderly way, but it must be gone
    within FATAL_STOP_SECONDS whatever a task is waiting for, so systemd (Restart=on-failure)
    starts it again instead of a half-dead member holding its ports. (The fault suite once saw
    a leader whose stop never completed after its disk filled up.)"""
    from securekv.errors import CorruptionError, DiskFullError

    code = 3 if isinstance(exc, DiskFullError) else 2 if isinstance(exc, CorruptionError) else 1

    def give_up(signum: int, frame: object) -> None:
        try:
            sys.stderr.write(f"Error: {exc}\nsecurekv: the member did not stop within {FATAL_STOP_SECONDS:.0f}s "
                             "after this error; exiting now\n")
            sys.stderr.flush()
        except OSError:
            pass  # stderr on the full disk: the exit code still says why
        os._exit(code)

    signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, FATAL_STOP_SECONDS)


def _setup_logging(config) -> None:
    """--logger/--log-outputs/--log-level (server/etcdlog.py: etcd's zap and capnslog formats)."""
    from securekv.server.etcdlog import setup

    setup(config.logger, config.log_level, config.log_outputs)


def connect_hint(started, data_dir: str) -> str:
    """The exact command lines to reach an embedded-default member."""
    local = started.embedded
    endpoint = started.client_urls[0]
    ca, (cert, key) = Path(local.ca_path).resolve(), [Path(p).resolve() for p in local.clients["root"]]
    tls = f"--endpoints {endpoint} --cacert {ca} --cert {cert} --key {key}"
    return (
        f"securekv: embedded default: local CA and certificates in {Path(data_dir).resolve() / 'pki'}\n"
        f"securekv: client certificates are required; connect as the local operator (CN root) with:\n"
        f"  ETCDCTL_API=3 etcdctl {tls} endpoint health\n"
        f"  securekv ctl {tls} endpoint health\n"
    )
