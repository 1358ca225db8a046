"""The FastAPI application of one controller."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from pdsno import __version__
from pdsno.api import middleware, routes
from pdsno.api.models import ErrorOut
from pdsno.context import ControllerContext
from pdsno.errors import ConfigurationError, PdsnoError

ERROR_RESPONSES = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422, 503)}


Surface = Literal["api", "peer"]


def _routers(surface: Surface) -> list[APIRouter]:
    """Every module of pdsno/api/routes with a `router` and a matching SURFACE."""
    found = []
    for info in pkgutil.iter_modules(routes.__path__):
        module = importlib.import_module(f"{routes.__name__}.{info.name}")
        if getattr(module, "SURFACE", None) == surface:
            found.append(module.router)
    return found


def create_app(
    ctx: ControllerContext, *, surface: Surface = "api", docs_enabled: bool = False
) -> FastAPI:
    """The app of one listener: "api" for operators, "peer" for other controllers."""
    app = FastAPI(
        title="PDSNO controller",
        version=__version__,
        docs_url="/docs" if docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json",
        responses=ERROR_RESPONSES,
    )
    app.state.context = ctx

    api = APIRouter(prefix="/api/v1")
    for router in _routers(surface):
        api.include_router(router)
    app.include_router(api)
    middleware.install(app, ctx, surface=surface)

    @app.exception_handler(PdsnoError)
    def pdsno_error(_: Request, error: PdsnoError) -> JSONResponse:
        code = 503 if isinstance(error, ConfigurationError) else error.status_code
        return JSONResponse({"detail": str(error)}, status_code=code)

    @app.exception_handler(OperationalError)
    def database_down(_: Request, error: OperationalError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the NIB database is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    return app
