"""Prometheus metrics of one controller, served on a port of their own.

No global state: a Metrics object owns its CollectorRegistry and is passed to
whoever counts something (the API middleware, the workflow, the identity
code). start_metrics_server() serves it on metrics.listen_host:metrics.port
and, given the NIB engine, refreshes the gauges that read the NIB from a
background thread: a scrape never touches the database, and nothing here
ever runs on the API's event loop.

Every controller of a hierarchy reads the same NIB, so the NIB gauges
(controllers, proposals, NIB size, key age) are the same on each: aggregate
them with max() across instances, as monitoring/alerts.yml does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from sqlalchemy import Engine, func, select, text

from pdsno.clock import as_utc, utcnow
from pdsno.config import Settings
from pdsno.errors import ConfigurationError
from pdsno.nib.schema import config_proposals, controllers, master_keys

log = logging.getLogger("pdsno.metrics")

CONTROLLER_TYPES = ("global", "regional", "local")
# Proposals waiting for someone (an approver, the executor); mirrors
# pdsno.approval.workflow.OPEN_STATES (a test keeps them equal).
WAITING_STATES = ("pending", "awaiting_regional", "awaiting_global", "approved")
LIMIT_CLASSES = ("default", "login", "identity", "concurrency")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REFRESH_SECONDS = 15.0
STATEMENT_TIMEOUT_MS = 5000


class Metrics:
    """Every pdsno metric, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.validation_requests = Counter(
            "pdsno_validation_requests",
            "Joins of child controllers answered here, by the child's type and the result",
            ["controller_type", "result"],
            registry=r,
        )
        self.config_approvals = Counter(
            "pdsno_config_approvals",
            "Decisions on configuration proposals, by sensitivity and result",
            ["sensitivity", "result"],
            registry=r,
        )
        self.message_latency = Histogram(
            "pdsno_message_latency_seconds",
            "Time to handle a signed message between controllers, by message type",
            ["message_type"],
            registry=r,
        )
        self.active_controllers = Gauge(
            "pdsno_active_controllers",
            "Active controllers in the NIB, by type",
            ["controller_type"],
            registry=r,
        )
        self.nib_size = Gauge("pdsno_nib_size_bytes", "Size of the NIB database", registry=r)
        self.http_requests = Counter(
            "pdsno_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "pdsno_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["route", "method"],
            registry=r,
        )
        self.rate_limited = Counter(
            "pdsno_rate_limited",
            "Requests refused by a limit: default and login (429), concurrency (503)",
            ["limit_class"],
            registry=r,
        )
        self.auth_lockouts = Counter(
            "pdsno_auth_lockouts", "Accounts locked after repeated login failures", registry=r
        )
        self.auth_login_failures = Counter(
            "pdsno_auth_login_failures", "Failed operator logins", registry=r
        )
        self.certificate_expiry = Gauge(
            "pdsno_certificate_expiry_timestamp_seconds",
            "When a certificate this controller uses expires (Unix time)",
            ["certificate"],
            registry=r,
        )
        self.secret_key_age = Gauge(
            "pdsno_secret_key_age_seconds",
            "Age of each master key version in use (not retired)",
            ["key_version"],
            registry=r,
        )
        self.proposals_waiting = Gauge(
            "pdsno_proposals_waiting",
            "Open configuration proposals in the NIB, by status",
            ["status"],
            registry=r,
        )
        self.proposal_oldest_waiting = Gauge(
            "pdsno_proposal_oldest_waiting_seconds",
            "Age of the oldest open proposal of each status (0 when there is none)",
            ["status"],
            registry=r,
        )
        self.up = Gauge("pdsno_up", "1 while the controller runs", registry=r)
        # Label sets that exist from the start, so that rate() and increase()
        # see the first event.
        for limit_class in LIMIT_CLASSES:
            self.rate_limited.labels(limit_class=limit_class)
        for controller_type in CONTROLLER_TYPES:
            self.active_controllers.labels(controller_type=controller_type)
        for status in WAITING_STATES:
            self.proposals_waiting.labels(status=status)
            self.proposal_oldest_waiting.labels(status=status)
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    # --- events the rest of pdsno counts -------------------------------------

    def count_validation(self, controller_type: str, result: str) -> None:
        """A join answered: result "admitted" or "refused"."""
        self.validation_requests.labels(controller_type=controller_type, result=result).inc()

    def count_approval(self, sensitivity: str, result: str) -> None:
        """A decision on a proposal: result such as "approved", "auto_approved",
        "rejected", "expired", "executed"."""
        self.config_approvals.labels(sensitivity=sensitivity, result=result).inc()

    def observe_message(self, message_type: str, seconds: float) -> None:
        self.message_latency.labels(message_type=message_type).observe(seconds)

    @contextmanager
    def time_message(self, message_type: str) -> Iterator[None]:
        """`with metrics.time_message("proposal.forward"): handle(...)`"""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe_message(message_type, time.perf_counter() - started)

    def count_login_failure(self) -> None:
        self.auth_login_failures.inc()

    def count_lockout(self) -> None:
        self.auth_lockouts.inc()

    def count_rate_limited(self, limit_class: str) -> None:
        self.rate_limited.labels(limit_class=limit_class).inc()

    def set_certificate_expiry(self, certificate: str, not_after: datetime) -> None:
        self.certificate_expiry.labels(certificate=certificate).set(as_utc(not_after).timestamp())

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request (the API middleware calls this)."""
        if method not in HTTP_METHODS:
            method = "OTHER"
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            if len(self._http_children) > 10_000:  # a bound, should routes ever explode
                self._http_children.clear()
            children = (
                self.http_requests.labels(route=route, method=method, status=str(status)),
                self.http_duration.labels(route=route, method=method),
            )
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    # --- gauges refreshed from the NIB and the certificate files --------------

    def refresh_from_nib(self, engine: Engine) -> None:
        """Read the NIB gauges in one short transaction (raises if the NIB is down)."""
        now = utcnow()
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # LOCAL: ends with this transaction, never stays on the pooled connection.
                conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            active = dict(
                conn.execute(
                    select(controllers.c.controller_type, func.count())
                    .where(controllers.c.status == "active")
                    .group_by(controllers.c.controller_type)
                ).all()
            )
            waiting = {
                row.status: (row.n, row.oldest)
                for row in conn.execute(
                    select(
                        config_proposals.c.status,
                        func.count().label("n"),
                        func.min(config_proposals.c.created_at).label("oldest"),
                    )
                    .where(config_proposals.c.status.in_(WAITING_STATES))
                    .group_by(config_proposals.c.status)
                )
            }
            keys = conn.execute(
                select(master_keys.c.key_version, master_keys.c.created_at).where(
                    master_keys.c.retired_at.is_(None)
                )
            ).all()
            size = _nib_size(engine, conn)
            conn.rollback()
        for controller_type in sorted({*CONTROLLER_TYPES, *active}):
            self.active_controllers.labels(controller_type=controller_type).set(
                active.get(controller_type, 0)
            )
        for status in WAITING_STATES:
            count, oldest = waiting.get(status, (0, None))
            self.proposals_waiting.labels(status=status).set(count)
            age = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
            self.proposal_oldest_waiting.labels(status=status).set(max(0.0, age))
        ages = {
            str(row.key_version): (now - as_utc(row.created_at)).total_seconds() for row in keys
        }
        _replace_labelled(self.secret_key_age, "key_version", ages)
        if size is not None:
            self.nib_size.set(size)

    def refresh_certificates(self, certificates: dict[str, Path]) -> None:
        """Expiry of each readable PEM certificate; an unreadable one is dropped."""
        from cryptography import x509

        expiries: dict[str, float] = {}
        for name, path in certificates.items():
            try:
                certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
            except (OSError, ValueError) as error:
                log.warning("cannot read certificate %s at %s: %s", name, path, error)
                continue
            expiries[name] = certificate.not_valid_after_utc.timestamp()
        _replace_labelled(self.certificate_expiry, "certificate", expiries)


def _replace_labelled(gauge: Gauge, label: str, values: dict[str, float]) -> None:
    """Set `values`, and remove label sets that are gone (a retired key)."""
    for (present,) in _label_values(gauge):
        if present not in values:
            gauge.remove(present)
    for value_label, value in values.items():
        gauge.labels(**{label: value_label}).set(value)


def _label_values(gauge: Gauge) -> Iterable[tuple[str, ...]]:
    return [
        tuple(sample.labels[name] for name in sample.labels)
        for metric in gauge.collect()
        for sample in metric.samples
    ]


def _nib_size(engine: Engine, conn) -> int | None:
    if engine.dialect.name == "postgresql":
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        # The WAL holds committed pages that are not in the main file yet.
        return sum(
            path.stat().st_size
            for path in (Path(database), Path(f"{database}-wal"))
            if path.exists()
        )
    return None


def certificates_of(settings: Settings) -> dict[str, Path]:
    """The certificates whose expiry is watched: the controller's and the CA's."""
    if not settings.tls.enabled:
        return {}
    return {"controller": settings.tls.cert_file, "ca": settings.tls.ca_file}


class GaugeRefresher:
    """Refreshes the NIB and certificate gauges every `interval` seconds in a
    daemon thread; a NIB outage keeps the last values and logs once."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        engine: Engine | None,
        certificates: dict[str, Path],
        interval: float = REFRESH_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._engine = engine
        self._certificates = certificates
        self._interval = interval
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="pdsno-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def refresh(self) -> None:
        if self._certificates:
            self._metrics.refresh_certificates(self._certificates)
        if self._engine is None:
            return
        try:
            self._metrics.refresh_from_nib(self._engine)
        except Exception as error:  # the NIB may be down: keep the loop alive
            if not self._failing:
                log.warning("cannot refresh the NIB metrics: %s", error.__class__.__name__)
            self._failing = True
        else:
            if self._failing:
                log.info("NIB metrics refreshed again")
            self._failing = False

    def _run(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self._interval):
                return


def start_metrics_server(
    metrics: Metrics,
    settings: Settings,
    *,
    engine: Engine | None = None,
    refresh_seconds: float = REFRESH_SECONDS,
) -> Callable[[], None]:
    """Serve `metrics` on settings.metrics.listen_host:port; return a stop function.

    With `engine`, the NIB gauges are refreshed every `refresh_seconds` in a
    background thread; the TLS certificates' expiry too when TLS is on.
    Metrics disabled: nothing starts and the stop function does nothing.
    """
    if not settings.metrics.enabled:
        return lambda: None
    host, port = settings.metrics.listen_host, settings.metrics.port
    try:
        server, thread = start_http_server(port, host, registry=metrics.registry)
    except OSError as error:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port}: {error.strerror or error}. Set "
            "metrics.port to a free port (each controller on a host needs its own), "
            "or metrics.enabled false"
        ) from None
    refresher = GaugeRefresher(
        metrics,
        engine=engine,
        certificates=certificates_of(settings),
        interval=refresh_seconds,
    )
    refresher.start()
    metrics.up.set(1)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        metrics.up.set(0)
        refresher.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
