"""Pure ASGI middleware of the API (BaseHTTPMiddleware costs too much: see bench/)."""

from __future__ import annotations

from fastapi import FastAPI

from pdsno.context import ControllerContext


def install(app: FastAPI, ctx: ControllerContext, *, surface: str) -> None:
    """Wrap `app` in the middleware stack of `surface` ("api" or "peer")."""
