"""The tests find the PostgreSQL server binaries of whatever major the control node has."""

from __future__ import annotations

import subprocess
from pathlib import Path

from services import find_postgres_bindir, postgres_bindir

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")


def fake_major(root: Path, version: str, binaries: tuple[str, ...] = SERVER_BINARIES) -> Path:
    bindir = root / version / "bin"
    bindir.mkdir(parents=True)
    for name in binaries:
        (bindir / name).write_text("")
    return bindir


def fake_pg_config(tmp_path: Path, bindir: Path) -> str:
    script = tmp_path / "pg_config"
    script.write_text(f"#!/bin/sh\necho {bindir}\n")
    script.chmod(0o755)
    return str(script)


def test_newest_major_wins_in_numeric_order(tmp_path: Path) -> None:
    root = tmp_path / "postgresql"
    fake_major(root, "9.6")
    fake_major(root, "15")
    newest = fake_major(root, "17")
    assert find_postgres_bindir(root, pg_config="") == newest


def test_a_major_without_its_server_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "postgresql"
    server = fake_major(root, "15")
    fake_major(root, "17", binaries=("psql",))  # client only
    assert find_postgres_bindir(root, pg_config="") == server


def test_pg_config_wins_when_it_names_a_server(tmp_path: Path) -> None:
    root = tmp_path / "postgresql"
    named = fake_major(root, "15")
    fake_major(root, "17")
    assert find_postgres_bindir(root, pg_config=fake_pg_config(tmp_path, named)) == named


def test_pg_config_naming_no_server_falls_back(tmp_path: Path) -> None:
    # libpq-dev's pg_config names the bindir of the libpq's major, server or not.
    root = tmp_path / "postgresql"
    server = fake_major(root, "15")
    absent = tmp_path / "elsewhere" / "18" / "bin"
    assert find_postgres_bindir(root, pg_config=fake_pg_config(tmp_path, absent)) == server


def test_nothing_found_is_none(tmp_path: Path) -> None:
    assert find_postgres_bindir(tmp_path / "postgresql", pg_config="") is None


def test_this_control_node_has_a_working_server() -> None:
    bindir = postgres_bindir()
    result = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("postgres (PostgreSQL) "), result.stdout
    assert f"(PostgreSQL) {bindir.parent.name}" in result.stdout
