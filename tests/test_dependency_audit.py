"""tools/dependency_audit.py: never reports "clean" for packages it could not audit."""

from __future__ import annotations

import re
import subprocess
import sys

from dependency_audit import BAD_INPUT, CLEAN, UNREACHABLE, VULNERABLE, package_dependencies


def audit(repo_root, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "dependency_audit.py"), *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_missing_lock_file_is_bad_input(repo_root, tmp_path):
    result = audit(repo_root, str(tmp_path / "requirements.lock"))
    assert result.returncode == BAD_INPUT
    assert "no such requirements or lock file" in result.stderr


def test_the_package_dependencies_are_pinned_to_what_is_installed(repo_root):
    pinned = package_dependencies(repo_root)
    names = {line.split("==")[0] for line in pinned}
    assert {"fastapi", "sqlalchemy", "cryptography", "starlette", "pydantic-core"} <= names
    assert all(re.fullmatch(r"[a-z0-9-]+==\S+", line) for line in pinned), pinned


def test_packages_not_audited_are_never_reported_clean(repo_root):
    """Whatever the vulnerability database answers here, the exit code tells the truth."""
    result = audit(repo_root, "--package", ".", "requirements-dev.txt")
    summary = result.stdout.strip().splitlines()[-1]
    not_audited = sum(int(n) for n in re.findall(r"(\d+) not audited", result.stdout))
    assert result.returncode in (CLEAN, VULNERABLE, UNREACHABLE), result.stdout + result.stderr
    if not_audited:
        assert result.returncode in (VULNERABLE, UNREACHABLE)
    if result.returncode == UNREACHABLE:
        assert summary.startswith("audit: NOT DONE: the pypi vulnerability database")
    if result.returncode == CLEAN:
        assert not_audited == 0 and "no known vulnerability" in summary
