#!/usr/bin/python3
"""Check Mosquitto configuration candidates and keep its password file.

Installed by the Ansible role `mosquitto` as /usr/local/sbin/pdsno-mosquitto.
Mosquitto 2.0 has no configuration test mode, so a candidate is checked by
starting a real broker on it: as the broker's own user (so an unreadable key
or ACL fails here, not at the next restart), on free ports of 127.0.0.1,
with its pid file and persistence in a directory of its own, logging to
stderr; every other setting is read as it is. The candidate passes when the
broker listens on every listener; it is stopped at once either way.

    pdsno-mosquitto check-conf TARGET CANDIDATE   # a file of conf.d, in the
                                                  # real configuration
    pdsno-mosquitto check-acl CANDIDATE           # an ACL file, on its own
    pdsno-mosquitto check-passwd CANDIDATE        # a password file, on its own
    pdsno-mosquitto passwd-sync FILE [--check]    # users as JSON on stdin

passwd-sync reads {"<user>": "<password>", ...} from stdin and makes
FILE hold exactly these users. Passwords already right (their hash verifies)
keep their line; new and changed ones are hashed by mosquitto_passwd, which
reads them from its stdin, never from its command line. FILE is rewritten
only when a user was added, changed or removed; the result, as JSON, says
which.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import grp
import hashlib
import hmac
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"  # noqa: S105 (a program, not a password)
MAIN_CONF = Path("/etc/mosquitto/mosquitto.conf")
BROKER_USER = "mosquitto"
START_TIMEOUT = 15.0
SHARED_TMP = "/tmp"  # noqa: S108 (a private mkdtemp directory under it, mode 0700, owned by the broker)
# Settings of the real configuration that the check replaces: its pid file
# and persistence go to the check's own directory, its listeners to free
# ports of 127.0.0.1, and it logs to stderr (FOOTER). Everything else is
# read as it is. port and bind_address (the default listener) are not used.
RELOCATED = {"pid_file": "mosquitto.pid", "persistence_location": ""}
DROPPED = {"port", "bind_address"}
FOOTER = [
    "log_dest none",
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    "log_type notice",
    "log_type information",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def included_files(directory: Path, target: Path, candidate: Path) -> list[Path]:
    """conf.d as Mosquitto reads it (*.conf, sorted), TARGET as CANDIDATE."""
    names = {p.name: p for p in directory.glob("*.conf") if p.is_file()}
    if target.parent == directory:
        names[target.name] = candidate
    return [names[name] for name in sorted(names)]


def flatten(target: Path, candidate: Path, workdir: Path) -> tuple[str, list[int]]:
    """The real configuration in one file, TARGET replaced, listeners on free ports."""
    sources = [MAIN_CONF]
    for raw in MAIN_CONF.read_text().splitlines():
        words = raw.split()
        if len(words) > 1 and words[0] == "include_dir":
            sources += included_files(Path(words[1]), target, candidate)
    lines: list[str] = []
    ports: list[int] = []
    for source in sources:
        lines.append(f"# from {source}")
        for raw in source.read_text().splitlines():
            words = raw.split()
            if not words or words[0].startswith("#") or words[0] in DROPPED:
                continue
            if words[0] == "include_dir":
                continue
            if words[0] in RELOCATED:
                lines.append(f"{words[0]} {workdir}/{RELOCATED[words[0]]}")
                continue
            if words[0] == "listener":
                ports.append(free_port())
                lines.append(f"listener {ports[-1]} 127.0.0.1")
                continue
            lines.append(raw.strip())
    if not ports:
        ports.append(free_port())
        lines += [f"listener {ports[-1]} 127.0.0.1", "allow_anonymous false"]
    return "\n".join([*lines, *FOOTER]) + "\n", ports


def broker_credentials() -> tuple[int, int, list[int]]:
    account = pwd.getpwnam(BROKER_USER)
    groups = os.getgrouplist(BROKER_USER, account.pw_gid)
    return account.pw_uid, account.pw_gid, groups


def give_to_broker(path: Path, mode: int) -> None:
    uid, gid, _ = broker_credentials()
    os.chown(path, uid, gid)
    path.chmod(mode)


def run_broker(config: str, ports: list[int], workdir: Path) -> tuple[bool, str]:
    """Start a broker on CONFIG as the broker's user; True when it listens on every port."""
    conf = workdir / "check.conf"
    conf.write_text(config)
    give_to_broker(conf, 0o600)
    uid, gid, groups = broker_credentials()
    log = workdir / "broker.log"
    with log.open("w") as output:
        broker = subprocess.Popen(  # noqa: S603 (fixed binary, our own file)
            [MOSQUITTO, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            user=uid,
            group=gid,
            extra_groups=groups,
            cwd=workdir,
        )
        listening: set[int] = set()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline and broker.poll() is None:
                for port in set(ports) - listening:
                    with (
                        contextlib.suppress(OSError),
                        socket.create_connection(("127.0.0.1", port), timeout=0.5),
                    ):
                        listening.add(port)
                if listening == set(ports):
                    break
                time.sleep(0.1)
        finally:
            if broker.poll() is None:
                broker.send_signal(signal.SIGTERM)
                try:
                    broker.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    broker.kill()
                    broker.wait()
    ok = listening == set(ports)
    report = log.read_text()
    if not ok and broker.returncode is not None and not report.strip():
        report = f"mosquitto exited with status {broker.returncode}"
    elif not ok and not report.strip():
        report = f"mosquitto did not listen within {START_TIMEOUT:.0f} s"
    return ok, report


def check(config: str, ports: list[int], workdir: Path, what: str) -> int:
    ok, report = run_broker(config, ports, workdir)
    if ok:
        return 0
    print(f"Mosquitto refuses {what}:", file=sys.stderr)
    print(report.rstrip(), file=sys.stderr)
    print("--- configuration checked ---", file=sys.stderr)
    print(config.rstrip(), file=sys.stderr)
    return 1


def copy_for_broker(source: Path, workdir: Path, name: str) -> Path:
    copy = workdir / name
    shutil.copyfile(source, copy)
    give_to_broker(copy, 0o600)
    return copy


def standalone(setting: str, candidate: Path, workdir: Path) -> tuple[str, list[int]]:
    port = free_port()
    copy = copy_for_broker(candidate, workdir, setting)
    lines = [
        "per_listener_settings true",
        f"listener {port} 127.0.0.1",
        "allow_anonymous false",
        f"{setting} {copy}",
        *FOOTER,
    ]
    return "\n".join(lines) + "\n", [port]


def broker_workdir() -> Path:
    # Not under $TMPDIR: with libpam-tmpdir (roles/host_hardening) that is
    # /tmp/user/0, private to root, and the broker's user could not enter it.
    workdir = Path(tempfile.mkdtemp(prefix="pdsno-mosquitto-check-", dir=SHARED_TMP))
    give_to_broker(workdir, 0o700)
    return workdir


def command_check_conf(args: argparse.Namespace) -> int:
    workdir = broker_workdir()
    try:
        candidate = copy_for_broker(Path(args.candidate), workdir, "candidate.conf")
        config, ports = flatten(Path(args.target), candidate, workdir)
        return check(config, ports, workdir, f"the new {args.target}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def command_check_file(setting: str):
    def run(args: argparse.Namespace) -> int:
        workdir = broker_workdir()
        try:
            config, ports = standalone(setting, Path(args.candidate), workdir)
            return check(config, ports, workdir, f"the new {setting}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    return run


def verify(password: str, hashed: str) -> bool:
    """Whether PASSWORD matches a mosquitto_passwd hash ($6$ sha512, $7$ pbkdf2)."""
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), parts[3], parts[4]
            computed = hashlib.pbkdf2_hmac(
                "sha512", password.encode(), base64.b64decode(salt), iterations
            )
        elif len(parts) == 4 and parts[1] == "6":
            salt, digest = parts[2], parts[3]
            computed = hashlib.sha512(password.encode() + base64.b64decode(salt)).digest()
        else:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(base64.b64encode(computed).decode(), digest)


def read_password_file(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#") and ":" in line:
                name, hashed = line.split(":", 1)
                entries[name] = hashed
    return entries


def command_passwd_sync(args: argparse.Namespace) -> int:
    path = Path(args.file)
    wanted: dict[str, str] = json.load(sys.stdin)
    current = read_password_file(path)
    kept = [name for name in wanted if name in current and verify(wanted[name], current[name])]
    added = [name for name in wanted if name not in current]
    updated = [name for name in wanted if name in current and name not in kept]
    removed = [name for name in current if name not in wanted]
    changed = bool(added or updated or removed) or not path.exists()
    result = {"changed": changed, "added": added, "updated": updated, "removed": removed}
    if changed and not args.check:
        workdir = broker_workdir()
        try:
            staged = workdir / "passwd"
            staged.write_text("".join(f"{name}:{current[name]}\n" for name in kept))
            for name in added + updated:
                secret = wanted[name]
                subprocess.run(  # noqa: S603 (fixed binary; the password goes to stdin)
                    [MOSQUITTO_PASSWD, str(staged), name],
                    input=f"{secret}\n{secret}\n",
                    text=True,
                    capture_output=True,
                    check=True,
                )
            config, ports = standalone("password_file", staged, workdir)
            if check(config, ports, workdir, "the new password file"):
                return 1
            owner = pwd.getpwnam(args.owner).pw_uid
            group = grp.getgrnam(args.group).gr_gid
            final = path.with_name(f".{path.name}.new")
            shutil.copyfile(staged, final)
            os.chown(final, owner, group)
            final.chmod(int(args.mode, 8))
            final.replace(path)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    json.dump(result, sys.stdout)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True)
    conf = commands.add_parser("check-conf", help="check a conf.d file in the real configuration")
    conf.add_argument("target")
    conf.add_argument("candidate")
    conf.set_defaults(run=command_check_conf)
    acl = commands.add_parser("check-acl", help="check an ACL file")
    acl.add_argument("candidate")
    acl.set_defaults(run=command_check_file("acl_file"))
    passwd = commands.add_parser("check-passwd", help="check a password file")
    passwd.add_argument("candidate")
    passwd.set_defaults(run=command_check_file("password_file"))
    sync = commands.add_parser("passwd-sync", help="make a password file hold exactly these users")
    sync.add_argument("file")
    sync.add_argument("--check", action="store_true", help="report, change nothing")
    sync.add_argument("--owner", default="root")
    sync.add_argument("--group", default=BROKER_USER)
    sync.add_argument("--mode", default="0640")
    sync.set_defaults(run=command_passwd_sync)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
