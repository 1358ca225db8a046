"""FastAPI dependencies: the controller context, who is calling, and what they may do.

Callers present either an operator session (`Authorization: Bearer <token>`,
from POST /api/v1/auth/login) or an API key (`X-API-Key`). Every route of the
operator API declares its permission with `require(permission)`; the route
audit test (tests/test_route_permissions.py) fails for a route without one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Column, Table, select
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from pdsno.api.middleware.ratelimit import charge_verified_identity, identity_key
from pdsno.auth import api_keys, sessions
from pdsno.auth.principal import Principal
from pdsno.clock import utcnow
from pdsno.context import ControllerContext
from pdsno.errors import AuthenticationError, PdsnoError, PermissionDeniedError
from pdsno.nib.cache import TTLCache
from pdsno.nib.schema import config_proposals, controllers, devices, users
from pdsno.security.keys import sha256_hex

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="pdsno_<id>_<secret>")
BEARER = HTTPBearer(
    auto_error=False, description="an operator session token from POST /api/v1/auth/login"
)

# Path parameters that name a resource with a region: a principal bound to a
# region is refused another region's resource before the handler runs (a
# resource of no region, such as the global controller, is no region's).
REGION_OF_PATH_PARAMETER: dict[str, tuple[Table, Column]] = {
    "device_id": (devices, devices.c.device_id),
    "proposal_id": (config_proposals, config_proposals.c.proposal_id),
    "controller_id": (controllers, controllers.c.controller_id),
    "username": (users, users.c.username),
}

# How a route meets the contract "a principal bound to a region sees and
# changes only that region" (docs/controller.md), declared with require():
#   "request":    the `region` query parameter and the resources named by the
#                 path (REGION_OF_PATH_PARAMETER) are checked; a list route
#                 also filters by the principal's region (region_scope);
#   "controller": the route acts as this controller (publishes, submits), so
#                 the controller's own region is checked as well;
#   "own":        the route reaches only the caller's own identity or session.
# tests/test_route_permissions.py calls every route as a principal of
# another region and fails for one that lets it through.
REGION_RULES = ("request", "controller", "own")
# Entries of each of the credential and region caches (LRU beyond it).
CACHED_ENTRIES = 10_000

V = TypeVar("V")


# Every dependency here is `async def`: FastAPI runs a sync one in the thread
# pool, a hop (two loop wake-ups and a worker's lock) for work that does no
# I/O. Only a cache miss reads the NIB, in the thread pool (tests/test_hot_path.py
# counts the hops and queries of an authenticated device read).


async def context(request: Request) -> ControllerContext:
    return request.app.state.context


Context = Annotated[ControllerContext, Depends(context)]


class NotCachedError(Exception):
    """A resolution from the caches alone (resolve_cached) met a miss."""


# Set in the scope of a request that resolve_cached() resolves: the
# dependencies answer from their caches alone, and a miss raises NotCachedError.
CACHED_ONLY = "pdsno.cached_only"


async def _cached(
    request: Request, cache: TTLCache[V] | None, key: str, load: Callable[[], V]
) -> V:
    """`key` of `cache`, loaded by `load` (in the thread pool) on a miss; in a
    resolution from the caches alone, a miss (or no cache) raises NotCachedError."""
    if request.scope.get(CACHED_ONLY):
        found, value = cache.peek(key) if cache is not None else (False, None)
        if not found:
            raise NotCachedError(key)
        return value  # type: ignore[return-value]
    if cache is None:
        return await run_in_threadpool(load)
    return await cache.get_or_load_async(key, load)


async def resolve_cached(scope: Scope, check: Callable[..., Awaitable[Principal]]) -> bool:
    """Whether FastAPI would let this request through `check` (a require()
    dependency) and every dependency below it, answered from their caches
    alone: False on a miss and on a refusal, which the route then meets
    itself (pdsno.api.fast_device_read). These are the dependencies
    themselves, called in FastAPI's order; `scope` holds the route's
    path_params. The identity bucket pays once either way (identity_wait)."""
    request = Request({**scope, CACHED_ONLY: True})
    ctx = await context(request)
    try:
        principal = await authenticate(
            request, await API_KEY_HEADER(request), await BEARER(request), ctx
        )
        await check(request, principal, ctx)
    except (NotCachedError, HTTPException, PdsnoError):
        return False
    return True


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer realm="pdsno"'},
    )


async def authenticate(
    request: Request,
    presented_key: Annotated[str | None, Security(API_KEY_HEADER)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ctx: Context,
) -> Principal:
    """The caller, from a session or an API key; 401 without valid credentials."""
    if presented_key and bearer is not None:
        raise _unauthenticated("send either X-API-Key or an Authorization bearer, not both")
    if bearer is None and request.headers.get("Authorization"):
        raise _unauthenticated("the Authorization header must be `Bearer <session token>`")
    if not presented_key and bearer is None:
        raise _unauthenticated(
            "authentication required: send Authorization: Bearer <session token> "
            "(POST /api/v1/auth/login) or X-API-Key"
        )
    credential = bearer.credentials if bearer is not None else (presented_key or "")

    def verify() -> Principal:
        with ctx.engine.connect() as conn:
            if bearer is not None:
                return sessions.authenticate(conn, credential)
            return api_keys.authenticate(conn, credential)

    try:
        principal = await _cached(
            request, _auth_cache(ctx), sha256_hex(credential.encode()), verify
        )
    except AuthenticationError as error:
        raise _unauthenticated(str(error)) from None
    if principal.expires_at is not None and principal.expires_at <= utcnow():
        raise _unauthenticated("session expired: log in again")
    # Only now, verified, does the credential's own rate-limit bucket pay.
    charge_verified_identity(
        request,
        identity_key(principal.kind, principal.session_hash or principal.subject_id or ""),
    )
    return principal


def _auth_cache(ctx: ControllerContext) -> TTLCache[Principal] | None:
    """The context's cache of verified credentials; none when auth.cache_seconds is 0."""
    seconds = ctx.settings.auth.cache_seconds
    if seconds <= 0:
        return None
    if ctx.auth_cache is None:
        ctx.auth_cache = TTLCache(max_entries=CACHED_ENTRIES, ttl_seconds=seconds)
    return ctx.auth_cache


