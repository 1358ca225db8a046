"""Starting a controller: identity, components, background work, the HTTP server."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from sqlalchemy import Engine, select, update

from pdsno.api.app import create_app
from pdsno.api.tls_scope import TlsExtensionProtocol
from pdsno.approval.classifier import RuleClassifier
from pdsno.approval.executor import load_executor
from pdsno.approval.workflow import ApprovalWorkflow
from pdsno.clock import utcnow
from pdsno.config import ControllerType, LimitsSettings, Settings
from pdsno.context import ControllerContext
from pdsno.errors import ConfigurationError
from pdsno.events.publisher import OutboxPublisher
from pdsno.identity import bootstrap
from pdsno.identity.state import Identity
from pdsno.messaging.dispatcher import Dispatcher
from pdsno.nib.cache import TTLCache
from pdsno.nib.engine import create_nib_engine, require_current_schema
from pdsno.nib.schema import controllers
from pdsno.observability.logging import configure_logging
from pdsno.observability.metrics import Metrics, start_metrics_server
from pdsno.security import secrets as secret_store
from pdsno.security.keys import SigningKey
from pdsno.security.tls import ControllerTls, controller_tls

log = logging.getLogger("pdsno.runtime")

JOIN_ATTEMPTS = 10


def ensure_identity(
    settings: Settings, engine: Engine, signer: SigningKey, http: httpx.Client
) -> Identity:
    """The identity saved in the state directory, or a new one: self-registered
    for the global controller, admitted by the parent for the others."""
    identity = Identity.load(settings.identity_file)
    if identity is not None:
        _check_saved_identity(identity, settings, engine, signer)
        return identity
    if settings.controller_type is ControllerType.GLOBAL:
        with engine.begin() as conn:
            identity = bootstrap.register_root(
                conn,
                name=settings.name,
                public_key=signer.public_key_b64,
                url=settings.public_url,
                signer=signer,
            )
    else:
        identity = join_parent(settings, signer, http)
    identity.save(settings.identity_file)
    log.info("registered as %s", identity.controller_id)
    return identity


def _check_saved_identity(
    identity: Identity, settings: Settings, engine: Engine, signer: SigningKey
) -> None:
    with engine.begin() as conn:
        row = conn.execute(
            select(controllers).where(controllers.c.controller_id == identity.controller_id)
        ).one_or_none()
        if row is None or row.public_key != signer.public_key_b64:
            raise ConfigurationError(
                f"{settings.identity_file} names {identity.controller_id}, which the NIB does "
                "not know with this key. Point db_url at the right NIB, or remove the identity "
                "file and join again with a new bootstrap token."
            )
        if identity.controller_type != settings.controller_type.value:
            raise ConfigurationError(
                f"{settings.identity_file} is a {identity.controller_type} identity, "
                f"but this controller is configured as {settings.controller_type.value}"
            )
        if row.url != settings.public_url:
            conn.execute(
                update(controllers)
                .where(controllers.c.controller_id == identity.controller_id)
                .values(url=settings.public_url, updated_at=utcnow())
            )


def join_parent(settings: Settings, signer: SigningKey, http: httpx.Client) -> Identity:
    if settings.bootstrap_token is None:
        raise ConfigurationError(
            f"This {settings.controller_type.value} controller has not joined yet: set "
            "PDSNO_BOOTSTRAP_TOKEN (or bootstrap_token) to a token made on the parent with "
            f"`pdsno token create --region {settings.region} --type "
            f"{settings.controller_type.value}`."
        )
    request = {
        "token": settings.bootstrap_token.get_secret_value(),
        "controller_type": settings.controller_type.value,
        "region": settings.region,
        "name": settings.name,
        "public_key": signer.public_key_b64,
        "url": settings.public_url,
    }
    challenge = _post_to_parent(http, settings, "/api/v1/validation/challenge", request)
    claims = bootstrap.challenge_claims(
        challenge["nonce"],
        bootstrap.JoinRequest(
            token="",
            controller_type=settings.controller_type,
            region=settings.region,
            name=settings.name,
            public_key=signer.public_key_b64,
            url=settings.public_url,
        ),
    )
    admitted = _post_to_parent(
        http,
        settings,
        "/api/v1/validation/register",
        {"nonce": challenge["nonce"], "signature": signer.sign(claims)},
    )
    return Identity(
        controller_id=admitted["controller_id"],
        controller_type=admitted["controller_type"],
        region=admitted["region"],
        parent_id=admitted["parent_id"],
        credential=admitted["credential"],
    )


def _post_to_parent(http: httpx.Client, settings: Settings, path: str, body: dict) -> dict:
    """POST, waiting for a parent that is still starting; a refusal is final."""
    url = f"{settings.parent_url}{path}"
    for attempt in range(1, JOIN_ATTEMPTS + 1):
        try:
            response = http.post(url, json=body)
        except httpx.TransportError as error:
            if attempt == JOIN_ATTEMPTS:
                raise ConfigurationError(f"cannot reach the parent at {url}: {error}") from None
            time.sleep(min(10.0, 0.5 * attempt))
            continue
        if response.is_success:
            return response.json()
        detail = response.json().get("detail", response.text) if response.content else ""
        raise ConfigurationError(
            f"the parent at {settings.parent_url} refused this controller "
            f"({response.status_code}): {detail}"
        )
    raise AssertionError("unreachable")


def _warn_if_master_key_rotation_due(engine: Engine, rotation_days: int) -> None:
    with engine.connect() as conn:
        if secret_store.rotation_due(conn, rotation_days):
            log.warning(
                "the master key is %d days old or older: rotate it with `pdsno secrets rotate` "
                "(docs/secrets-and-backups.md)",
                rotation_days,
            )


class Sweeper:
    """Expires stale proposals now and then."""

    def __init__(self, workflow: ApprovalWorkflow, interval_seconds: float = 15.0) -> None:
        self._workflow = workflow
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pdsno-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._workflow.expire_stale()
            except Exception:  # a transient NIB outage must not end the loop
                log.exception("expiring stale proposals failed")


@contextmanager
def running_controller(
    settings: Settings, tls: ControllerTls | None = None
) -> Iterator[ControllerContext]:
    """Build every component, start the background work, and stop it all on exit.

    `tls` holds the TLS contexts (built from settings.tls when not given); calls
    to other controllers and to the broker go through them.
    """
    if tls is None and settings.tls.enabled:
        tls = controller_tls(settings.tls)
    engine = create_nib_engine(settings.db_url)
    require_current_schema(engine)
    _warn_if_master_key_rotation_due(engine, settings.secrets.rotation_days)
    signer = SigningKey.load(settings.key_file)
    # Parent and peers: verified against the PDSNO CA, with this controller's
    # certificate as the client certificate their peer listeners require.
    http = httpx.Client(
        timeout=settings.http_timeout_seconds, verify=tls.http if tls is not None else True
    )
    identity = ensure_identity(settings, engine, signer, http)
    dispatcher = Dispatcher(engine, sender_id=identity.controller_id, signer=signer, http=http)
    device_cache: TTLCache[bytes] = TTLCache()
    workflow = ApprovalWorkflow(
        engine=engine,
        identity=identity,
        signer=signer,
        settings=settings.approval,
        classifier=RuleClassifier.load(settings.approval.rules_file),
        executor=load_executor(settings.approval.executor),
        messenger=dispatcher,
        on_device_changed=device_cache.invalidate,
    )
    publisher = (
        OutboxPublisher(
            engine,
            settings.mqtt,
            client_id=identity.controller_id,
            ssl_context=tls.mqtt if tls is not None else None,
        )
        if settings.mqtt.enabled
        else None
    )
    sweeper = Sweeper(workflow)
    metrics = Metrics()
    workflow.metrics = metrics
    ctx = ControllerContext(
        settings,
        engine,
        identity,
        signer,
        workflow,
        dispatcher,
        publisher,
        device_cache,
        metrics,
    )
    stop_metrics = start_metrics_server(metrics, settings, engine=engine)
    dispatcher.start()
    sweeper.start()
    if publisher is not None:
        publisher.start()
    try:
        yield ctx
    finally:
        stop_metrics()
        if publisher is not None:
            publisher.stop()
        sweeper.stop()
        dispatcher.stop()
        http.close()
        engine.dispose()


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to _serve_all.

    uvicorn's own capture (Server.capture_signals, one per server) would install
    SIGINT and SIGTERM handlers twice, and after shutdown re-raise the signal
    with the default handler back in place: the process would die of SIGTERM
    before the controller's components are stopped.
    """

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(
    app, host: str, port: int, ssl_context: ssl.SSLContext | None, limits: LimitsSettings
) -> uvicorn.Server:
    # The context is built (and reloaded) by pdsno.security.tls, not by uvicorn.
    factory = None if ssl_context is None else (lambda _config, _default: ssl_context)
    return _Listener(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            # None: uvicorn would set its loggers (uvicorn.access too) to this
            # level over logging.level, and format an access line per request
            # that the settings asked not to have.
            log_level=None,
            server_header=False,
            ssl_context_factory=factory,
            # The joining controller's certificate reaches the app (the ASGI tls extension).
            http=TlsExtensionProtocol,
            # X-Forwarded-For is trusted only from limits.trusted_proxies, by
            # pdsno's own middleware; logging is pdsno's (configure_logging).
            proxy_headers=False,
            log_config=None,
            # Connection-level limits; the middleware answers 503 with
            # Retry-After first, at limits.max_concurrent_requests.
            limit_concurrency=limits.max_concurrent_requests * 2,
            backlog=limits.backlog,
            timeout_keep_alive=limits.timeout_keep_alive_seconds,
            h11_max_incomplete_event_size=limits.max_header_bytes,
        )
    )


