#!/usr/bin/python
"""Read-only checks of the PDSNO security checklist on one host."""

from __future__ import annotations

import glob
import grp
import json
import pwd
import re
import shutil
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: pdsno_verify_host
short_description: Run the host checks of the PDSNO security checklist, changing nothing
description:
  - Takes the checklist of roles/verify and the groups of this host, runs the
    checks of every item that applies here and returns one result per check
    (pass, fail or not_applicable, with the reason).
  - Reads files, unit properties and the services' effective configuration;
    runs only read-only commands (systemctl show, systemd-analyze security,
    openssl, psql SELECTs, nft list, sshd -T, auditctl -s and -l,
    modprobe --showconfig). Works the same in check mode.
options:
  checklist:
    description: The items (id, applies_to, checks); see roles/verify/vars/main.yml.
    type: list
    elements: dict
    required: true
  groups:
    description: The inventory groups of this host (group_names), or [control] on the control node.
    type: list
    elements: str
    required: true
  kind:
    description: Which checks to run, those marked C(where=host) or C(where=control).
    type: str
    default: host
    choices: [host, control]
author: PDSNO Platform engineers
"""

RETURN = r"""
results:
  description: One entry per check run, with item, check, status and reason.
  returned: always
  type: list
  elements: dict
"""

PASS, FAIL, NA = "pass", "fail", "not_applicable"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class CheckError(Exception):
    """A check could not be run; its reason is the result."""


def run(argv: list[str], timeout: int = 30) -> subprocess.CompletedProcess:
    try:
        # Only the read-only commands of the checklist and this module.
        return subprocess.run(  # noqa: S603
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as error:
        raise CheckError(f"{argv[0]} is not installed") from error
    except subprocess.TimeoutExpired as error:
        raise CheckError(f"{' '.join(argv)} did not answer within {timeout} s") from error


def missing(args: dict, what: str) -> str:
    why = args.get("missing_reason")
    return f"{what}: {why}" if why else what


def expand(paths: list[str]) -> list[str]:
    found: list[str] = []
    for pattern in paths:
        found.extend(sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern])  # noqa: PTH207
    return [p for p in found if Path(p).exists() or Path(p).is_symlink()]


def check_file(args: dict) -> tuple[str, str]:
    files = expand(args["paths"])
    if not files:
        if args.get("required", True):
            return FAIL, missing(args, f"no file at {', '.join(args['paths'])}")
        return NA, f"no file at {', '.join(args['paths'])}"
    problems = []
    allowed = int(str(args["max_mode"]), 8) if args.get("max_mode") is not None else None
    for path in files:
        st = Path(path).stat()
        mode = stat.S_IMODE(st.st_mode)
        if allowed is not None and mode & ~allowed:
            problems.append(f"{path} has mode {mode:04o}, more than {allowed:04o}")
        owner = pwd.getpwuid(st.st_uid).pw_name
        if args.get("owner") and owner != args["owner"]:
            problems.append(f"{path} is owned by {owner}, not {args['owner']}")
        group = grp.getgrgid(st.st_gid).gr_name
        if args.get("groups") and group not in args["groups"]:
            problems.append(f"{path} has group {group}, not one of {', '.join(args['groups'])}")
        if args.get("max_age_days") is not None:
            days = (time.time() - st.st_mtime) / 86400
            if days > float(args["max_age_days"]):
                problems.append(f"{path} is {days:.0f} days old, more than {args['max_age_days']}")
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, f"{len(files)} file(s) as required: {', '.join(files)}"


def unit_properties(name: str, names: list[str]) -> dict[str, str]:
    result = run(["systemctl", "show", name, "--property", ",".join(names)])
    props = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return props


def check_unit(args: dict) -> tuple[str, str]:
    name = args["name"]
    wanted = dict(args.get("properties") or {})
    props = unit_properties(name, ["LoadState", "ActiveState", "UnitFileState", "MainPID", *wanted])
    if props.get("LoadState") != "loaded":
        return FAIL, missing(args, f"unit {name} is not installed")
    problems, good = [], []
    if args.get("active") is not None:
        active = props.get("ActiveState") == "active"
        if active != args["active"]:
            problems.append(f"{name} is {props.get('ActiveState')}")
        else:
            good.append(f"{props.get('ActiveState')}")
    if args.get("enabled") is not None:
        enabled = props.get("UnitFileState") in ("enabled", "enabled-runtime", "static", "alias")
        if enabled != args["enabled"]:
            problems.append(f"{name} is {props.get('UnitFileState') or 'not enabled'} at boot")
        else:
            good.append(props.get("UnitFileState", ""))
    for key, value in wanted.items():
        if props.get(key) != str(value):
            problems.append(f"{name} {key}={props.get(key, '')!s}, not {value}")
    if args.get("not_root"):
        pid = int(props.get("MainPID") or 0)
        if pid == 0:
            problems.append(f"{name} has no main process to check its user")
        else:
            uid = main_pid_uid(pid)
            if uid == 0:
                problems.append(f"{name}'s main process (PID {pid}) runs as root")
            else:
                good.append(f"runs as {pwd.getpwuid(uid).pw_name}")
    if args.get("exposure_max") is not None:
        score = exposure(name)
        if score > float(args["exposure_max"]):
            problems.append(
                f"{name} systemd-analyze security exposure {score} > {args['exposure_max']}"
            )
        else:
            good.append(f"exposure {score}")
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, f"{name}: {', '.join(g for g in good if g) or 'as required'}"


def main_pid_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective UID
    raise CheckError(f"no Uid line for PID {pid}")


def exposure(unit: str) -> float:
    result = run(["systemd-analyze", "security", "--no-pager", unit], timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    if not found:
        raise CheckError(f"systemd-analyze security {unit} gave no score: {result.stderr.strip()}")
    return float(found.group(1))


def not_after(path: str) -> datetime:
    result = run(["openssl", "x509", "-in", path, "-noout", "-enddate"])
    if result.returncode:
        raise CheckError(f"{path} is not a certificate: {result.stderr.strip()}")
    text = result.stdout.strip().split("=", 1)[1]
    return datetime.strptime(text, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)


def check_certificate(args: dict) -> tuple[str, str]:
    files = expand(args["paths"])
    if not files:
        return FAIL, missing(args, f"no certificate at {', '.join(args['paths'])}")
    problems, notes = [], []
    for path in files:
        days = (not_after(path) - datetime.now(UTC)).days
        if days < int(args["min_days"]):
            problems.append(f"{path} expires in {days} days (fewer than {args['min_days']})")
        verified = run(["openssl", "verify", "-CAfile", args["cafile"], path])
        if verified.returncode:
            problems.append(
                f"{path} does not verify against {args['cafile']}: "
                f"{(verified.stderr or verified.stdout).strip()}"
            )
        notes.append(f"{Path(path).name} {days} days left")
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, f"chain valid against {args['cafile']}; " + ", ".join(notes)


def check_key_age(args: dict) -> tuple[str, str]:
    files = expand(args["paths"])
    if not files:
        return FAIL, missing(args, f"no key at {', '.join(args['paths'])}")
    now = time.time()
    ages = {path: int((now - Path(path).stat().st_mtime) // 86400) for path in files}
    old = [f"{p} is {d} days old" for p, d in ages.items() if d > int(args["max_days"])]
    if old:
        return FAIL, f"older than {args['max_days']} days: " + "; ".join(old)
    return PASS, ", ".join(f"{Path(p).name} {d} days" for p, d in ages.items())


def mosquitto_listeners(conf: str) -> tuple[dict, list[dict]]:
    """The broker-wide settings and each listener's, as mosquitto reads them."""
    files, general, listeners = [conf], {}, []
    current = general
    while files:
        path = files.pop(0)
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition(" ")
            value = value.strip()
            if key == "include_dir":
                files[0:0] = sorted(str(f) for f in Path(value).glob("*.conf"))
            elif key == "listener":
                port, _, bind = value.partition(" ")
                current = {"port": int(port), "bind": bind.strip(), "file": path}
                listeners.append(current)
            else:
                current[key] = value
    return general, listeners


