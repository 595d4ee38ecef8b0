"""``securekv ctl auth|user|role``: etcdctl 3.4's auth commands, arguments, output and exit codes.

Registered on the ``ctl`` group by ``ctl_cmd`` (one import line there). Like etcdctl, the
simple format is each command's own sentence, ``-w json`` prints the response message and
``-w table`` is refused (exit 4) after the call; ``auth enable/disable`` print their line in
every format. Passwords come from ``name:password``, ``--new-user-password``, a prompt (twice,
as etcdctl asks), or with ``--interactive=false`` one word from stdin.
"""

from __future__ import annotations

import sys

import click

from securekv.cli.ctl_cmd import EXIT_BAD_ARGS, EXIT_ERROR, Ctl, SubGroup, _rpc, cli, die, pass_ctl

ERR_ROOT_ROLE = "etcdserver: root user does not have root role"
PERM_TYPES = {"READ": 0, "WRITE": 1, "READWRITE": 2}


def _go_bool(value: str, flag: str) -> bool:
    """A cobra bool flag's value (``--interactive``, ``--interactive=false``)."""
    text = value.strip().lower()
    if text in ("1", "t", "true"):
        return True
    if text in ("0", "f", "false"):
        return False
    die(EXIT_ERROR, f'invalid argument "{value}" for "--{flag}" flag: strconv.ParseBool: parsing "{value}": '
                    "invalid syntax")


def _interactive_option(help_text: str):  # noqa: ANN202 - a click decorator
    return click.option("--interactive", "interactive", is_flag=False, flag_value="true", default="true",
                        help=help_text)


def _ask(prompt: str) -> str:
    """speakeasy.Ask: the prompt, then one line (no echo on a terminal)."""
    if sys.stdin.isatty():
        import getpass

        try:
            return getpass.getpass(prompt, stream=sys.stdout)
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return ""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return line[:-1] if line.endswith("\n") else line


def _read_password_interactive(name: str) -> str:
    first = _ask(f"Password of {name}: ")
    if not first:
        die(EXIT_BAD_ARGS, "empty password")
    second = _ask(f"Type password of {name} again for confirmation: ")
    if first != second:
        die(EXIT_BAD_ARGS, "given passwords are different")
    return first


def _scan_word() -> str:
    """Go's ``fmt.Scanf("%s")``: the first whitespace-separated word of stdin ("" at EOF)."""
    data = sys.stdin.readline()
    parts = data.split()
    return parts[0] if parts else ""


# -- auth ----------------------------------------------------------------------------------
@cli.group("auth", cls=SubGroup)
def auth_grp() -> None:
    """Enable or disable authentication."""


