"""`pdsno backup`: encrypted backups of the whole NIB, and restoring them.

The backup key is derived from PDSNO_MASTER_KEY (HKDF, label "pdsno-backup");
see docs/secrets-and-backups.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pdsno.backup import create_backup, restore_backup, verify_backup
from pdsno.cli import engine_for
from pdsno.security.secrets import master_key_from_env


def cmd_create(args: argparse.Namespace) -> int:
    key = master_key_from_env()
    summary = create_backup(engine_for(args), args.out, key, actor="cli")
    print(
        f"wrote {summary.path}: {summary.total_rows} rows, schema revision "
        f"{summary.schema_revision}, master key version {summary.key_version} "
        f"(fingerprint {summary.key_fingerprint[:16]})"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    key = master_key_from_env()
    summary = restore_backup(engine_for(args), args.in_file, key)
    print(
        f"restored {summary.total_rows} rows from {summary.path} (schema revision "
        f"{summary.schema_revision}); check it with `pdsno audit verify`"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    summary = verify_backup(args.in_file, master_key_from_env())
    print(
        json.dumps(
            {
                "file": str(summary.path),
                "schema_revision": summary.schema_revision,
                "key_version": summary.key_version,
                "key_fingerprint": summary.key_fingerprint[:16],
                "rows": summary.rows,
            }
        )
    )
    print(f"{summary.path} is complete and authentic", file=sys.stderr)
    return 0


def register(group, command) -> None:  # type: ignore[no-untyped-def]
    backup = group("backup", "encrypted backups of the NIB (key: PDSNO_MASTER_KEY)")
    create = command(backup, "create", cmd_create, "write an encrypted backup of the whole NIB")
    create.add_argument("--out", type=Path, required=True, help="new file (never overwritten)")
    restore = command(
        backup, "restore", cmd_restore, "restore a backup into an empty, upgraded NIB"
    )
    restore.add_argument("--in", dest="in_file", type=Path, required=True)
    verify = command(
        backup, "verify", cmd_verify, "decrypt and check a backup completely, without restoring"
    )
    verify.add_argument("--in", dest="in_file", type=Path, required=True)