def check_mosquitto(args: dict) -> tuple[str, str]:
    conf = args.get("conf", "/etc/mosquitto/mosquitto.conf")
    if not Path(conf).exists():
        return FAIL, missing(args, f"{conf} is absent")
    general, listeners = mosquitto_listeners(conf)
    if not listeners:
        return FAIL, "no listener configured: mosquitto then listens on its defaults"
    per_listener = general.get("per_listener_settings", "false") == "true"
    problems, notes = [], []
    for lst in listeners:
        where = f"listener {lst['port']}{' ' + lst['bind'] if lst['bind'] else ''} ({lst['file']})"
        settings = lst if per_listener else {**lst, **general}
        loopback = lst["bind"] in LOOPBACK
        tls = "certfile" in lst and "keyfile" in lst
        anonymous = settings.get("allow_anonymous", "false") == "true"
        if "tls" in args["require"]:
            if not tls and not loopback:
                problems.append(f"{where} is plain MQTT on a network address")
            if tls and lst.get("tls_version") not in ("tlsv1.2", "tlsv1.3"):
                problems.append(
                    f"{where} allows TLS older than 1.2 (tls_version "
                    f"{lst.get('tls_version', 'unset')})"
                )
        if "no_anonymous" in args["require"]:
            if anonymous:
                problems.append(f"{where} allows anonymous clients")
            identified = (tls and settings.get("require_certificate") == "true") or (
                "password_file" in settings
            )
            if not identified:
                problems.append(f"{where} neither demands a client certificate nor a password")
        if "limits" in args["require"]:
            limit = int(settings.get("max_connections", "-1"))
            if limit < 0 or limit > int(args.get("max_connections", 10000)):
                problems.append(f"{where} max_connections is {limit}")
        notes.append(f"{lst['port']}{'/tls' if tls else '/loopback'}")
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, f"listeners {', '.join(notes)}: {', '.join(args['require'])} as required"