@auth_grp.command("enable")
@click.argument("args", nargs=-1)
@pass_ctl
def auth_enable(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Enables authentication (creating role root and granting it to user root if needed)."""
    from securekv.client.errors import ClientError

    if args:
        die(EXIT_BAD_ARGS, "auth enable command does not accept any arguments")
    c = ctl.client()
    while True:
        try:
            c.auth_enable()
            break
        except ClientError as exc:
            if exc.message != ERR_ROOT_ROLE:
                die(EXIT_ERROR, exc)
        # etcdctl's repair: the root role is created and granted, then enable is tried again.
        _rpc(lambda: c.role_add("root"))
        _rpc(lambda: c.user_grant_role("root", "root"))
    click.echo("Authentication Enabled")


@auth_grp.command("disable")
@click.argument("args", nargs=-1)
@pass_ctl
def auth_disable(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Disables authentication."""
    if args:
        die(EXIT_BAD_ARGS, "auth disable command does not accept any arguments")
    c = ctl.client()
    _rpc(c.auth_disable)
    click.echo("Authentication Disabled")


# -- user ----------------------------------------------------------------------------------
@cli.group("user", cls=SubGroup)
def user_grp() -> None:
    """User related commands."""


@user_grp.command("add")
@click.argument("args", nargs=-1)
@_interactive_option("Read password from stdin instead of interactive terminal")
@click.option("--new-user-password", default="", help="Supply password from the command line flag")
@click.option("--no-password", is_flag=True, help="Create a user without password (CN based auth only)")
@pass_ctl
def user_add(ctl: Ctl, args: tuple[str, ...], interactive: str, new_user_password: str, no_password: bool) -> None:
    """Adds a new user (NAME or NAME:PASSWORD)."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "user add command requires user name as its argument")
    ask = _go_bool(interactive, "interactive")
    password = ""
    if no_password:
        user = args[0]
    elif new_user_password:
        user, password = args[0], new_user_password
    else:
        user, sep, given = args[0].partition(":")
        if sep:
            password = given
            if not user:
                die(EXIT_BAD_ARGS, "empty user name is not allowed")
        else:
            password = _read_password_interactive(user) if ask else _scan_word()
    c = ctl.client()
    resp = _rpc(lambda: c.user_add(user, password, no_password=no_password))
    ctl.show("user_add", user, resp)


@user_grp.command("delete")
@click.argument("args", nargs=-1)
@pass_ctl
def user_delete(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Deletes a user."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "user delete command requires user name as its argument")
    c = ctl.client()
    ctl.show("user_delete", args[0], _rpc(lambda: c.user_delete(args[0])))


@user_grp.command("get")
@click.argument("args", nargs=-1)
@click.option("--detail", is_flag=True, help="Show permissions of roles granted to the user")
@pass_ctl
def user_get(ctl: Ctl, args: tuple[str, ...], detail: bool) -> None:
    """Gets detailed information of a user."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "user get command requires user name as its argument")
    name = args[0]
    c = ctl.client()
    resp = _rpc(lambda: c.user_get(name))
    if not detail:
        ctl.show("user_get", name, resp)
        return
    click.echo(f"User: {name}")
    for role in resp.roles:
        click.echo("")
        ctl.show("role_get", role, _rpc(lambda r=role: c.role_get(r)))


@user_grp.command("list")
@click.argument("args", nargs=-1)
@pass_ctl
def user_list(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Lists all users."""
    if args:
        die(EXIT_BAD_ARGS, "user list command requires no arguments")
    c = ctl.client()
    ctl.show("user_list", _rpc(c.user_list))


@user_grp.command("passwd")
@click.argument("args", nargs=-1)
@_interactive_option("If true, read password from stdin instead of interactive terminal")
@pass_ctl
def user_passwd(ctl: Ctl, args: tuple[str, ...], interactive: str) -> None:
    """Changes password of user."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "user passwd command requires user name as its argument")
    password = _read_password_interactive(args[0]) if _go_bool(interactive, "interactive") else _scan_word()
    c = ctl.client()
    ctl.show("user_change_password", _rpc(lambda: c.user_change_password(args[0], password)))


@user_grp.command("grant-role")
@click.argument("args", nargs=-1)
@pass_ctl
def user_grant_role(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Grants a role to a user."""
    if len(args) != 2:
        die(EXIT_BAD_ARGS, "user grant command requires user name and role name as its argument")
    c = ctl.client()
    ctl.show("user_grant_role", args[0], args[1], _rpc(lambda: c.user_grant_role(args[0], args[1])))


@user_grp.command("revoke-role")
@click.argument("args", nargs=-1)
@pass_ctl
def user_revoke_role(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Revokes a role from a user."""
    if len(args) != 2:
        die(EXIT_BAD_ARGS, "user revoke-role requires user name and role name as its argument")
    c = ctl.client()
    ctl.show("user_revoke_role", args[0], args[1], _rpc(lambda: c.user_revoke_role(args[0], args[1])))


# -- role ----------------------------------------------------------------------------------
@cli.group("role", cls=SubGroup)
def role_grp() -> None:
    """Role related commands."""


@role_grp.command("add")
@click.argument("args", nargs=-1)
@pass_ctl
def role_add(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Adds a new role."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "role add command requires role name as its argument")
    c = ctl.client()
    ctl.show("role_add", args[0], _rpc(lambda: c.role_add(args[0])))


@role_grp.command("delete")
@click.argument("args", nargs=-1)
@pass_ctl
def role_delete(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Deletes a role."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "role delete command requires role name as its argument")
    c = ctl.client()
    ctl.show("role_delete", args[0], _rpc(lambda: c.role_delete(args[0])))


@role_grp.command("get")
@click.argument("args", nargs=-1)
@pass_ctl
def role_get(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Gets detailed information of a role."""
    if len(args) != 1:
        die(EXIT_BAD_ARGS, "role get command requires role name as its argument")
    c = ctl.client()
    ctl.show("role_get", args[0], _rpc(lambda: c.role_get(args[0])))


@role_grp.command("list")
@click.argument("args", nargs=-1)
@pass_ctl
def role_list(ctl: Ctl, args: tuple[str, ...]) -> None:
    """Lists all roles."""
    if args:
        die(EXIT_BAD_ARGS, "role list command requires no arguments")
    c = ctl.client()
    ctl.show("role_list", _rpc(c.role_list))


def _perm_range(args: tuple[str, ...], prefix: bool, from_key: bool) -> tuple[bytes, bytes]:
    """etcdctl's permRange/rangeEndFromPermFlags (an empty key means "\\0", i.e. all keys)."""
    from securekv.client.printer import _prefix_end

    key = args[0].encode("utf-8", "surrogateescape")
    if not key:
        if prefix and from_key:
            die(EXIT_BAD_ARGS, "--from-key and --prefix flags are mutually exclusive")
        return b"\0", (b"\0" if prefix or from_key else b"")
    if len(args) == 1:
        if prefix:
            if from_key:
                die(EXIT_BAD_ARGS, "--from-key and --prefix flags are mutually exclusive")
            return key, _prefix_end(key)
        return key, (b"\0" if from_key else b"")
    if prefix:
        die(EXIT_BAD_ARGS, "unexpected endkey argument with --prefix flag")
    if from_key:
        die(EXIT_BAD_ARGS, "unexpected endkey argument with --from-key flag")
    return key, args[1].encode("utf-8", "surrogateescape")


@role_grp.command("grant-permission")
@click.argument("args", nargs=-1)
@click.option("--prefix", is_flag=True, help="grant a prefix permission")
@click.option("--from-key", is_flag=True,
              help="grant a permission of keys that are greater than or equal to the given key using byte compare")
@pass_ctl
def role_grant_permission(ctl: Ctl, args: tuple[str, ...], prefix: bool, from_key: bool) -> None:
    """Grants a key to a role: ROLE read|write|readwrite KEY [ENDKEY]."""
    if len(args) < 3:
        die(EXIT_BAD_ARGS, "role grant command requires role name, permission type, and key [endkey] as its argument")
    kind = PERM_TYPES.get(args[1].upper())
    if kind is None:
        die(EXIT_BAD_ARGS, f"invalid permission type: {args[1]}")
    key, end = _perm_range(args[2:], prefix, from_key)
    c = ctl.client()
    ctl.show("role_grant_permission", args[0], _rpc(lambda: c.role_grant_permission(args[0], key, end, kind)))


@role_grp.command("revoke-permission")
@click.argument("args", nargs=-1)
@click.option("--prefix", is_flag=True, help="revoke a prefix permission")
@click.option("--from-key", is_flag=True,
              help="revoke a permission of keys that are greater than or equal to the given key using byte compare")
@pass_ctl
def role_revoke_permission(ctl: Ctl, args: tuple[str, ...], prefix: bool, from_key: bool) -> None:
    """Revokes a key from a role: ROLE KEY [ENDKEY]."""
    if len(args) < 2:
        die(EXIT_BAD_ARGS, "role revoke-permission command requires role name and key [endkey] as its argument")
    key, end = _perm_range(args[1:], prefix, from_key)
    c = ctl.client()
    resp = _rpc(lambda: c.role_revoke_permission(args[0], key, end))
    ctl.show("role_revoke_permission", args[0], args[1].encode("utf-8", "surrogateescape"), end, resp)
