#!/usr/bin/env python3
"""Audit pinned Python dependencies for known vulnerabilities, with pip-audit.

    tools/dependency_audit.py [--service pypi|osv] [--package DIR] [FILE ...]

FILE: pinned requirements (`name==version`, as requirements-dev.txt) or a
hash-checked lock (`--hash=` lines, as pip-compile --generate-hashes writes;
audited with --require-hashes). --package DIR: the installed versions of the
package's own dependencies (its pyproject.toml names ranges; what is audited
is what this environment resolved them to), and theirs, recursively.

Exit codes, so that CI can tell "vulnerable" from "could not look":
  0  every dependency was audited and none has a known vulnerability
  1  at least one known vulnerability (listed, with the fixed versions)
  2  bad input: a file that does not exist, pip-audit missing
  3  the vulnerability database could not be reached, or did not answer for
     some packages: those were NOT audited (listed). Never reported as clean.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CLEAN, VULNERABLE, BAD_INPUT, UNREACHABLE = 0, 1, 2, 3
# pip-audit's reasons for a package it could not look up: the service had no answer.
NOT_AUDITED = re.compile(r"not found on PyPI|could not be audited|connection|timed out", re.I)


def package_dependencies(project: Path) -> list[str]:
    """`name==version` for the installed closure of the project's dependencies."""
    import tomllib

    data = tomllib.loads((project / "pyproject.toml").read_text())
    name = data["project"]["name"]
    pending = [Requirement(spec) for spec in data["project"].get("dependencies", [])]
    pinned: dict[str, str] = {}
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(requirement.name)
        if key in pinned or key == canonicalize_name(name):
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"{requirement.name} (a dependency of {name}) is not installed: run `make deps`"
            ) from None
        pinned[key] = distribution.version
        pending += [Requirement(spec) for spec in distribution.requires or []]
    return [f"{key}=={version}" for key, version in sorted(pinned.items())]


def run_pip_audit(requirements: Path, service: str) -> tuple[dict | None, str]:
    """pip-audit's JSON report of one requirements file, or None and why not."""
    hashed = "--hash=" in requirements.read_text()
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--requirement",
        str(requirements),
        "--disable-pip",  # the files are pinned: audit them as written, resolve nothing
        "--require-hashes" if hashed else "--no-deps",
        "--vulnerability-service",
        service,
        "--format",
        "json",
        "--progress-spinner",
        "off",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    try:
        return json.loads(result.stdout), result.stderr
    except json.JSONDecodeError:
        return None, (result.stderr or result.stdout).strip()


def audit(label: str, requirements: Path, service: str) -> tuple[int, int, list[str]]:
    """(vulnerabilities, packages audited, packages not audited), printed as it goes."""
    report, errors = run_pip_audit(requirements, service)
    if report is None:
        last = errors.splitlines()[-1] if errors else "no output"
        print(f"  {label}: the {service} vulnerability database did not answer: {last}")
        return 0, 0, [f"{label}: everything"]
    found = 0
    audited = 0
    not_audited = []
    for dependency in report.get("dependencies", []):
        reason = dependency.get("skip_reason")
        if reason:
            if NOT_AUDITED.search(reason):
                not_audited.append(f"{dependency['name']} ({reason})")
            continue
        audited += 1
        for vulnerability in dependency.get("vulns", []):
            found += 1
            fixed = ", ".join(vulnerability.get("fix_versions") or []) or "no fixed version"
            print(
                f"  VULNERABLE {dependency['name']} {dependency.get('version', '')}: "
                f"{vulnerability['id']} (fixed in {fixed})"
            )
    print(
        f"  {label}: {audited} audited, {found} known vulnerabilities, "
        f"{len(not_audited)} not audited"
    )
    return found, audited, not_audited


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="pinned requirements or lock files")
    parser.add_argument("--package", type=Path, help="a project whose dependencies to audit")
    parser.add_argument("--service", choices=("pypi", "osv"), default="pypi")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"no such requirements or lock file: {', '.join(missing)}", file=sys.stderr)
        return BAD_INPUT
    try:
        import pip_audit  # noqa: F401
    except ImportError:
        print("pip-audit is not installed: run `make deps`", file=sys.stderr)
        return BAD_INPUT

    total_found, total_audited, total_missing = 0, 0, []
    with tempfile.TemporaryDirectory() as scratch:
        inputs = [(str(path), path) for path in args.files]
        if args.package is not None:
            pinned = Path(scratch) / "package-dependencies.txt"
            pinned.write_text("\n".join(package_dependencies(args.package)) + "\n")
            inputs.append((f"dependencies of {args.package.resolve().name}", pinned))
        print(f"pip-audit, vulnerability database: {args.service}")
        for label, path in inputs:
            found, audited, not_audited = audit(label, path, args.service)
            total_found += found
            total_audited += audited
            total_missing += not_audited
    if total_found:
        print(f"audit: {total_found} known vulnerabilities: upgrade the packages above")
        return VULNERABLE
    if total_missing:
        print(
            f"audit: NOT DONE: the {args.service} vulnerability database could not be reached "
            f"or had no answer for {len(total_missing)} package(s), which were not audited "
            f"({total_audited} were, with no known vulnerability). Not audited: "
            + "; ".join(total_missing[:10])
            + (" ..." if len(total_missing) > 10 else "")
        )
        return UNREACHABLE
    print(f"audit: {total_audited} packages audited, no known vulnerability")
    return CLEAN


if __name__ == "__main__":
    sys.exit(main())