def psql(query: str, args: dict) -> object:
    argv = [
        "runuser",
        "-u",
        args.get("os_user", "postgres"),
        "--",
        "psql",
        "-XAtq",
        "-p",
        str(args.get("port", 5432)),
        "-d",
        "postgres",
        "-c",
        query,
    ]
    result = run(argv)
    if result.returncode:
        raise CheckError(f"psql as {args.get('os_user', 'postgres')}: {result.stderr.strip()}")
    return json.loads(result.stdout or "null")


def check_postgresql(args: dict) -> tuple[str, str]:
    if not shutil.which("psql"):
        return FAIL, missing(args, "PostgreSQL (psql) is not installed")
    problems, notes = [], []
    wanted = args.get("settings") or {}
    if wanted:
        # Setting names are reduced to [a-z_] before they reach the query.
        names = ",".join("'" + re.sub(r"[^a-z_]", "", n) + "'" for n in wanted)
        live = (
            psql(
                f"SELECT json_object_agg(name, setting) FROM pg_settings WHERE name IN ({names})",  # noqa: S608
                args,
            )
            or {}
        )
        for name, allowed in wanted.items():
            value = live.get(name)
            if isinstance(allowed, dict):
                if value is None or int(value) > int(allowed["max"]):
                    problems.append(f"{name} = {value}, more than {allowed['max']}")
            elif str(value) not in [str(a) for a in allowed]:
                problems.append(f"{name} = {value}, not one of {', '.join(map(str, allowed))}")
        notes.append(", ".join(f"{k}={live.get(k)}" for k in wanted))
    if args.get("hba_forbidden_methods"):
        rules = (
            psql(
                "SELECT json_agg(json_build_object('line', line_number, 'type', type, "
                "'method', auth_method, 'error', error) ORDER BY line_number) "
                "FROM pg_hba_file_rules",
                args,
            )
            or []
        )
        for rule in rules:
            where = f"pg_hba line {rule['line']}"
            if rule.get("error"):
                problems.append(f"{where}: {rule['error']}")
            elif rule["method"] in args["hba_forbidden_methods"]:
                problems.append(f"{where}: {rule['type']} ... {rule['method']}")
            elif rule["type"] in ("host", "hostnossl") and rule["method"] != "reject":
                problems.append(f"{where}: {rule['type']} admits connections without TLS")
        notes.append(
            f"{len(rules)} pg_hba rules, no {'/'.join(args['hba_forbidden_methods'])}, "
            "TCP only as hostssl"
        )
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, "; ".join(notes)


def nft_ports(rules: list[dict]) -> set[int]:
    """TCP destination ports the rules accept."""
    ports: set[int] = set()
    for rule in rules:
        exprs = rule.get("expr", [])
        if not any("accept" in e for e in exprs):
            continue
        for expr in exprs:
            match = expr.get("match") or {}
            field = (match.get("left") or {}).get("payload") or {}
            if field.get("protocol") != "tcp" or field.get("field") != "dport":
                continue
            right = match.get("right")
            values = right.get("set", []) if isinstance(right, dict) else [right]
            for value in values:
                if isinstance(value, int):
                    ports.add(value)
                elif isinstance(value, dict) and "range" in value:
                    low, high = value["range"]
                    ports.update(range(int(low), int(high) + 1))
    return ports