def _region_cache(ctx: ControllerContext) -> TTLCache[str | None] | None:
    """The regions of resources named by a path, kept as long as a verified
    credential (auth.cache_seconds): a region changed by another controller
    applies here within the bound a revocation does; none when it is 0."""
    seconds = ctx.settings.auth.cache_seconds
    if seconds <= 0:
        return None
    if ctx.region_cache is None:
        ctx.region_cache = TTLCache(max_entries=CACHED_ENTRIES, ttl_seconds=seconds)
    return ctx.region_cache


def forget_region(ctx: ControllerContext, parameter: str, value: str) -> None:
    """A resource's region changed here: the region check sees it at once."""
    if ctx.region_cache is not None:
        ctx.region_cache.invalidate(f"{parameter}={value}")


Authenticated = Annotated[Principal, Depends(authenticate)]


def require(permission: str, *, region: str = "request") -> Callable[..., Principal]:
    """A dependency that lets through only callers holding `permission`.

    401 without valid credentials; 403 naming the permission when the role
    (or an API key's scopes) lacks it; 403 when a principal bound to a region
    asks for another region, by the `region` query parameter or by a path
    parameter naming a device, proposal, controller or user of another region,
    or (`region="controller"`) calls a controller of another region.

    A permission missing from pdsno.auth.permissions.PERMISSIONS is nobody's
    (deny by default); the route audit test names such a route.
    """

    if region not in REGION_RULES:
        raise ValueError(f"unknown region rule {region!r}: one of {', '.join(REGION_RULES)}")

    async def check(request: Request, principal: Authenticated, ctx: Context) -> Principal:
        if not principal.may(permission):
            raise PermissionDeniedError(principal.why_not(permission))
        if principal.region is not None and region != "own":
            await _check_request_region(request, principal, ctx)
            if region == "controller":
                principal.check_region(
                    ctx.identity.region, f"controller {ctx.identity.controller_id}"
                )
        return principal

    check.permission = permission  # type: ignore[attr-defined]  # read by the route audit test
    check.region_rule = region  # type: ignore[attr-defined]  # read by the route audit test
    return check


class _NoSuchResourceError(Exception):
    """A path names a resource that does not exist: never cached."""


async def _check_request_region(
    request: Request, principal: Principal, ctx: ControllerContext
) -> None:
    requested = request.query_params.get("region")
    if requested is not None:
        principal.check_region(requested, "the requested region")
    cache = _region_cache(ctx)
    for name, value in request.path_params.items():
        if name not in REGION_OF_PATH_PARAMETER:
            continue
        table, key = REGION_OF_PATH_PARAMETER[name]

        def read_region(table: Table = table, key: Column = key, value: str = value) -> str | None:
            with ctx.engine.connect() as conn:
                row = conn.execute(select(table.c.region).where(key == value)).first()
            if row is None:
                raise _NoSuchResourceError
            return row.region

        try:
            resource_region = await _cached(request, cache, f"{name}={value}", read_region)
        except _NoSuchResourceError:
            continue  # a missing resource is the handler's 404
        # One of no region is refused.
        principal.check_region(resource_region, f"{name.removesuffix('_id')} {value}")


def region_scope(principal: Principal, requested: str | None) -> str | None:
    """The region filter of a list request: a bound principal's own region
    when none is asked for; 403 for another one."""
    if principal.region is None:
        return requested
    if requested is not None:
        principal.check_region(requested, "the requested region")
    return principal.region


def check_region(principal: Principal, region: str | None, what: str = "this resource") -> None:
    """403 unless `principal` may reach a resource of `region`."""
    principal.check_region(region, what)
