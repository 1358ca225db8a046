#!/usr/bin/env python3
"""Build the offline wheelhouse of the pdsno controller for the managed hosts.

The hosts' Python and platform, not this machine's: pip download with
--python-version/--platform/--only-binary, every wheel checked against a
hash-pinned lock (--require-hashes). Hosts install from it with --no-index.

  pdsno_wheelhouse.py lock  --source DIR --lock FILE [target options]
      resolve pdsno's dependencies for the target and write the lock
  pdsno_wheelhouse.py build --source DIR --lock FILE --out DIR [target options]
      the pdsno wheel plus the locked wheels in DIR, and DIR/requirements.lock
      (the lock with pdsno's own wheel and hash): what the hosts install,
      also packed as DIR/wheelhouse.tar
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

LEGACY_MANYLINUX = {(2, 5): "manylinux1", (2, 12): "manylinux2010", (2, 17): "manylinux2014"}


def platforms(glibc: str, arch: str) -> list[str]:
    """Every manylinux tag a host with this glibc accepts (pip does not expand them)."""
    major, minor = (int(part) for part in glibc.split("."))
    tags = []
    for version in range(minor, 4, -1):
        tags.append(f"manylinux_{major}_{version}_{arch}")
        legacy = LEGACY_MANYLINUX.get((major, version))
        if legacy:
            tags.append(f"{legacy}_{arch}")
    return tags


def target_options(args: argparse.Namespace) -> list[str]:
    options = ["--only-binary", ":all:", "--python-version", args.python_version]
    options += ["--implementation", "cp"]
    for tag in platforms(args.glibc, args.arch):
        options += ["--platform", tag]
    return options


def pip(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    result = subprocess.run(command, check=False, capture_output=True, text=True)  # noqa: S603
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr[-4000:]}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def write_lock(wheels: list[Path], lock: Path, header: str) -> None:
    lines = [header]
    for wheel in sorted(wheels, key=lambda w: wheel_name_version(w)[0]):
        name, version = wheel_name_version(wheel)
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{sha256(wheel)}")
    lock.write_text("\n".join(lines) + "\n")


def cmd_lock(args: argparse.Namespace) -> None:
    project = tomllib.loads((args.source / "pyproject.toml").read_text())["project"]
    with tempfile.TemporaryDirectory() as scratch:
        pip("download", "--dest", scratch, *target_options(args), *project["dependencies"])
        wheels = sorted(Path(scratch).glob("*.whl"))
        write_lock(
            wheels,
            args.lock,
            f"# The pdsno controller's dependencies for CPython {args.python_version}, "
            f"glibc {args.glibc}, {args.arch}\n"
            f"# (roles/pdsno_controller/files/pdsno_wheelhouse.py lock); pip checks every hash.",
        )
    print(f"wrote {args.lock}: {len(wheels)} wheels")


def cmd_build(args: argparse.Namespace) -> None:
    if args.out.exists():
        shutil.rmtree(args.out)
    partial = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # The lock is what the hosts trust: every downloaded wheel must match it.
    pip(
        "download",
        "--dest",
        str(partial),
        "--no-deps",
        "--require-hashes",
        "-r",
        str(args.lock),
        *target_options(args),
    )
    pip("wheel", "--no-deps", "--wheel-dir", str(partial), str(args.source))
    own = [w for w in partial.glob("pdsno-*.whl")]
    if len(own) != 1:
        sys.exit(f"error: expected one pdsno wheel in {partial}, found {len(own)}")
    lock = args.lock.read_text().rstrip("\n")
    name, version = wheel_name_version(own[0])
    lock += f"\n{name}=={version} \\\n    --hash=sha256:{sha256(own[0])}\n"
    (partial / "requirements.lock").write_text(lock)
    # One file to copy to each host (a directory costs a round trip a file).
    with tarfile.open(partial / "wheelhouse.tar", "w") as archive:
        for path in sorted(partial.iterdir()):
            if path.name != "wheelhouse.tar":
                archive.add(path, arcname=path.name)
    partial.rename(args.out)
    print(f"wrote {args.out}: pdsno {version} and {len(list(args.out.glob('*.whl'))) - 1} wheels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["lock", "build"])
    parser.add_argument("--source", type=Path, required=True, help="the pdsno source tree")
    parser.add_argument("--lock", type=Path, required=True, help="the hash-pinned lock")
    parser.add_argument("--out", type=Path, help="the wheelhouse to write (build)")
    parser.add_argument("--python-version", default="3.11", help="the hosts' Python")
    parser.add_argument("--glibc", default="2.36", help="the hosts' glibc (Debian 12: 2.36)")
    parser.add_argument("--arch", default="x86_64", help="the hosts' machine")
    args = parser.parse_args()
    if args.command == "lock":
        cmd_lock(args)
    else:
        if args.out is None:
            parser.error("build needs --out")
        cmd_build(args)


if __name__ == "__main__":
    main()