def check_nftables(args: dict) -> tuple[str, str]:
    family, _, name = args["table"].partition(" ")
    if not shutil.which("nft"):
        return FAIL, missing(args, "nftables (nft) is not installed")
    result = run(["nft", "-j", "list", "table", family, name])
    if result.returncode:
        return FAIL, missing(args, f"nftables table {args['table']} is absent")
    objects = [o for o in json.loads(result.stdout)["nftables"]]
    chains = [o["chain"] for o in objects if "chain" in o]
    inputs = [c for c in chains if c.get("hook") == "input"]
    problems = []
    if not inputs:
        problems.append(f"table {args['table']} has no input chain")
    for chain in inputs:
        if chain.get("policy") != "drop":
            problems.append(f"input chain {chain['name']} policy is {chain.get('policy')}")
    accepted = nft_ports([o["rule"] for o in objects if "rule" in o])
    extra = sorted(accepted - {int(p) for p in args["allowed_tcp_ports"]})
    if extra:
        problems.append(f"TCP ports opened beyond the intended ones: {', '.join(map(str, extra))}")
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, f"input policy drop; TCP open: {', '.join(map(str, sorted(accepted)))}"


def check_backup(args: dict) -> tuple[str, str]:
    """pgBackRest's own account of the repository (`pgbackrest info`): the
    stanza is healthy, the repository encrypted, and a backup recent."""
    result = run(args["argv"], timeout=int(args.get("timeout", 120)))
    if result.returncode:
        output = (result.stderr or result.stdout).strip()
        return FAIL, missing(
            args, f"{' '.join(args['argv'])} exited {result.returncode}: {output[-300:]}"
        )
    try:
        stanzas = {entry["name"]: entry for entry in json.loads(result.stdout)}
    except (ValueError, KeyError, TypeError) as error:
        return FAIL, f"pgbackrest info printed no stanza list: {error}"
    stanza = stanzas.get(args["stanza"])
    if stanza is None:
        return (
            FAIL,
            f"no stanza {args['stanza']} in the repository "
            f"(stanzas: {', '.join(stanzas) or 'none'})",
        )
    problems = []
    status = stanza.get("status", {})
    if status.get("code") != 0:
        problems.append(f"stanza {args['stanza']}: {status.get('message', 'status unknown')}")
    ciphers = {repo.get("cipher") for repo in stanza.get("repo", [])} or {stanza.get("cipher")}
    if ciphers != {args["cipher"]}:
        problems.append(
            f"repository cipher {', '.join(sorted(map(str, ciphers)))}, not {args['cipher']}"
        )
    backups = stanza.get("backup", [])
    if not backups:
        problems.append("no backup in the repository")
    else:
        newest = max(backups, key=lambda b: b["timestamp"]["stop"])
        age_hours = (time.time() - newest["timestamp"]["stop"]) / 3600
        if age_hours > float(args["max_age_hours"]):
            problems.append(f"newest backup {newest['label']} is {age_hours:.0f} h old")
    if problems:
        return FAIL, "; ".join(problems)
    return (
        PASS,
        f"stanza {args['stanza']}: {len(backups)} backup(s), newest {newest['label']} "
        f"({newest['type']}), {age_hours:.1f} h old; repository {args['cipher']}",
    )


def check_container_runtime(args: dict) -> tuple[str, str]:
    found = [b for b in args["binaries"] if shutil.which(b)]
    if not found:
        return NA, "no container runtime on this host: PDSNO runs as systemd services"
    report = args.get("scan_report")
    if report and Path(report).exists():
        age = (time.time() - Path(report).stat().st_mtime) / 86400
        if age <= float(args.get("max_age_days", 7)):
            return (
                PASS,
                f"{', '.join(found)} present; image scan report {report}, {age:.0f} days old",
            )
    return FAIL, f"{', '.join(found)} present and no recent image scan report"


def check_user(args: dict) -> tuple[str, str]:
    try:
        entry = pwd.getpwnam(args["name"])
    except KeyError:
        return FAIL, missing(args, f"user {args['name']} does not exist")
    problems = []
    if entry.pw_shell not in args["shells"]:
        problems.append(f"{args['name']} has the login shell {entry.pw_shell}")
    member = [g.gr_name for g in grp.getgrall() if args["name"] in g.gr_mem]
    bad = sorted(set(member) & set(args.get("forbidden_groups", [])))
    if bad:
        problems.append(f"{args['name']} is in {', '.join(bad)}")
    if problems:
        return FAIL, "; ".join(problems)
    return (
        PASS,
        f"{args['name']}: shell {entry.pw_shell}, "
        f"not in {', '.join(args.get('forbidden_groups', []))}",
    )


