#!/usr/bin/python3
"""Write pgBackRest's state as Prometheus textfile metrics (node_exporter's
textfile collector), for the PDSNO alert rules (monitoring/alerts.yml).

    metrics --config CONF --stanza NAME --dir DIR backup
        pdsno_backup_last_success_timestamp_seconds{stanza,type}: when the
        newest good backup of each type ended, from `pgbackrest info`.
    metrics --config CONF --stanza NAME --dir DIR verify
        pdsno_backup_verify_success{stanza}: 1 when the verification unit
        that ran this (ExecStopPost) succeeded, else 0, and when it ran.

Files are replaced atomically, so the collector never reads half a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_atomically(directory: str, name: str, lines: list[str]) -> None:
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write("\n".join(lines) + "\n")
        Path(temporary).chmod(0o644)
        Path(temporary).replace(Path(directory) / name)
    except BaseException:
        Path(temporary).unlink()
        raise


def backup_lines(config: str, stanza: str) -> list[str]:
    # Fixed program paths; the arguments come from the unit file (root's).
    info = subprocess.run(  # noqa: S603
        [
            "/usr/sbin/runuser",
            "-u",
            "postgres",
            "--",
            "/usr/bin/pgbackrest",
            f"--config={config}",
            f"--stanza={stanza}",
            "--output=json",
            "info",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    newest: dict[str, int] = {}
    for entry in json.loads(info.stdout):
        for backup in entry.get("backup", []):
            if backup.get("error"):
                continue
            kind, stop = backup["type"], int(backup["timestamp"]["stop"])
            newest[kind] = max(newest.get(kind, 0), stop)
    lines = [
        "# HELP pdsno_backup_last_success_timestamp_seconds"
        " End of the newest good pgBackRest backup, by type.",
        "# TYPE pdsno_backup_last_success_timestamp_seconds gauge",
    ]
    lines += [
        f'pdsno_backup_last_success_timestamp_seconds{{stanza="{stanza}",type="{kind}"}} {stop}'
        for kind, stop in sorted(newest.items())
    ]
    return lines


def verify_lines(stanza: str) -> list[str]:
    # systemd sets these for ExecStopPost= commands.
    ok = os.environ.get("SERVICE_RESULT") == "success" and os.environ.get("EXIT_STATUS", "0") == "0"
    return [
        "# HELP pdsno_backup_verify_success"
        " Whether the last pgbackrest verify of the repository succeeded.",
        "# TYPE pdsno_backup_verify_success gauge",
        f'pdsno_backup_verify_success{{stanza="{stanza}"}} {int(ok)}',
        "# HELP pdsno_backup_verify_last_run_timestamp_seconds When pgbackrest verify last ended.",
        "# TYPE pdsno_backup_verify_last_run_timestamp_seconds gauge",
        f'pdsno_backup_verify_last_run_timestamp_seconds{{stanza="{stanza}"}} {int(time.time())}',
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--stanza", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("what", choices=["backup", "verify"])
    args = parser.parse_args()
    try:
        if args.what == "backup":
            write_atomically(args.dir, "pdsno_backup.prom", backup_lines(args.config, args.stanza))
        else:
            write_atomically(args.dir, "pdsno_backup_verify.prom", verify_lines(args.stanza))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as error:
        detail = getattr(error, "stderr", "") or ""
        print(f"pdsno backup metrics not written: {error} {detail}".strip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
