"""Pure ASGI middleware of the API: classes with `async def __call__(scope, receive, send)`.

Not @app.middleware("http") / BaseHTTPMiddleware: measured on this API, it
cut an endpoint from ~10,200 to ~4,000 requests/s; pure ASGI costs 2-6 %.

install() wraps an app in this order, outermost first:

1. RequestContextMiddleware: the client address (X-Forwarded-For only from
   limits.trusted_proxies), the request ID, the security headers, and a
   JSON 500 for an unhandled exception. Outermost, so that every response
   (429, 503, 413, 500 included) carries X-Request-ID and the headers, and
   every layer below and every log line sees the same ID and address. One
   layer for all four: each layer costs a wrapped send() per response.
2. HttpMetricsMiddleware: outside the limits, so that refused requests are
   counted with their status; inside the 500 handler, so that it sees it.
3. CORSMiddleware (operator API, only with http.cors_allow_origins): outside
   the limits, so that a browser can read a 429 or 413 (an answer without
   Access-Control-Allow-Origin is opaque to the page); preflights are
   answered here without costing a token.
4. RateLimitMiddleware: per client, the cheapest refusal (O(1), no body
   read), before anything spends memory or a slot on the request.
5. BodySizeLimitMiddleware: a declared oversized body is refused before it
   takes a concurrency slot; a chunked one is counted as the app reads it.
6. ConcurrencyLimitMiddleware: innermost of these, so that it counts only
   requests the app actually works on; refusals above never hold a slot.

Inside them pdsno.api.app adds StrictInputMiddleware and, on the operator
API, the fast path of the cached device read (pdsno.api.fast_device_read),
innermost: every layer above sees its answers as the route's.

Starlette's ServerErrorMiddleware stays outside this stack and its
ExceptionMiddleware inside, where add_middleware() places them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from pdsno.api.middleware.context import RequestContextMiddleware, parse_trusted_proxies
from pdsno.api.middleware.cors import cors_options
from pdsno.api.middleware.http_metrics import HttpMetricsMiddleware, RouteTemplates
from pdsno.api.middleware.limits import BodySizeLimitMiddleware, ConcurrencyLimitMiddleware
from pdsno.api.middleware.ratelimit import RateLimitMiddleware, TokenBucketLimiter
from pdsno.api.routes import health
from pdsno.context import ControllerContext

# Never refused for load: an orchestrator restarts a controller whose
# liveness probe fails, which would turn a busy controller into a dead one.
LIVENESS_PATH = "/health/live"


def install(
    app: FastAPI,
    ctx: ControllerContext,
    *,
    surface: str,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wrap `app` in the middleware stack of `surface` ("api" or "peer"), and
    add the /health routes. `clock` drives the rate limiter (tests inject one).

    The rate limiters are app.state.rate_limiters ({"default", "login", "identity"}).
    ctx.metrics (a pdsno.observability.metrics.Metrics), when present,
    receives the HTTP and rate-limit metrics.
    """
    settings = ctx.settings
    limits = settings.limits
    metrics = getattr(ctx, "metrics", None)
    trusted = parse_trusted_proxies(limits.trusted_proxies)
    cors = cors_options(settings.http.cors_allow_origins) if surface == "api" else None

    app.include_router(health.router)

    limiters = {
        "default": TokenBucketLimiter(
            limits.rate_per_second, limits.burst, limits.max_tracked_clients, clock=clock
        ),
        "login": TokenBucketLimiter(
            limits.login_rate_per_second,
            limits.login_burst,
            limits.max_tracked_clients,
            clock=clock,
        ),
        # Charged per verified API key or session (pdsno.api.deps.authenticate).
        "identity": TokenBucketLimiter(
            limits.rate_per_second, limits.burst, limits.max_tracked_clients, clock=clock
        ),
    }
    app.state.rate_limiters = limiters
    docs_paths = (
        frozenset(p for p in (app.docs_url, app.swagger_ui_oauth2_redirect_url) if p)
        if app.docs_url
        else frozenset()
    )

    # Outermost first; add_middleware() puts each new one outside the last.
    stack: list[tuple[type, dict]] = [
        (RequestContextMiddleware, {"trusted_proxies": trusted, "docs_paths": docs_paths}),
    ]
    if metrics is not None:
        stack.append(
            (HttpMetricsMiddleware, {"metrics": metrics, "templates": RouteTemplates(app)})
        )
    if cors is not None:
        stack.append((CORSMiddleware, cors))
    if limits.rate_limit_enabled:
        stack.append(
            (
                RateLimitMiddleware,
                {
                    "default": limiters["default"],
                    "login": limiters["login"],
                    "identity": limiters["identity"],
                    "metrics": metrics,
                },
            )
        )
    stack += [
        (BodySizeLimitMiddleware, {"max_bytes": limits.max_body_bytes}),
        (
            ConcurrencyLimitMiddleware,
            {
                "max_requests": limits.max_concurrent_requests,
                "metrics": metrics,
                "exempt": (LIVENESS_PATH,),
            },
        ),
    ]
    for middleware, options in reversed(stack):
        app.add_middleware(middleware, **options)
