"""Operator sessions: log in with a username and password, log out, who am I.

POST /auth/login is the one route of the operator API open to anonymous
callers (besides health and metrics); everything else needs a session
(`Authorization: Bearer <token>`) or an API key (`X-API-Key`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from pdsno import audit
from pdsno.api.deps import Context, require
from pdsno.auth import sessions, users
from pdsno.auth.permissions import PERMISSIONS
from pdsno.auth.principal import Principal
from pdsno.context import ControllerContext
from pdsno.errors import PdsnoError

SURFACE = "api"
router = APIRouter(prefix="/auth", tags=["auth"])

NO_STORE = {"Cache-Control": "no-store"}


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=128)
    password: SecretStr = Field(min_length=1, max_length=users.MAX_PASSWORD_LENGTH)


class LoginOut(BaseModel):
    token: str = Field(description="send it as `Authorization: Bearer <token>`; shown once")
    token_type: Literal["bearer"] = "bearer"  # noqa: S105  # the scheme, not a secret
    expires_at: datetime
    username: str
    role: str
    region: str | None


class MeOut(BaseModel):
    name: str
    kind: Literal["session", "api_key"]
    role: str
    region: str | None
    permissions: list[str] = Field(description="what this caller may do, scopes applied")
    scopes: list[str] | None = Field(description="an API key's scopes; null: all of the role's")
    expires_at: datetime | None = Field(description="when the session ends; null for API keys")


class SessionsRevokedOut(BaseModel):
    username: str
    revoked: int


@router.post("/login", response_model=LoginOut)
def login(body: LoginIn, request: Request, response: Response, ctx: Context) -> dict:
    """A session for a username and password. Every refusal reads the same (401);
    after `auth.lockout_threshold` failures in a row the account is locked."""
    result = users.login(
        ctx.engine,
        ctx.settings.auth,
        username=body.username,
        password=body.password.get_secret_value(),
        client=request.client.host if request.client else None,
        metrics=getattr(ctx, "metrics", None),
    )
    response.headers.update(NO_STORE)
    return {
        "token": result.token,
        "expires_at": result.expires_at,
        "username": result.principal.name,
        "role": result.principal.role,
        "region": result.principal.region,
    }


# A session only (an API key is refused with 400): the contract names only the bearer.
@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
def logout(
    ctx: Context, principal: Annotated[Principal, Depends(require("self:logout", region="own"))]
) -> Response:
    """End the caller's own session."""
    if principal.session_hash is None:
        raise PdsnoError(
            "logout ends a session; an API key is revoked with `pdsno apikey revoke KEY_ID`"
        )
    with ctx.engine.begin() as conn:
        sessions.revoke(conn, principal.session_hash)
        audit.append(
            conn,
            "auth.logout",
            actor=principal.name,
            subject=principal.name,
            region=principal.region,
        )
    _forget_verified_credentials(ctx)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=MeOut)
def me(principal: Annotated[Principal, Depends(require("self:read", region="own"))]) -> dict:
    return {
        "name": principal.name,
        "kind": principal.kind,
        "role": principal.role,
        "region": principal.region,
        "permissions": sorted(name for name in PERMISSIONS if principal.may(name)),
        "scopes": None if principal.scopes is None else sorted(principal.scopes),
        "expires_at": principal.expires_at,
    }


@router.delete("/users/{username}/sessions", response_model=SessionsRevokedOut)
def revoke_user_sessions(
    username: Annotated[str, Path(min_length=1, max_length=128)],
    ctx: Context,
    principal: Annotated[Principal, Depends(require("sessions:revoke"))],
) -> dict:
    """End every open session of a user (an admin bound to a region: of that region only)."""
    with ctx.engine.begin() as conn:
        user = users.get(conn, username)
        principal.check_region(user.region, f"user {username}")
        revoked = users.revoke_sessions(conn, username, actor=principal.name)
    _forget_verified_credentials(ctx)
    return {"username": username, "revoked": revoked}


def _forget_verified_credentials(ctx: ControllerContext) -> None:
    """A revocation made here takes effect here at once (elsewhere within
    auth.cache_seconds): clearing advances the cache's generation, so a request
    that read the credential before the revocation committed cannot store it."""
    if ctx.auth_cache is not None:
        ctx.auth_cache.clear()
