"""The FastAPI application of one controller."""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from pdsno import __version__
from pdsno.api import middleware, routes
from pdsno.api.fast_device_read import FastDeviceReadMiddleware
from pdsno.api.models import ErrorOut, ValidationErrorOut
from pdsno.api.strict_input import StrictInputMiddleware
from pdsno.context import ControllerContext
from pdsno.errors import ConfigurationError, PdsnoError

# Every operation may answer these: 413 and 429 come from the middleware, 422
# from validation (of the URL and the JSON body too), 503 from a NIB outage.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 429, 503)
}
ERROR_RESPONSES[422] = {"model": ValidationErrorOut, "description": "Validation Error"}
# Long enough to name what is wrong, too short to carry a body back.
MAX_ECHO_CHARS = 500


def printable(value: object, limit: int | None = MAX_ECHO_CHARS) -> str | int:
    """A location or message of an error, safe to render as JSON: lone
    surrogates and undecodable bytes escaped, at most `limit` characters."""
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def validation_issues(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's errors without `input` and `ctx`: they echo what was sent,
    which may be undecodable (a 500 while rendering it) and is the caller's
    anyway."""
    return [
        {
            "type": printable(error.get("type", "value_error")),
            "loc": [printable(part) for part in error.get("loc", ())],
            "msg": printable(error.get("msg", "")),
        }
        for error in errors
    ]


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
    if surface == "api":
        # Innermost, so that every layer of the stack sees its answers as the route's.
        app.add_middleware(FastDeviceReadMiddleware)
    # Inside the limits (install() wraps it), so bodies it reads are bounded.
    app.add_middleware(StrictInputMiddleware)
    middleware.install(app, ctx, surface=surface)

    @app.exception_handler(RequestValidationError)
    def validation_failed(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_issues(error.errors())}, status_code=422)

    @app.exception_handler(PdsnoError)
    def pdsno_error(_: Request, error: PdsnoError) -> JSONResponse:
        code = 503 if isinstance(error, ConfigurationError) else error.status_code
        return JSONResponse({"detail": printable(str(error), limit=None)}, status_code=code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 405:
            allowed = _allowed_methods(app, request.scope)
            if allowed:
                error.headers = {**(error.headers or {}), "Allow": ", ".join(allowed)}
        return await http_exception_handler(request, error)

    @app.exception_handler(OperationalError)
    def database_down(_: Request, error: OperationalError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the NIB database is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    _replace_declared_security(app)
    return app


def _replace_declared_security(app: FastAPI) -> None:
    """A route's `openapi_extra={"security": [...]}` replaces the schemes its
    dependencies imply (FastAPI would append it to them)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for route in iter_route_contexts(app.routes):
            declared = (getattr(route, "openapi_extra", None) or {}).get("security")
            operations = schema.get("paths", {}).get(route.path or "", {})
            for method in (route.methods or ()) if declared is not None else ():
                if method.lower() in operations:
                    operations[method.lower()]["security"] = declared
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _allowed_methods(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    """Every method some route serves at this path: Starlette's 405 names
    only those of the first route that matched it."""
    patterns: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(
        app.state, "route_methods", None
    )
    if patterns is None:
        patterns = [
            (compile_path(route.path)[0], frozenset(route.methods))
            for route in iter_route_contexts(app.routes)
            if route.path and route.methods
        ]
        app.state.route_methods = patterns
    path = scope.get("path", "")
    allowed = {method for regex, methods in patterns if regex.match(path) for method in methods}
    return sorted(allowed)
