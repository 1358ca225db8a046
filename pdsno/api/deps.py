"""FastAPI dependencies: the controller context, and who is calling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from pdsno.auth import api_keys
from pdsno.auth.permissions import allowed
from pdsno.context import ControllerContext
from pdsno.errors import AuthenticationError, PermissionDeniedError

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="pdsno_<id>_<secret>")


def context(request: Request) -> ControllerContext:
    return request.app.state.context


def require(permission: str) -> Callable[..., api_keys.Principal]:
    """A dependency that lets through only callers whose role holds `permission`."""

    def check(
        presented: Annotated[str | None, Security(API_KEY_HEADER)],
        ctx: Annotated[ControllerContext, Depends(context)],
    ) -> api_keys.Principal:
        if not presented:
            raise AuthenticationError("missing X-API-Key header")
        with ctx.engine.connect() as conn:
            principal = api_keys.authenticate(conn, presented)
        if not allowed(principal.role, permission):
            raise PermissionDeniedError(f"role {principal.role} lacks the permission {permission}")
        return principal

    check.permission = permission  # type: ignore[attr-defined]  # read by the route audit test
    return check


Context = Annotated[ControllerContext, Depends(context)]