def check_file_regex(args: dict) -> tuple[str, str]:
    files = expand(args["paths"])
    if not files:
        return FAIL, missing(args, f"no file at {', '.join(args['paths'])}")
    pattern = re.compile(args["pattern"], re.MULTILINE)
    hits = []
    for path in files:
        if pattern.search(Path(path).read_text(encoding="utf-8", errors="replace")):
            hits.append(path)
    if args.get("present", True):
        if not hits:
            return FAIL, missing(
                args, f"{args.get('description', args['pattern'])} not in {', '.join(files)}"
            )
        return PASS, f"{args.get('description', args['pattern'])} in {', '.join(hits)}"
    if hits:
        return FAIL, f"{args.get('description', args['pattern'])} found in {', '.join(hits)}"
    return PASS, f"no {args.get('description', args['pattern'])} in {', '.join(files)}"


def check_command(args: dict) -> tuple[str, str]:
    result = run(args["argv"], timeout=int(args.get("timeout", 60)))
    output = (result.stdout + result.stderr).strip()
    if result.returncode != int(args.get("expect_rc", 0)):
        return FAIL, missing(
            args, f"{' '.join(args['argv'])} exited {result.returncode}: {output[-300:]}"
        )
    if args.get("pattern") and not re.search(args["pattern"], output, re.MULTILINE):
        return FAIL, missing(
            args, f"{' '.join(args['argv'])}: no {args['pattern']!r} in its output"
        )
    if args.get("absent_pattern") and re.search(args["absent_pattern"], output, re.MULTILINE):
        return FAIL, f"{' '.join(args['argv'])}: {args['absent_pattern']!r} in its output"
    return PASS, args.get("description") or f"{' '.join(args['argv'])} succeeded"


def sshd_settings(argv: list[str]) -> dict[str, list[str]]:
    """sshd's effective configuration (sshd -T): keyword to its values."""
    result = run(argv)
    if result.returncode:
        raise CheckError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    settings: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            settings.setdefault(key.lower(), []).append(value.strip())
    return settings


def check_sshd(args: dict) -> tuple[str, str]:
    """The server sshd runs as configured: exact settings, upper bounds,
    algorithm lists without forbidden names, the groups that may log in."""
    if not shutil.which(args.get("argv", ["sshd"])[0]):
        return FAIL, missing(args, "the OpenSSH server (sshd) is not installed")
    live = sshd_settings(args.get("argv", ["sshd", "-T"]))
    problems = []
    for key, wanted in (args.get("settings") or {}).items():
        value = " ".join(live.get(key, []))
        if value.lower() != str(wanted).lower():
            problems.append(f"{key} is {value or 'unset'}, not {wanted}")
    for key, highest in (args.get("max") or {}).items():
        value = (live.get(key) or [""])[0]
        if not value.isdigit() or int(value) > int(highest):
            problems.append(f"{key} is {value or 'unset'}, more than {highest}")
    for key, lowest in (args.get("min") or {}).items():
        value = (live.get(key) or [""])[0]
        if not value.isdigit() or int(value) < int(lowest):
            problems.append(f"{key} is {value or 'unset'}, less than {lowest}")
    for key, pattern in (args.get("forbidden") or {}).items():
        names = ",".join(live.get(key, [])).split(",")
        bad = [n for n in names if n and re.search(pattern, n)]
        if bad:
            problems.append(f"{key} offers {', '.join(bad)}")
    for key, pattern in (args.get("only") or {}).items():
        names = [n for n in ",".join(live.get(key, [])).split(",") if n]
        bad = [n for n in names if not re.fullmatch(pattern, n)]
        if bad or not names:
            problems.append(f"{key} offers {', '.join(bad) or 'nothing'}")
    groups = args.get("allow_groups") or []
    if groups:
        have = " ".join(live.get("allowgroups", [])).split()
        if sorted(have) != sorted(groups):
            problems.append(f"AllowGroups is {' '.join(have) or 'unset'}, not {' '.join(groups)}")
    if problems:
        return FAIL, "sshd -T: " + "; ".join(problems)
    checked = [*(args.get("settings") or {}), *(args.get("max") or {}), *(args.get("min") or {})]
    note = f", AllowGroups {' '.join(groups)}" if groups else ""
    return PASS, f"sshd -T: {', '.join(checked)} as required, no weak algorithm{note}"