def _install_signal_handlers(
    servers: list[uvicorn.Server], on_sighup: Callable[[], object]
) -> list[signal.Signals]:
    """SIGINT and SIGTERM stop every listener (a second SIGINT without waiting for
    open connections); SIGHUP calls on_sighup and the process goes on."""
    loop = asyncio.get_running_loop()

    def stop(signum: signal.Signals) -> None:
        log.info("%s: stopping", signum.name)
        for server in servers:
            if server.should_exit and signum is signal.SIGINT:
                server.force_exit = True
            server.should_exit = True

    installed = []
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
            installed.append(signum)
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        installed.append(signal.SIGHUP)
    except (NotImplementedError, RuntimeError, ValueError) as error:  # not the main thread
        log.warning("Cannot handle signals here (%s): SIGHUP will not reload", error)
    return installed


async def _serve_all(servers: list[uvicorn.Server], on_sighup: Callable[[], object]) -> None:
    """Run the listeners together; when one stops, stop the others.

    SIGHUP calls on_sighup (the certificate reload) instead of ending the process.
    """
    installed = _install_signal_handlers(servers, on_sighup)
    try:
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for signum in installed:
            asyncio.get_running_loop().remove_signal_handler(signum)


def _nothing_to_reload() -> None:
    log.info("SIGHUP: TLS is off, there is no certificate to reload")


