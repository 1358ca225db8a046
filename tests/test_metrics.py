"""Prometheus metrics: their own registry, their own port, gauges read from the NIB."""

from __future__ import annotations

import hashlib
import socket
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families
from services import free_port
from test_middleware import (
    asgi_client,
    controller_app,
    make_settings,
    new_sqlite_nib,
    run,
)

from pdsno.approval.workflow import OPEN_STATES
from pdsno.clock import utcnow
from pdsno.errors import ConfigurationError
from pdsno.nib import devices
from pdsno.nib.engine import create_nib_engine
from pdsno.nib.schema import config_proposals, controllers, master_keys
from pdsno.observability.metrics import (
    WAITING_STATES,
    GaugeRefresher,
    Metrics,
    start_metrics_server,
)

NAMED = (
    "pdsno_validation_requests_total",
    "pdsno_config_approvals_total",
    "pdsno_message_latency_seconds",
    "pdsno_active_controllers",
    "pdsno_nib_size_bytes",
    "pdsno_http_requests_total",
    "pdsno_http_request_duration_seconds",
    "pdsno_rate_limited_total",
    "pdsno_auth_lockouts_total",
    "pdsno_auth_login_failures_total",
    "pdsno_certificate_expiry_timestamp_seconds",
    "pdsno_secret_key_age_seconds",
    "pdsno_proposals_waiting",
    "pdsno_up",
)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return new_sqlite_nib(tmp_path_factory)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample_names(port: int) -> set[str]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}


