"""Shared helpers: run the project's Ansible as a user would, from the repo root."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Real PostgreSQL and Mosquitto servers (tests/services.py).
pytest_plugins = ["services"]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def run_ansible(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run an Ansible command with the project's ansible.cfg and a private report dir."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
            "PDSNO_REPORT_DIR": str(tmp_path / "reports"),
            **(env or {}),
        }
        return subprocess.run(
            list(args),
            cwd=REPO_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run


@pytest.fixture(params=["sqlite", "postgresql"])
def nib_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty NIB database URL, once per backend."""
    if request.param == "postgresql":
        # Requested lazily, so that SQLite-only runs never start PostgreSQL.
        return request.getfixturevalue("postgres_server").create_database()
    return f"sqlite:///{tmp_path / 'nib.db'}"


@pytest.fixture
def nib_engine(nib_url: str):
    """An engine on a fresh NIB with the schema at head."""
    from pdsno.nib.engine import create_nib_engine, upgrade

    engine = create_nib_engine(nib_url)
    upgrade(engine)
    yield engine
    engine.dispose()
