"""`pdsno secrets`: secrets encrypted under the master key, and rotating that key.

Keys come from the environment only, never from the command line:
PDSNO_MASTER_KEY (the current key) and, for `rotate`, PDSNO_NEW_MASTER_KEY.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from sqlalchemy import select

from pdsno.cli import engine_for
from pdsno.clock import as_utc, utcnow
from pdsno.config import load_settings
from pdsno.errors import PdsnoError
from pdsno.nib.schema import secrets as secrets_table
from pdsno.security.secrets import (
    MASTER_KEY_ENV,
    NEW_MASTER_KEY_ENV,
    SecretStore,
    check_master_key,
    current_key_version,
    master_key_from_env,
)

ACTOR = "cli"


def _store(args: argparse.Namespace) -> SecretStore:
    return SecretStore(engine_for(args), master_key_from_env(), actor=ACTOR)


def cmd_put(args: argparse.Namespace) -> int:
    store = _store(args)  # refuse a missing or wrong key before asking for the value
    store.check()
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {args.secret_id}: ").encode()
    else:
        value = sys.stdin.buffer.read()
    if not value:
        raise PdsnoError("No value on stdin: pipe the secret in, e.g. `printf %s VALUE | ...`")
    version = store.put(args.secret_id, value)
    print(f"stored {args.secret_id} under master key version {version}", file=sys.stderr)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    value = _store(args).get(args.secret_id)
    sys.stdout.buffer.write(value)
    sys.stdout.buffer.flush()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with engine_for(args).connect() as conn:
        rows = conn.execute(select(secrets_table).order_by(secrets_table.c.secret_id)).all()
    for row in rows:
        print(
            json.dumps(
                {
                    "secret_id": row.secret_id,
                    "key_version": row.key_version,
                    "created_at": as_utc(row.created_at).isoformat(timespec="seconds"),
                    "updated_at": as_utc(row.updated_at).isoformat(timespec="seconds"),
                }
            )
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The current key version, its age, and whether the rotation policy wants a new key.

    Works without PDSNO_MASTER_KEY (for monitoring); when it is set, it is checked.
    """
    rotation_days = load_settings(args.config, db_url=args.db_url).secrets.rotation_days
    engine = engine_for(args)
    with engine.connect() as conn:
        current = current_key_version(conn)
        count = len(conn.execute(select(secrets_table.c.secret_id)).all())
    status: dict[str, Any] = {
        "key_version": current.version if current else None,
        "key_fingerprint": current.fingerprint[:16] if current else None,
        "secrets": count,
        "rotation_days": rotation_days,
    }
    if current is None:
        status.update(age_days=None, rotation_due=False)
    else:
        age_days = (utcnow() - current.created_at).total_seconds() / 86400
        status.update(
            created_at=current.created_at.isoformat(timespec="seconds"),
            age_days=round(age_days, 1),
            rotation_due=age_days >= rotation_days,
        )
    key_ok = True
    try:
        key = master_key_from_env()
    except PdsnoError:
        status["key_check"] = f"not checked: {MASTER_KEY_ENV} is not set or not a key"
    else:
        try:
            with engine.connect() as conn:
                check_master_key(conn, key)
            status["key_check"] = f"{MASTER_KEY_ENV} is the current key"
        except PdsnoError as error:
            status["key_check"] = str(error)
            key_ok = False
    print(json.dumps(status))
    if current is None:
        print(
            f"no master key registered yet: the first `pdsno secrets put` registers "
            f"{MASTER_KEY_ENV} as version 1",
            file=sys.stderr,
        )
    elif status["rotation_due"]:
        print(
            f"warning: master key version {current.version} is {status['age_days']} days old; "
            f"the policy rotates it every {rotation_days} days: set {NEW_MASTER_KEY_ENV} to a "
            "new key and run `pdsno secrets rotate` (docs/secrets-and-backups.md)",
            file=sys.stderr,
        )
    if not key_ok:
        print(f"error: {status['key_check']}", file=sys.stderr)
        return 1
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    store = _store(args)
    new_key = master_key_from_env(NEW_MASTER_KEY_ENV)
    result = store.rotate(new_key)
    if result.already_done:
        print(
            f"already rotated: the secrets are under key version {result.to_version}. "
            f"Set {MASTER_KEY_ENV} to the new key and unset {NEW_MASTER_KEY_ENV}."
        )
        return 0
    print(
        f"rotated {result.secrets} secrets from master key version {result.from_version} to "
        f"{result.to_version}. Now set {MASTER_KEY_ENV} to the new key everywhere, unset "
        f"{NEW_MASTER_KEY_ENV}, and keep the old key as long as backups made under it are kept."
    )
    return 0


def register(group, command) -> None:  # type: ignore[no-untyped-def]
    secrets = group("secrets", f"secrets encrypted under the master key ({MASTER_KEY_ENV})")
    put = command(
        secrets, "put", cmd_put, "store or replace a secret; the value is read from stdin"
    )
    put.add_argument("secret_id")
    get = command(secrets, "get", cmd_get, "write a secret's value to stdout")
    get.add_argument("secret_id")
    command(secrets, "list", cmd_list, "list secrets as JSON lines (never their values)")
    command(
        secrets,
        "status",
        cmd_status,
        "master key version, age, and whether rotation is due (warns, exits 0)",
    )
    command(
        secrets,
        "rotate",
        cmd_rotate,
        f"re-encrypt every secret from {MASTER_KEY_ENV} to {NEW_MASTER_KEY_ENV}, all or nothing",
    )
