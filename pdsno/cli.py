"""The `pdsno` command line: run a controller, and administer the NIB."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select, update

from pdsno import __version__, audit
from pdsno import commands as commands_package
from pdsno.auth import api_keys
from pdsno.auth.permissions import PERMISSION_NAMES
from pdsno.clock import as_utc, utcnow
from pdsno.config import ControllerType, Settings, load_settings
from pdsno.errors import PdsnoError
from pdsno.identity import bootstrap
from pdsno.nib.engine import create_nib_engine, require_current_schema, upgrade
from pdsno.nib.schema import api_keys as api_keys_table
from pdsno.nib.schema import bootstrap_tokens, controllers
from pdsno.security.keys import SigningKey

DURATION = re.compile(r"^(\d+)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 24h or 7d")
    return timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2]])


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    return load_settings(args.config, db_url=args.db_url, **overrides)


def engine_for(args: argparse.Namespace, *, check_schema: bool = True) -> Engine:
    engine = create_nib_engine(_settings(args).db_url)
    if check_schema:
        require_current_schema(engine)
    return engine


def cmd_controller_run(args: argparse.Namespace) -> int:
    from pdsno.runtime import run  # the server stack loads only for this command

    run(_settings(args, type=args.type))
    return 0


def cmd_controller_check(args: argparse.Namespace) -> int:
    """Read the settings as `controller run` would, and start nothing: the
    Ansible role checks a new settings file with it before the file replaces
    the old one."""
    settings = _settings(args)
    print(f"{args.config}: valid settings of the {settings.controller_type.value} controller")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    revision = upgrade(engine_for(args, check_schema=False))
    print(f"NIB schema at revision {revision}")
    return 0


def cmd_key_generate(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise PdsnoError(f"{args.out} exists; a controller key is never overwritten")
    key = SigningKey.generate()
    key.save(args.out)
    print(f"wrote {args.out}; public key {key.public_key_b64}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    with engine_for(args).begin() as conn:
        token = bootstrap.create_token(
            conn,
            controller_type=ControllerType(args.type),
            region=args.region,
            ttl=args.ttl,
            created_by=args.created_by,
        )
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    with engine_for(args).connect() as conn:
        rows = conn.execute(select(bootstrap_tokens).order_by(bootstrap_tokens.c.created_at))
        for row in rows:
            print(
                json.dumps(
                    {
                        "token_hash": row.token_hash[:12],
                        "type": row.controller_type,
                        "region": row.region,
                        "created_by": row.created_by,
                        "expires_at": as_utc(row.expires_at).isoformat(timespec="seconds"),
                        "used_by": row.used_by,
                    }
                )
            )
    return 0


def cmd_apikey_list(args: argparse.Namespace) -> int:
    with engine_for(args).connect() as conn:
        for row in conn.execute(select(api_keys_table).order_by(api_keys_table.c.created_at)):
            print(
                json.dumps(
                    {
                        "key_id": row.key_id,
                        "name": row.name,
                        "role": row.role,
                        "region": row.region,
                        "scopes": row.scopes,
                        "revoked": row.revoked_at is not None,
                    }
                )
            )
    return 0


def cmd_apikey_create(args: argparse.Namespace) -> int:
    with engine_for(args).begin() as conn:
        key = api_keys.create(
            conn, name=args.name, role=args.role, region=args.region, scopes=args.scope
        )
        audit.append(
            conn,
            "api_key.created",
            actor="cli",
            subject=args.name,
            region=args.region,
            payload={"role": args.role, "scopes": args.scope},
        )
    print(key)
    return 0


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    with engine_for(args).begin() as conn:
        api_keys.revoke(conn, args.key_id)
        audit.append(conn, "api_key.revoked", actor="cli", subject=args.key_id)
    print(f"revoked {args.key_id}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    report = audit.verify(engine_for(args))
    if report.intact:
        print(f"audit chain intact: {report.rows_checked} events")
        return 0
    print(
        f"audit chain BROKEN at event {report.first_bad_seq}: {report.reason} "
        f"({report.rows_checked} events before it are intact)",
        file=sys.stderr,
    )
    return 1


def cmd_controllers_list(args: argparse.Namespace) -> int:
    with engine_for(args).connect() as conn:
        rows = conn.execute(select(controllers).order_by(controllers.c.seq)).all()
    for row in rows:
        print(
            json.dumps(
                {
                    "controller_id": row.controller_id,
                    "type": row.controller_type,
                    "region": row.region,
                    "name": row.name,
                    "parent_id": row.parent_id,
                    "status": row.status,
                    "url": row.url,
                }
            )
        )
    return 0


def cmd_controllers_retire(args: argparse.Namespace) -> int:
    """Mark a controller retired: its signed messages and execution tokens are refused."""
    with engine_for(args).begin() as conn:
        result = conn.execute(
            update(controllers)
            .where(controllers.c.controller_id == args.controller_id)
            .where(controllers.c.status == "active")
            .values(status="retired", updated_at=utcnow(), version=controllers.c.version + 1)
        )
        if result.rowcount != 1:
            raise PdsnoError(f"no active controller {args.controller_id}")
        audit.append(
            conn,
            "controller.retired",
            actor=args.actor,
            subject=args.controller_id,
            payload={"reason": args.reason},
        )
    print(f"retired {args.controller_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="controller settings file (YAML)")
    common.add_argument("--db-url", help="NIB database URL (default: PDSNO_DB_URL or config)")

    parser = argparse.ArgumentParser(
        prog="pdsno", description="PDSNO controller: run controllers and administer the NIB."
    )
    parser.add_argument("--version", action="version", version=f"pdsno {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(group: argparse._SubParsersAction, name: str, handler: Callable, help_text: str):
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help_text: str) -> argparse._SubParsersAction:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    controller = group("controller", "run a controller")
    run = command(controller, "run", cmd_controller_run, "run a controller until stopped")
    run.add_argument("--type", choices=[t.value for t in ControllerType])
    command(controller, "check", cmd_controller_check, "check a settings file and start nothing")

    db = group("db", "the NIB schema")
    command(db, "upgrade", cmd_db_upgrade, "create or upgrade the NIB schema (idempotent)")

    key = group("key", "controller keys")
    generate = command(key, "generate", cmd_key_generate, "create an Ed25519 controller key")
    generate.add_argument("--out", type=Path, required=True)

    token = group("token", "bootstrap tokens")
    create = command(token, "create", cmd_token_create, "create a single-use bootstrap token")
    create.add_argument("--region", required=True)
    create.add_argument("--type", required=True, choices=["regional", "local"])
    create.add_argument(
        "--ttl",
        type=parse_duration,
        default=timedelta(hours=24),
        help="lifetime such as 30m, 24h, 7d (default 24h)",
    )
    create.add_argument("--created-by", default="cli", help="who asked, for the audit trail")
    command(token, "list", cmd_token_list, "list bootstrap tokens (hash prefixes, never tokens)")

    apikey = group("apikey", "API keys for operators and automation")
    create = command(apikey, "create", cmd_apikey_create, "create an API key (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=api_keys.ROLES)
    create.add_argument("--region", help="limit the key to one region")
    create.add_argument(
        "--scope",
        action="append",
        metavar="PERMISSION",
        help="limit the key to this permission of its role (repeatable; default: all of "
        f"the role's): {', '.join(PERMISSION_NAMES)}",
    )
    command(apikey, "list", cmd_apikey_list, "list API keys (never the keys themselves)")
    revoke = command(apikey, "revoke", cmd_apikey_revoke, "revoke an API key")
    revoke.add_argument("key_id")

    audit_group = group("audit", "the audit trail")
    command(audit_group, "verify", cmd_audit_verify, "check the audit hash chain")

    controllers_group = group("controllers", "controllers in the NIB")
    command(controllers_group, "list", cmd_controllers_list, "list controllers as JSON lines")
    retire = command(
        controllers_group,
        "retire",
        cmd_controllers_retire,
        "retire a controller (lost or compromised key): refuse its messages",
    )
    retire.add_argument("controller_id")
    retire.add_argument("--reason", required=True, help="why, for the audit trail")
    retire.add_argument("--actor", default="cli", help="who, for the audit trail")

    # More command groups live in pdsno/commands/, one module each, with a
    # register(group, command) function.
    for module_info in pkgutil.iter_modules(commands_package.__path__):
        module = importlib.import_module(f"{commands_package.__name__}.{module_info.name}")
        module.register(group, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except PdsnoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
