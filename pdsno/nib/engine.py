"""Connecting to the NIB and bringing its schema up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from pdsno.errors import ConfigurationError

MIGRATIONS = Path(__file__).parent / "migrations"


def create_nib_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """An engine for `url` (postgresql+psycopg2://... or sqlite:///path)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"Unsupported NIB database {parsed.get_backend_name()!r}: "
            "set PDSNO_DB_URL to postgresql+psycopg2://... or sqlite:///path"
        )
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=3600,
    )


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy's "begin" below open the transaction itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: object) -> None:
        # Several controller processes may share one SQLite file: take the
        # write lock up front so that a transaction never fails half-way
        # on "database is locked".
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # type: ignore[attr-defined]

    return engine


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None, "the package ships no migration"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the schema to the newest revision; running it again changes nothing."""
    command.upgrade(_alembic_config(engine), "head")
    return head_revision()


def require_current_schema(engine: Engine) -> None:
    current = current_revision(engine)
    if current != head_revision():
        raise ConfigurationError(
            f"The NIB schema is at revision {current or 'none'}, this pdsno needs "
            f"{head_revision()}: run `pdsno db upgrade` with the same PDSNO_DB_URL."
        )
