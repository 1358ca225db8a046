"""Health endpoints against real NIBs and a real broker: outages and recoveries."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from test_middleware import (
    asgi_client,
    assert_security_headers,
    controller_app,
    new_sqlite_nib,
    run,
    serve,
)

from pdsno import __version__
from pdsno.api.routes.health import NibProbe
from pdsno.config import MqttSettings
from pdsno.events.publisher import OutboxPublisher
from pdsno.nib.engine import create_nib_engine, upgrade


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return new_sqlite_nib(tmp_path_factory)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_health_live_and_ready_on_a_healthy_controller(sqlite_url):
    with controller_app(sqlite_url) as (app, _), serve(app) as url:
        health = httpx.get(url + "/health")
        live = httpx.get(url + "/health/live")
        ready = httpx.get(url + "/health/ready")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy"
    assert body["version"] == __version__
    assert body["controller_id"] == "gc-1" and body["controller_type"] == "global"
    assert body["timestamp"].endswith("Z") or body["timestamp"].endswith("+00:00")
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"nib": "ok", "broker": "disabled"},
        "failed": [],
    }
    for response in (health, live, ready):
        assert_security_headers(response)


def test_readiness_follows_postgresql_down_and_back_without_a_restart(postgres_server):
    db_url = postgres_server.create_database()
    engine = create_nib_engine(db_url)
    upgrade(engine)
    engine.dispose()
    with controller_app(db_url) as (app, _), serve(app) as url:
        try:
            for _ in range(3):  # pooled connections that the outage will break
                assert httpx.get(url + "/health/ready").status_code == 200

            postgres_server.stop()
            ready = httpx.get(url + "/health/ready", timeout=10)
            health = httpx.get(url + "/health", timeout=10)
            live = httpx.get(url + "/health/live")

            postgres_server.start()
            started = time.monotonic()
            wait_until(
                lambda: httpx.get(url + "/health/ready", timeout=10).status_code == 200,
                "readiness after PostgreSQL came back",
            )
            recovered_after = time.monotonic() - started
            health_after = httpx.get(url + "/health")
        finally:
            postgres_server.start()  # the server is the session's: leave it running
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "5"
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["failed"] == ["nib"]
    assert ready.json()["checks"]["nib"].startswith("unreachable")
    assert ready.json()["checks"]["broker"] == "disabled"
    assert "127.0.0.1" not in ready.text and "postgres" not in ready.text  # no connection details
    assert_security_headers(ready)
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert live.status_code == 200  # the process answers: no restart wanted
    assert recovered_after < 10
    assert health_after.status_code == 200


def test_readiness_requires_the_broker_when_mqtt_is_on(sqlite_url, mosquitto_broker):
    mqtt = {"enabled": True, "host": mosquitto_broker.host, "port": mosquitto_broker.port}
    engine = create_nib_engine(sqlite_url)
    publisher = OutboxPublisher(
        engine,
        MqttSettings(**mqtt, reconnect_min_seconds=0.2, reconnect_max_seconds=1.0),
        client_id=f"health-{uuid.uuid4().hex[:8]}",
    )
    try:
        with controller_app(sqlite_url, mqtt=mqtt) as (app, _):
            not_started = run(_ready(app))
        publisher.start()
        wait_until(lambda: publisher.connected, "the publisher's connection")
        with controller_app(sqlite_url, mqtt=mqtt, publisher=publisher) as (app, _):
            connected = run(_ready(app))
            mosquitto_broker.stop()
            try:
                wait_until(lambda: not publisher.connected, "the publisher to notice")
                disconnected = run(_ready(app))
            finally:
                mosquitto_broker.start()
            wait_until(lambda: publisher.connected, "the publisher's reconnection")
            reconnected = run(_ready(app))
    finally:
        publisher.stop()
        engine.dispose()
        mosquitto_broker.start()
    assert not_started.status_code == 503
    assert not_started.json()["checks"]["broker"] == "not started"
    assert connected.status_code == 200
    assert connected.json()["checks"] == {"nib": "ok", "broker": "ok"}
    assert disconnected.status_code == 503
    assert disconnected.json()["failed"] == ["broker"]
    assert disconnected.json()["checks"]["broker"] == "disconnected"
    assert disconnected.headers["retry-after"] == "5"
    assert reconnected.status_code == 200


async def _ready(app) -> httpx.Response:
    async with asgi_client(app) as client:
        return await client.get("/health/ready")


def test_a_hanging_nib_is_reported_within_the_timeout_by_one_thread(sqlite_url):
    """A NIB that does not answer (here: a SQLite write lock held elsewhere,
    which the NIB engine waits 30 s for) costs a probe its timeout, not 30 s,
    and concurrent probes share one checking thread."""
    path = sqlite_url.removeprefix("sqlite:///")
    with controller_app(sqlite_url) as (app, ctx):
        app.state.nib_probe = NibProbe(ctx.engine, timeout=0.5)
        holder = sqlite3.connect(path, isolation_level=None, timeout=5)
        holder.execute("BEGIN IMMEDIATE")
        try:

            async def probes() -> tuple[list[httpx.Response], float, int]:
                async with asgi_client(app) as client:
                    started = time.monotonic()
                    responses = await asyncio.gather(
                        *(client.get("/health/ready") for _ in range(5)),
                        client.get("/health/live"),
                    )
                    elapsed = time.monotonic() - started
                threads = sum(t.name == "pdsno-nib-probe" for t in threading.enumerate())
                return list(responses), elapsed, threads

            responses, elapsed, threads = run(probes())
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_until(
            lambda: not any(t.name == "pdsno-nib-probe" for t in threading.enumerate()),
            "the probe thread to finish once the lock is gone",
        )
        after = run(_ready(app))
    *ready, live = responses
    assert [r.status_code for r in ready] == [503] * 5
    assert ready[0].json()["checks"]["nib"] == "unreachable: no answer within 0.5 s"
    assert live.status_code == 200
    assert elapsed < 3
    assert threads == 1
    assert after.status_code == 200
