"""`make deps` installs every program the two commands run, on a fresh Debian.

A fresh machine has only Debian's required packages. `make deps` adds
APT_PACKAGES with `--no-install-recommends`, so whatever a tool needs only
as a Recommends (netavark needs iptables, for one) is absent there although
it is present on a development machine. Each program the lab's tools,
podman's network stack and the tests execute is traced to the Debian package
that ships it (dpkg -S), and that package must be among what apt would
install on a fresh machine: the required packages, plus what
`apt-get install --no-install-recommends $(APT_PACKAGES)` picks, as apt's own
resolver decides it (simulated against a status file that lists only the
required packages and their dependencies).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from services import find_postgres_bindir

REPO = Path(__file__).resolve().parent.parent

# Where a fresh Debian's programs are: this machine's PATH may hold others
# (a virtualenv, pyenv) that a fresh machine does not have.
SYSTEM_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Where podman looks for its helpers (helper_binaries_dir), Debian 12 and 13.
PODMAN_HELPER_DIRS = ("/usr/lib/podman", "/usr/libexec/podman")

# (program or path, who runs it and why). A program is looked up in PATH,
# then in podman's helper directories; a path may be a glob.
NEEDED: tuple[tuple[str, str], ...] = (
    ("podman", "make lab-image and every molecule scenario start containers"),
    ("conmon", "podman runs one per container"),
    ("runc", "the OCI runtime lab/containers-conf.sh selects (crun fails under hybrid cgroups)"),
    ("netavark", "podman's network backend: the lab and scenario networks"),
    ("aardvark-dns", "DNS between the hosts of a lab network"),
    ("iptables", "netavark's iptables firewall driver (Debian 12's netavark uses it)"),
    ("ip6tables", "netavark's iptables firewall driver, IPv6 side"),
    ("nft", "netavark's nftables firewall driver (a build-time default in newer netavark)"),
    ("debootstrap", "lab/build-image.sh builds the lab's rootfs"),
    ("gpgv", "debootstrap verifies the Release file's signature"),
    ("wget", "debootstrap downloads the packages"),
    ("perl", "debootstrap resolves package details"),
    ("/usr/share/keyrings/debian-archive-keyring.gpg", "debootstrap's keyring for Debian"),
    ("chroot", "lab/build-image.sh configures the rootfs"),
    ("tar", "lab/build-image.sh packs the rootfs for podman import"),
    ("sha256sum", "lab/build-image.sh tags the image with its recipe's hash"),
    ("awk", "lab/build-image.sh reads the apt mirrors"),
    ("xargs", "lab/build-image.sh removes older images"),
    ("python3", "the Makefile makes .venv with it"),
    ("/usr/share/python-wheels/pip-*.whl", "python3 -m venv seeds pip into .venv"),
    ("ssh", "Ansible's connection to the lab hosts"),
    ("sftp", "Ansible copies files over SFTP"),
    ("scp", "Ansible's fallback file transfer"),
    ("ssh-keygen", "community.crypto.openssh_keypair makes the lab's SSH key"),
    ("mosquitto", "tests/services.py starts a real broker"),
    ("mosquitto_pub", "tests/test_services.py publishes"),
    ("mosquitto_sub", "tests/test_services.py subscribes"),
    ("promtool", "tests/test_alert_rules.py checks the alerting rules"),
    ("wrk", "make bench loads the API"),
)
POSTGRES_SERVER = ("initdb", "pg_ctl", "postgres")


def apt_packages() -> list[str]:
    """APT_PACKAGES, as the Makefile defines it."""
    match = re.search(r"^APT_PACKAGES\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "the Makefile defines no APT_PACKAGES"
    return match.group(1).split()


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


@functools.cache
def required_packages() -> frozenset[str]:
    """Debian's required (and essential) packages with their dependencies.

    A minimal install (debootstrap --variant=minbase, the debian images) has
    exactly these; on a development machine they are all installed.
    """
    seeds = [
        name
        for name, essential, priority in (
            line.split("\t")
            for line in run(
                "dpkg-query", "-W", "-f=${Package}\t${Essential}\t${Priority}\n"
            ).splitlines()
        )
        if essential == "yes" or priority == "required"
    ]
    closure = run(
        "apt-cache", "depends", "--recurse", "--installed", "--no-recommends", "--no-suggests",
        "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *seeds,
    )  # fmt: skip
    return frozenset(line for line in closure.splitlines() if line and line[0] not in " <")


@functools.cache
def fresh_machine_packages() -> frozenset[str]:
    """The packages a fresh machine has after `make deps`'s apt-get install."""
    base = required_packages()
    stanzas = Path("/var/lib/dpkg/status").read_text().split("\n\n")
    fresh_status = "\n\n".join(
        stanza
        for stanza in stanzas
        if stanza.startswith("Package: ") and stanza.split("\n", 1)[0][9:] in base
    )
    with tempfile.NamedTemporaryFile("w", prefix="pdsno-fresh-status-") as status_file:
        status_file.write(fresh_status + "\n")
        status_file.flush()
        simulation = run(
            "apt-get", "--simulate", "--no-install-recommends",
            "-o", f"Dir::State::status={status_file.name}",
            "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
            "install", *apt_packages(),
        )  # fmt: skip
    installed = {line.split()[1] for line in simulation.splitlines() if line.startswith("Inst ")}
    return base | installed


def locate(program: str) -> list[Path]:
    """The files a program or path pattern stands for on this machine."""
    if program.startswith("/"):
        return sorted(Path("/").glob(program.lstrip("/")))
    search = os.pathsep.join([*SYSTEM_PATH, *PODMAN_HELPER_DIRS])
    found = shutil.which(program, path=search)
    return [Path(found)] if found else []


def owning_package(path: Path) -> str | None:
    """The Debian package that ships a file, following symlinks and alternatives.

    dpkg records a file as its package shipped it: /bin/x and /usr/bin/x are
    the same file since the /usr merge, so both names are asked.
    """
    real = path.resolve()
    names = {str(real), str(path)}
    for name in list(names):
        if name.startswith("/usr/"):
            names.add(name[len("/usr") :])
        else:
            names.add("/usr" + name)
    for name in sorted(names):
        result = subprocess.run(
            ["dpkg-query", "-S", name], capture_output=True, text=True, check=False
        )
        for line in result.stdout.splitlines():
            if line.startswith("diversion by"):
                continue
            packages, _, owned = line.partition(": ")
            if owned == name:
                return packages.split(",")[0].strip().split(":")[0]
    return None


def needed_files() -> list[object]:
    files = [(program, why, locate(program)) for program, why in NEEDED]
    bindir = find_postgres_bindir()
    for name in POSTGRES_SERVER:
        path = [bindir / name] if bindir and (bindir / name).is_file() else []
        files.append((name, "tests/services.py runs a real PostgreSQL", path))
    return [pytest.param(*file, id=Path(file[0]).name) for file in files]


@pytest.mark.parametrize(("program", "why", "paths"), needed_files())
def test_make_deps_installs(program: str, why: str, paths: list[Path]) -> None:
    assert paths, (
        f"{program} is not on this machine ({why}). Run `make deps`; if it is installed "
        "and still missing, add its package to APT_PACKAGES in the Makefile."
    )
    package = owning_package(paths[0])
    assert package, f"{paths[0]} ({program}: {why}) belongs to no Debian package"
    assert package in fresh_machine_packages(), (
        f"{program} ({why}) comes from the package {package}, which `make deps` does not "
        f"install on a fresh machine (at most a Recommends of APT_PACKAGES): add {package} "
        "to APT_PACKAGES in the Makefile."
    )
