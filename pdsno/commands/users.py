"""`pdsno user ...` and `pdsno session ...`: operator accounts and their sessions.

A password is never an argument (it would land in shell history and the
process list): it is read from standard input when that is not a terminal
(`printf '%s\\n' "$PW" | pdsno user create ...`), else prompted for twice.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from pdsno.auth import users
from pdsno.auth.permissions import ROLES
from pdsno.errors import PdsnoError


def read_password() -> str:
    """A new password from standard input, or typed twice at the terminal."""
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise PdsnoError("no password on standard input")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise PdsnoError("the two passwords differ; nothing changed")
    return users.check_password(password)


def _engine(args: argparse.Namespace):
    from pdsno.cli import engine_for  # pdsno.cli loads this module

    return engine_for(args)


def cmd_user_create(args: argparse.Namespace) -> int:
    password = read_password()
    with _engine(args).begin() as conn:
        users.create(
            conn, username=args.username, password=password, role=args.role, region=args.region
        )
    where = f", region {args.region}" if args.region else ""
    print(f"created user {args.username} ({args.role}{where})")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    password = read_password()
    with _engine(args).begin() as conn:
        ended = users.set_password(conn, args.username, password)
    print(f"password of {args.username} changed; {ended} session(s) ended")
    return 0


def cmd_user_unlock(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        users.unlock(conn, args.username)
    print(f"unlocked {args.username}")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        ended = users.disable(conn, args.username)
    print(f"disabled {args.username}; {ended} session(s) ended")
    return 0


def cmd_user_enable(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        users.enable(conn, args.username)
    print(f"enabled {args.username}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    with _engine(args).connect() as conn:
        for user in users.list_users(conn):
            print(json.dumps(user))
    return 0


def cmd_session_revoke(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        ended = users.revoke_sessions(conn, args.username)
    print(f"ended {ended} session(s) of {args.username}")
    return 0


def register(group, command) -> None:
    user = group("user", "operator accounts (log in at POST /api/v1/auth/login)")
    create = command(
        user, "create", cmd_user_create, "create a user; the password comes from stdin or a prompt"
    )
    create.add_argument("--username", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--region", help="bind the user to one region")
    passwd = command(
        user, "passwd", cmd_user_passwd, "set a user's password (stdin or prompt); ends sessions"
    )
    passwd.add_argument("--username", required=True)
    unlock = command(user, "unlock", cmd_user_unlock, "lift a lockout after failed logins")
    unlock.add_argument("--username", required=True)
    disable = command(user, "disable", cmd_user_disable, "disable a user and end their sessions")
    disable.add_argument("--username", required=True)
    enable = command(user, "enable", cmd_user_enable, "let a disabled user log in again")
    enable.add_argument("--username", required=True)
    command(user, "list", cmd_user_list, "list users as JSON lines (never password hashes)")

    session = group("session", "operator sessions")
    revoke = command(session, "revoke", cmd_session_revoke, "end every session of a user")
    revoke.add_argument("--username", required=True)
