"""The cached device read, answered without FastAPI's routing and dependency solver.

`GET /api/v1/devices/{device_id}` is what polling tools call, and once its
caches are warm the work of the route itself is small: FastAPI's routing
(a regex per route) and its dependency solver (the dependency graph walked,
the path parameter validated, a response prepared) cost more than the read
(issue 14: even a minimal FastAPI app reached about half a raw ASGI app's
requests per second). This layer, the innermost of the middleware stack
(pdsno.api.app), answers such a read when the device is in its cache and
the route's own dependency, READ_DEVICE with authenticate() below it, lets
the request through from their caches alone (pdsno.api.deps.resolve_cached):
the same credential cache and revocation bound, the same permission and
region check, the same answer (device_response). Everything else goes on
to FastAPI untouched: another path or method, a device, credential or region
not cached, and every refusal, so that errors keep their one implementation.

The layers outside (request context and security headers, metrics, CORS,
the rate limits, strict input) see this answer as they see the route's. The
identity bucket of the credential is charged once a request, whichever of
this layer and the route does it (pdsno.api.middleware.ratelimit.identity_wait).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from pdsno.api.deps import resolve_cached
from pdsno.api.routes.devices import READ_DEVICE, device_response

# The route's path up to its parameter: the API's /api/v1, the router's /devices.
PREFIX = "/api/v1/devices/"


def device_id_of(scope: Scope) -> str | None:
    """The device_id of a GET the device read route would get, else None
    (the route serves no HEAD: FastAPI answers it 405).

    Starlette matches its `{device_id}` (one path segment, at least one
    character) against the path as decoded, without the root path: a request
    under a root path is left to it. The ID's validation is the cache's: only
    the route, after validating it, stores a device under its ID.
    """
    if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return None
    device_id = path[len(PREFIX) :]
    if not device_id or "/" in device_id:
        return None
    return device_id


class FastDeviceReadMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        device_id = device_id_of(scope)
        if device_id is not None:
            # The app's context, as the route's `context` dependency reads it.
            found, body = scope["app"].state.context.device_cache.peek(device_id)
            if found:
                route_scope = {**scope, "path_params": {"device_id": device_id}}
                if await resolve_cached(route_scope, READ_DEVICE):
                    await device_response(body)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