def check_auditd(args: dict) -> tuple[str, str]:
    """The audit rules are installed; where the kernel lets this host control
    auditing they are loaded and auditd runs, in a container that is not
    applicable and said so."""
    rules = Path(args["rules_file"])
    if not rules.exists():
        return FAIL, missing(args, f"no audit rules at {rules}")
    text = rules.read_text(encoding="utf-8")
    absent = [key for key in args.get("keys", []) if f"-k {key}" not in text]
    if absent:
        return FAIL, f"{rules} has no rule with key {', '.join(absent)}"
    status = run(args.get("status_command", ["auditctl", "-s"]))
    if status.returncode:
        why = (status.stderr or status.stdout).strip() or f"exit {status.returncode}"
        return NA, (
            f"auditd not applicable in a container: the kernel refuses audit control "
            f"({why}); the rules are installed in {rules}"
        )
    props = unit_properties("auditd.service", ["ActiveState"])
    if props.get("ActiveState") != "active":
        return FAIL, f"the kernel allows audit control but auditd is {props.get('ActiveState')}"
    loaded = run(args.get("list_command", ["auditctl", "-l"])).stdout
    unloaded = [key for key in args.get("keys", []) if f"key={key}" not in loaded]
    if unloaded:
        return FAIL, f"auditd runs but the rules with key {', '.join(unloaded)} are not loaded"
    return PASS, f"auditd active, rules {', '.join(args.get('keys', []))} loaded from {rules}"


def check_password_ageing(args: dict) -> tuple[str, str]:
    """Every human account (UID in the range) with a usable password ages."""
    shadow_path = args.get("shadow", "/etc/shadow")
    shadow = {
        fields[0]: fields
        for fields in (
            line.split(":") for line in Path(shadow_path).read_text(encoding="utf-8").splitlines()
        )
        if len(fields) >= 5
    }
    low, high = int(args.get("uid_min", 1000)), int(args.get("uid_max", 60000))
    exempt = set(args.get("exempt") or [])
    problems, aged = [], []
    for line in Path(args.get("passwd", "/etc/passwd")).read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if len(fields) < 7 or not fields[2].isdigit() or not low <= int(fields[2]) <= high:
            continue
        name = fields[0]
        entry = shadow.get(name)
        if name in exempt or entry is None or not entry[1].startswith("$"):
            continue
        max_days = entry[4]
        if not max_days.isdigit() or int(max_days) > int(args["max_days"]):
            problems.append(
                f"{name}'s password never expires within {args['max_days']} days "
                f"(max {max_days or 'unset'})"
            )
        else:
            aged.append(f"{name} ({max_days} days)")
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, (
        f"human accounts with a password aged: {', '.join(aged)}"
        if aged
        else "no human account with a usable password"
    )


CHECKS = {
    "file": check_file,
    "unit": check_unit,
    "certificate": check_certificate,
    "key_age": check_key_age,
    "mosquitto": check_mosquitto,
    "postgresql": check_postgresql,
    "nftables": check_nftables,
    "backup": check_backup,
    "container_runtime": check_container_runtime,
    "user": check_user,
    "file_regex": check_file_regex,
    "command": check_command,
    "sshd": check_sshd,
    "auditd": check_auditd,
    "password_ageing": check_password_ageing,
}


def applies(groups: list[str], wanted: list[str]) -> bool:
    return bool(set(groups) & set(wanted))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "checklist": {"type": "list", "elements": "dict", "required": True},
            "groups": {"type": "list", "elements": "str", "required": True},
            "kind": {"type": "str", "default": "host", "choices": ["host", "control"]},
        },
        supports_check_mode=True,
    )
    groups, kind = module.params["groups"], module.params["kind"]
    results = []
    for item in module.params["checklist"]:
        if not applies(groups, item["applies_to"]):
            continue
        for index, check in enumerate(item.get("checks", []), start=1):
            if check.get("where", "host") != kind:
                continue
            if not applies(groups, check.get("groups", item["applies_to"])):
                continue
            handler = CHECKS.get(check["type"])
            if handler is None:
                module.fail_json(msg=f"{item['id']} check {index}: unknown type {check['type']}")
            try:
                status, reason = handler(check.get("args", {}))
            except (CheckError, OSError, ValueError, KeyError) as error:
                status, reason = FAIL, f"could not check: {error}"
            results.append(
                {
                    "item": item["id"],
                    "check": f"{item['id']}.{index}",
                    "name": check["name"],
                    "status": status,
                    "reason": reason,
                }
            )
    module.exit_json(changed=False, results=results)


if __name__ == "__main__":
    main()