def certificate(path: Path, days: int) -> float:
    """A self-signed certificate expiring in `days`; returns its expiry (Unix time)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pdsno test")])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.not_valid_after_utc.timestamp()


def test_the_named_metrics_are_served_on_their_own_port(sqlite_url, tmp_path):
    port = free_port()
    expiry = certificate(tmp_path / "controller.crt", days=30)
    certificate(tmp_path / "ca.crt", days=3650)
    with controller_app(sqlite_url, limits={"burst": 2}) as (app, ctx):
        settings = make_settings(
            sqlite_url,
            metrics={"enabled": True, "listen_host": "127.0.0.1", "port": port},
            tls={
                "enabled": True,
                "cert_file": str(tmp_path / "controller.crt"),
                "key_file": str(tmp_path / "controller.key"),
                "ca_file": str(tmp_path / "ca.crt"),
            },
        )
        for limiter in app.state.rate_limiters.values():
            limiter.clock = lambda: 0.0  # time stands still: no refill
        stop = start_metrics_server(ctx.metrics, settings, engine=ctx.engine)
        try:
            metrics = ctx.metrics
            metrics.count_validation("regional", "admitted")
            metrics.count_approval("high", "approved")
            metrics.observe_message("proposal.forward", 0.02)
            metrics.count_login_failure()
            metrics.count_lockout()

            async def calls() -> list[int]:
                async with asgi_client(app) as client:
                    return [
                        (await client.get("/api/v1/devices/sw-9")).status_code,
                        (await client.get("/api/v1/devices/sw-10")).status_code,
                        (await client.get("/api/v1/devices/sw-11")).status_code,
                        (await client.get("/metrics")).status_code,
                    ]

            statuses = run(calls())
            names = sample_names(port)
            values = scrape(port)
        finally:
            stop()
        refused = socket.socket()
        assert refused.connect_ex(("127.0.0.1", port)) != 0  # stopped: nothing listens
        refused.close()

    assert statuses[:2] == [401, 401] and statuses[2] == 429
    assert statuses[3] in (404, 429)  # the API itself does not serve metrics
    assert set(NAMED) <= names, set(NAMED) - names
    assert values[("pdsno_up", ())] == 1.0
    device_route = (("method", "GET"), ("route", "/api/v1/devices/{device_id}"))
    assert values[("pdsno_http_requests_total", (*device_route, ("status", "401")))] == 2
    assert values[("pdsno_http_requests_total", (*device_route, ("status", "429")))] == 1
    assert values[("pdsno_http_request_duration_seconds_count", device_route)] == 3
    # No raw path ever becomes a label value.
    assert not any("sw-9" in str(labels) for _, labels in values)
    assert values[("pdsno_rate_limited_total", (("limit_class", "default"),))] >= 1
    assert values[("pdsno_auth_lockouts_total", ())] == 1
    assert values[("pdsno_auth_login_failures_total", ())] == 1
    assert (
        values[
            (
                "pdsno_validation_requests_total",
                (("controller_type", "regional"), ("result", "admitted")),
            )
        ]
        == 1
    )
    assert values[("pdsno_message_latency_seconds_count", (("message_type", "proposal.forward"),))]
    cert = values[("pdsno_certificate_expiry_timestamp_seconds", (("certificate", "controller"),))]
    assert cert == pytest.approx(expiry)
    assert ("pdsno_certificate_expiry_timestamp_seconds", (("certificate", "ca"),)) in values
    assert values[("pdsno_active_controllers", (("controller_type", "global"),))] == 0
    assert values[("pdsno_nib_size_bytes", ())] > 0


def test_each_metrics_object_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.count_lockout()
    assert first.auth_lockouts._value.get() == 1
    assert second.auth_lockouts._value.get() == 0


def test_a_port_in_use_is_a_clear_error_and_disabled_metrics_serve_nothing(sqlite_url):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = make_settings(sqlite_url, metrics={"enabled": True, "port": port})
        with pytest.raises(ConfigurationError, match=f"metrics.port|{port}"):
            start_metrics_server(Metrics(), settings)
    free = free_port()
    stop = start_metrics_server(
        Metrics(), make_settings(sqlite_url, metrics={"enabled": False, "port": free})
    )
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", free)) != 0
    stop()


def test_waiting_states_are_the_workflows_open_states():
    assert set(WAITING_STATES) == set(OPEN_STATES)


def _controller(conn, controller_id: str, controller_type: str, status: str = "active") -> None:
    now = utcnow()
    conn.execute(
        controllers.insert().values(
            controller_id=controller_id,
            controller_type=controller_type,
            region="r1" if controller_type != "global" else None,
            name=controller_id,
            public_key=hashlib.sha256(controller_id.encode()).hexdigest()[:43],
            status=status,
            created_at=now,
            updated_at=now,
            version=1,
        )
    )


def _proposal(conn, proposal_id: str, status: str, age: timedelta) -> None:
    created = utcnow() - age
    conn.execute(
        config_proposals.insert().values(
            proposal_id=proposal_id,
            device_id="sw-1",
            origin_id="lc-r1-3",
            region="r1",
            config_lines=["hostname sw-1"],
            config_hash="0" * 64,
            sensitivity_local="high",
            sensitivity="high",
            status=status,
            created_at=created,
            expires_at=created + timedelta(hours=2),
            updated_at=created,
            version=1,
        )
    )


def test_nib_gauges_count_controllers_proposals_keys_and_size(nib_engine):
    with nib_engine.begin() as conn:
        _controller(conn, "gc-1", "global")
        _controller(conn, "rc-r1-2", "regional")
        _controller(conn, "lc-r1-3", "local")
        _controller(conn, "lc-r1-4", "local", status="revoked")
        devices.create(conn, device_id="sw-1", name="switch", region="r1", status="active")
        _proposal(conn, "p-old", "awaiting_global", timedelta(hours=1))
        _proposal(conn, "p-new", "awaiting_global", timedelta(minutes=1))
        _proposal(conn, "p-pending", "pending", timedelta(seconds=5))
        _proposal(conn, "p-done", "executed", timedelta(days=3))
        for version, age, retired in ((1, 100, True), (2, 95, False), (3, 1, False)):
            conn.execute(
                master_keys.insert().values(
                    key_version=version,
                    fingerprint=f"{version:064x}",
                    created_at=utcnow() - timedelta(days=age),
                    retired_at=utcnow() if retired else None,
                )
            )
    metrics = Metrics()
    metrics.refresh_from_nib(nib_engine)

    def value(gauge, **labels) -> float:
        return gauge.labels(**labels)._value.get() if labels else gauge._value.get()

    assert value(metrics.active_controllers, controller_type="global") == 1
    assert value(metrics.active_controllers, controller_type="regional") == 1
    assert value(metrics.active_controllers, controller_type="local") == 1
    assert value(metrics.proposals_waiting, status="awaiting_global") == 2
    assert value(metrics.proposals_waiting, status="pending") == 1
    assert value(metrics.proposals_waiting, status="approved") == 0
    oldest = value(metrics.proposal_oldest_waiting, status="awaiting_global")
    assert 3590 < oldest < 3700
    assert value(metrics.proposal_oldest_waiting, status="approved") == 0
    ages = {
        sample.labels["key_version"]: sample.value
        for family in metrics.secret_key_age.collect()
        for sample in family.samples
    }
    assert set(ages) == {"2", "3"}  # the retired key is not reported
    assert ages["2"] == pytest.approx(95 * 86400, abs=120)
    assert value(metrics.nib_size) > 0

    with nib_engine.begin() as conn:
        conn.execute(
            master_keys.update().where(master_keys.c.key_version == 2).values(retired_at=utcnow())
        )
    metrics.refresh_from_nib(nib_engine)
    keys = {s.labels["key_version"] for f in metrics.secret_key_age.collect() for s in f.samples}
    assert keys == {"3"}


def test_the_refresher_survives_a_nib_outage_and_keeps_the_last_values(tmp_path, caplog):
    metrics = Metrics()
    metrics.nib_size.set(1234)
    engine = create_nib_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    refresher = GaugeRefresher(metrics, engine=engine, certificates={}, interval=0.05)
    refresher.start()
    time.sleep(0.3)
    refresher.stop()
    engine.dispose()
    assert metrics.nib_size._value.get() == 1234
    warnings = [r for r in caplog.records if "cannot refresh the NIB metrics" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not at every attempt


def test_ctx_metrics_receive_http_metrics_by_template(sqlite_url):
    """ctx.metrics is the one the middleware counts into."""
    with controller_app(sqlite_url) as (app, ctx):
        run(_get_many(app, ["/health/live", "/health/live", "/nope/1", "/nope/2"]))
    requests = ctx.metrics.http_requests
    assert requests.labels(route="/health/live", method="GET", status="200")._value.get() == 2
    assert requests.labels(route="unmatched", method="GET", status="404")._value.get() == 2


async def _get_many(app, paths: list[str]) -> None:
    async with asgi_client(app) as client:
        for path in paths:
            await client.get(path)
