"""The test servers are the real thing, and survive a stop and a start."""

from __future__ import annotations

import subprocess

import pytest
from services import MosquittoBroker, PostgresServer, postgres_bindir
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError


def test_postgres_server_is_postgresql_and_survives_a_restart(
    postgres_server: PostgresServer,
) -> None:
    engine = create_engine(postgres_server.create_database(), pool_pre_ping=True)
    try:
        with engine.begin() as connection:
            # The control node's own major (15 on Debian 12, 17 on Debian 13).
            major = postgres_bindir().parent.name
            version = connection.execute(text("select version()")).scalar_one()
            assert version.startswith(f"PostgreSQL {major}"), version
            connection.execute(text("create table kept (value text)"))
            connection.execute(text("insert into kept values ('before the restart')"))

        postgres_server.stop()
        try:
            with pytest.raises(OperationalError), engine.connect() as connection:
                connection.execute(text("select 1"))
        finally:
            postgres_server.start()

        with engine.connect() as connection:
            assert connection.execute(text("select value from kept")).scalar_one() == (
                "before the restart"
            )
    finally:
        engine.dispose()


def test_create_database_gives_a_fresh_database_each_time(
    postgres_server: PostgresServer,
) -> None:
    assert postgres_server.create_database() != postgres_server.create_database()


def test_mosquitto_broker_relays_a_message(mosquitto_broker: MosquittoBroker) -> None:
    where = ["-h", mosquitto_broker.host, "-p", str(mosquitto_broker.port), "-t", "probe"]
    subscriber = subprocess.Popen(
        ["mosquitto_sub", *where, "-C", "1"], stdout=subprocess.PIPE, text=True
    )
    try:
        # mosquitto_sub takes a moment to subscribe: publish retained so it is not missed.
        subprocess.run(
            ["mosquitto_pub", *where, "-m", "hello", "-r", "-q", "1"], check=True, timeout=30
        )
        output, _ = subscriber.communicate(timeout=30)
    finally:
        subscriber.kill()
        # An empty retained message clears the retained one.
        subprocess.run(["mosquitto_pub", *where, "-r", "-n"], check=True, timeout=30)
    assert output.strip() == "hello"