def run(settings: Settings) -> None:
    configure_logging(settings.logging)
    tls = controller_tls(settings.tls)  # None, with a loud warning, for plain HTTP
    with running_controller(settings, tls) as ctx:
        scheme = "https" if tls is not None else "http"
        if tls is None:
            api_auth = peer_auth = "plain HTTP"
        else:
            api_auth = (
                "TLS, client certificate of the CA required"
                if settings.tls.require_client_cert_api
                else "TLS"
            )
            peer_auth = "TLS, client certificate of the CA required"
        log.info(
            "%s controller %s: API on %s://%s:%d (%s), peers on %s://%s:%d (%s)",
            settings.controller_type.value,
            ctx.identity.controller_id,
            scheme,
            settings.listen_host,
            settings.listen_port,
            api_auth,
            scheme,
            settings.listen_host,
            settings.peer_listen_port,
            peer_auth,
        )
        servers = [
            _server(
                create_app(ctx, surface="api", docs_enabled=settings.http.docs_enabled),
                settings.listen_host,
                settings.listen_port,
                tls.api if tls is not None else None,
                settings.limits,
            ),
            _server(
                create_app(ctx, surface="peer"),
                settings.listen_host,
                settings.peer_listen_port,
                tls.peer if tls is not None else None,
                settings.limits,
            ),
        ]
        asyncio.run(
            _serve_all(servers, on_sighup=tls.reload if tls is not None else _nothing_to_reload)
        )
