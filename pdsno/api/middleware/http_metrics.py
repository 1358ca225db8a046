"""Counts and times every HTTP request by route template, method and status."""

from __future__ import annotations

import re
import time

import fastapi.routing
from fastapi import FastAPI
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdsno.observability.metrics import Metrics

UNMATCHED = "unmatched"
RECENT_PATHS = 1024


class RouteTemplates:
    """The route template of a path ("/api/v1/devices/{device_id}"), never the
    raw path: the label's values stay the app's fixed set of routes.

    The templates are the full paths of every route, read on first use (once
    every route is registered): scope["route"] is no help, as FastAPI keeps
    included routers nested and it holds a path without their prefixes. A
    path that matches none (404s, scanners) is "unmatched". Requests refused
    before routing (429, 413, 503, CORS preflights) get their template too.
    """

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None
        self._recent: dict[str, str] = {}  # path -> template, bounded

    def _build(self) -> list[tuple[re.Pattern[str], str]]:
        # FastAPI >= 0.13x nests included routers; iter_route_contexts
        # flattens them with their full paths. Older releases flatten them.
        flatten = getattr(fastapi.routing, "iter_route_contexts", None)
        routes = list(flatten(self._app.routes)) if flatten else list(self._app.routes)
        templates = {path for route in routes if (path := getattr(route, "path", None))}
        # Fixed segments before parameters: /devices/export before /devices/{id}.
        ordered = sorted(templates, key=lambda t: (t.count("{"), t))
        return [(compile_path(template)[0], template) for template in ordered]

    def __call__(self, scope: Scope) -> str:
        if self._patterns is None:
            self._patterns = self._build()
        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        template = self._recent.get(path)
        if template is None:
            template = next((t for p, t in self._patterns if p.match(path)), UNMATCHED)
            if len(self._recent) >= RECENT_PATHS:
                self._recent.clear()
            self._recent[path] = template
        return template


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, templates: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # An exception before the response: the layer above answers 500.
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.observe_http(
                self.templates(scope), scope["method"], status, time.perf_counter() - started
            )
