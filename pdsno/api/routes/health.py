"""Health of the controller, for operators, load balancers and orchestrators.

GET /health        status, time, version and who this is; 503 when the NIB is unreachable
GET /health/live   the process answers (never touches the NIB)
GET /health/ready  NIB reachable and, with MQTT on, the broker connected; else 503

These live at the root of both listeners, not under /api/v1: app.py mounts a
module's router under /api/v1 when its SURFACE is "api" or "peer", so this
module declares neither, and pdsno.api.middleware.install() includes it.
No credentials: a probe has none, and nothing here reveals more than the
controller's ID, type and version.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Engine, text

from pdsno import __version__
from pdsno.api.models import HealthOut
from pdsno.clock import utcnow
from pdsno.context import ControllerContext

SURFACE = "root"  # see the module docstring
router = APIRouter(tags=["health"])

NIB_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = 5


class LiveOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    checks: dict[str, str]
    failed: list[str]


class NibProbe:
    """SELECT 1 on the NIB, off the event loop, answered within a timeout.

    Each check runs in a daemon thread, and probes that arrive while one is
    running share it: a NIB that hangs holds at most one thread, never the
    thread pool that serves the API's sync handlers.
    """

    def __init__(self, engine: Engine, timeout: float = NIB_TIMEOUT_SECONDS) -> None:
        self._engine = engine
        self._timeout = timeout
        self._lock = threading.Lock()
        self._running: concurrent.futures.Future[None] | None = None

    def _start(self) -> concurrent.futures.Future[None]:
        with self._lock:
            if self._running is None or self._running.done():
                future: concurrent.futures.Future[None] = concurrent.futures.Future()
                threading.Thread(
                    target=self._run, args=(future,), name="pdsno-nib-probe", daemon=True
                ).start()
                self._running = future
            return self._running

    def _run(self, future: concurrent.futures.Future[None]) -> None:
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except BaseException as error:  # reported to the waiting probe, never raised here
            future.set_exception(error)
        else:
            future.set_result(None)

    async def check(self) -> str:
        """ "ok", or why not (the error's class: no host names or passwords)."""
        future = asyncio.wrap_future(self._start())
        try:
            await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            return f"unreachable: no answer within {self._timeout:g} s"
        except Exception as error:
            return f"unreachable: {error.__class__.__name__}"
        return "ok"


def probe_of(request: Request) -> NibProbe:
    state = request.app.state
    probe = getattr(state, "nib_probe", None)
    if probe is None:
        probe = state.nib_probe = NibProbe(request.app.state.context.engine)
    return probe


def broker_check(ctx: ControllerContext) -> str:
    if not ctx.settings.mqtt.enabled:
        return "disabled"
    if ctx.publisher is None:
        return "not started"
    return "ok" if ctx.publisher.connected else "disconnected"


@router.get(
    "/health", response_model=HealthOut, responses={503: {"model": HealthOut}}, tags=["health"]
)
async def health_status(request: Request) -> JSONResponse:
    ctx: ControllerContext = request.app.state.context
    healthy = await probe_of(request).check() == "ok"
    body = HealthOut(
        status="healthy" if healthy else "unhealthy",
        timestamp=utcnow(),
        version=__version__,
        controller_id=ctx.identity.controller_id,
        controller_type=ctx.identity.controller_type,
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=200 if healthy else 503,
        headers=None if healthy else {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@router.get("/health/live", response_model=LiveOut)
async def health_live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/ready", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
async def health_ready(request: Request) -> JSONResponse:
    ctx: ControllerContext = request.app.state.context
    checks = {"nib": await probe_of(request).check(), "broker": broker_check(ctx)}
    failed = [name for name, result in checks.items() if result not in ("ok", "disabled")]
    body = ReadyOut(status="not_ready" if failed else "ready", checks=checks, failed=failed)
    return JSONResponse(
        body.model_dump(),
        status_code=503 if failed else 200,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)} if failed else None,
    )
