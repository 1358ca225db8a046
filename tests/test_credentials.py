# ruff: noqa: S105, S106 (test values, not secrets)
"""Secrets from systemd credentials ($CREDENTIALS_DIRECTORY), never the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pdsno.config import load_settings
from pdsno.credentials import apply_credentials, read_credentials, with_password
from pdsno.errors import ConfigurationError

MASTER_KEY = "ab" * 32


def write_credentials(directory: Path, **values: str) -> dict[str, str]:
    directory.mkdir(mode=0o700, exist_ok=True)
    for name, value in values.items():
        (directory / name).write_text(value + "\n")
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def test_no_credentials_directory_means_no_credentials() -> None:
    assert read_credentials({}) == {}


def test_empty_and_unknown_credentials_are_ignored(tmp_path: Path) -> None:
    environ = write_credentials(tmp_path / "creds", bootstrap_token="", other="x")
    assert read_credentials(environ) == {}


def test_settings_take_the_database_password_and_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = write_credentials(
        tmp_path / "creds",
        db_password="s3cr%t/p@ss",
        bootstrap_token="pdsno-bt-abc",
        master_key=MASTER_KEY,
    )
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PDSNO_MASTER_KEY", "placeholder")  # restored after the test
    monkeypatch.delenv("PDSNO_MASTER_KEY")
    config = tmp_path / "controller.yaml"
    config.write_text(
        "db_url: postgresql+psycopg2://pdsno@db1:5432/pdsno?sslmode=verify-full\n"
        "key_file: /nonexistent\n"
    )
    settings = load_settings(config)
    url = make_url(settings.db_url)
    assert url.password == "s3cr%t/p@ss"
    assert url.username == "pdsno"
    assert url.query["sslmode"] == "verify-full"
    assert settings.bootstrap_token is not None
    assert settings.bootstrap_token.get_secret_value() == "pdsno-bt-abc"
    assert os.environ["PDSNO_MASTER_KEY"] == MASTER_KEY


def test_a_password_in_the_url_and_the_credential_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="remove the password from db_url"):
        with_password("postgresql+psycopg2://pdsno:old@db1/pdsno", "new")


def test_a_token_in_the_settings_wins_over_the_credential(tmp_path: Path) -> None:
    environ = write_credentials(tmp_path / "creds", bootstrap_token="from-credential")
    settings = load_settings(None, bootstrap_token="explicit")
    apply_credentials(settings, dict(environ))
    assert settings.bootstrap_token is not None
    assert settings.bootstrap_token.get_secret_value() == "explicit"


def test_an_unreadable_credential_names_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "creds"
    directory.mkdir()
    (directory / "db_password").mkdir()  # a directory cannot be read as a file
    with pytest.raises(ConfigurationError, match="db_password"):
        read_credentials({"CREDENTIALS_DIRECTORY": str(directory)})
