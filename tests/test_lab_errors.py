"""When `make lab-image` fails, its error names what to install.

The failure of a fresh machine is reproduced for real: podman starts a
container while netavark cannot find iptables (the sbin directories are left
out of PATH, as if the package were not installed). lab/containers-conf.sh
must then name the package, not only repeat netavark's "No such file or
directory".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

LAB_IMAGE = "localhost/pdsno-lab-debian12:latest"


def containers_conf(repo_root: Path, out: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(repo_root / "lab/containers-conf.sh"), LAB_IMAGE, str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        check=False,
        timeout=300,
    )


def test_missing_iptables_is_named_with_its_package(repo_root: Path, tmp_path: Path) -> None:
    if not (repo_root / ".lab/containers.conf").is_file():
        pytest.fail("the lab image is missing: run `make lab-image` (make test does)")
    path = os.pathsep.join(
        part for part in os.environ["PATH"].split(os.pathsep) if not part.endswith("sbin")
    )
    result = containers_conf(repo_root, tmp_path / "containers.conf", path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "netavark" in result.stderr, result.stderr  # podman's own error, kept
    assert "apt package iptables" in result.stderr, result.stderr
    assert "make deps" in result.stderr, result.stderr


def test_missing_podman_is_named(repo_root: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a shell and its tools, no podman
    bin_dir.mkdir()
    for tool in ("bash", "mkdir", "dirname", "cat", "grep", "rm", "mv"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    result = containers_conf(repo_root, tmp_path / "containers.conf", str(bin_dir))
    assert result.returncode == 1
    assert "podman is not installed" in result.stderr, result.stderr
    assert "make deps" in result.stderr


def test_preflight_names_each_missing_package(repo_root: Path) -> None:
    path = os.pathsep.join(
        part for part in os.environ["PATH"].split(os.pathsep) if not part.endswith("sbin")
    )
    result = subprocess.run(
        [str(repo_root / "lab/preflight.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "iptables (apt package iptables)" in result.stderr, result.stderr
    assert "debootstrap (apt package debootstrap)" in result.stderr, result.stderr
    assert "make deps" in result.stderr


def test_preflight_passes_on_this_machine(repo_root: Path) -> None:
    result = subprocess.run(
        [str(repo_root / "lab/preflight.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
