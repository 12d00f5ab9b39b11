"""``prepay console user add|remove|list``: who may log in to the operator console.

The users live in the file the site names (``console.users_file``), with scrypt password hashes
(`gateway.console.users`). The password is read from the terminal without echo, or from stdin
with ``--password-stdin`` (scripts), or made up and printed once with ``--generate``.

Exit codes: 0 done, 1 refused (the reason is printed, nothing changed), 2 usage.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from gateway.cli.common import EXIT_INVALID, EXIT_OK, Commands, site_of
from gateway.console.users import (
    MIN_PASSWORD,
    Role,
    UsersFileError,
    add_user,
    load_users,
    new_password,
    remove_user,
)


def _users_file(args: argparse.Namespace) -> Path | int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    if site.config.console is None:
        print(f"{args.config}: the site file has no console: section", file=sys.stderr)
        return EXIT_INVALID
    return site.resolve(site.config.console.users_file)


def _password(args: argparse.Namespace) -> str:
    if args.generate:
        return new_password()
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name} (at least {MIN_PASSWORD} characters): ")
    if getpass.getpass("again: ") != first:
        raise UsersFileError("the two passwords differ")
    return first


def _add(args: argparse.Namespace) -> int:
    path = _users_file(args)
    if isinstance(path, int):
        return path
    try:
        password = _password(args)
        user = add_user(path, args.name, Role(args.role), password)
    except UsersFileError as exc:
        print(f"prepay console user add: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"console user {user.name} ({user.role.value}) saved in {path}")
    if args.generate:
        print(f"password: {password}")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    path = _users_file(args)
    if isinstance(path, int):
        return path
    try:
        remove_user(path, args.name)
    except UsersFileError as exc:
        print(f"prepay console user remove: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"console user {args.name} removed from {path}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    path = _users_file(args)
    if isinstance(path, int):
        return path
    try:
        users = load_users(path)
    except UsersFileError as exc:
        print(f"prepay console user list: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for user in sorted(users.values(), key=lambda u: u.name):
        print(f"{user.name}\t{user.role.value}")
    return EXIT_OK


def register(commands: Commands) -> None:
    console = commands.add_parser("console", help="the operator console: its users")
    group = console.add_subparsers(dest="console_command", required=True)
    user = group.add_parser("user", help="add, remove or list the console's users")
    users = user.add_subparsers(dest="console_user_command", required=True)

    add = users.add_parser("add", help="add a user (or set a user's role and password)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", choices=[r.value for r in Role], required=True)
    source = add.add_mutually_exclusive_group()
    source.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    source.add_argument("--generate", action="store_true", help="make one up and print it")
    add.set_defaults(func=_add)

    remove = users.add_parser("remove", help="remove a user")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=_remove)

    listing = users.add_parser("list", help="the users and their roles")
    listing.set_defaults(func=_list)

    for sub in (add, remove, listing):
        sub.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="the site")
