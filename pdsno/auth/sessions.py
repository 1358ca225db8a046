"""Operator sessions: a random bearer token, stored only as its SHA-256.

A session ends at `expires_at` (at most `auth.session_ttl_seconds`, itself at
most 8 h, after login; never extended), when it is revoked (logout, an
admin, a password change, disabling the user), or when its user is disabled.
The user's role and region are read with the session, at most
`auth.cache_seconds` apart (pdsno.api.deps caches a verified session), so a
change applies to open sessions within that time.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import Connection, select, update

from pdsno.auth.principal import Principal
from pdsno.clock import as_utc, utcnow
from pdsno.errors import AuthenticationError
from pdsno.nib.schema import sessions, users
from pdsno.security.keys import sha256_hex

TOKEN_PREFIX = "pdsno-s-"  # noqa: S105  # tells a session token apart; not a secret
MAX_TTL_SECONDS = 8 * 3600


def token_hash(token: str) -> str:
    return sha256_hex(token.encode())


def create(conn: Connection, user_id: str, *, ttl_seconds: int) -> tuple[str, datetime]:
    """A new session for `user_id`: the token (shown once) and its expiry."""
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"a session lasts at most {MAX_TTL_SECONDS} s, not {ttl_seconds}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + timedelta(seconds=ttl_seconds)
    conn.execute(
        sessions.insert().values(
            token_hash=token_hash(token),
            user_id=user_id,
            created_at=now,
            expires_at=expires_at,
        )
    )
    return token, expires_at


def authenticate(conn: Connection, token: str) -> Principal:
    """The principal of a live session; AuthenticationError otherwise."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        raise AuthenticationError("malformed session token")
    digest = token_hash(token)
    row = conn.execute(
        select(
            sessions.c.token_hash,
            sessions.c.expires_at,
            sessions.c.revoked_at,
            users.c.user_id,
            users.c.username,
            users.c.role,
            users.c.region,
            users.c.disabled,
        )
        .join(users, users.c.user_id == sessions.c.user_id)
        .where(sessions.c.token_hash == digest)
    ).one_or_none()
    if row is None:
        raise AuthenticationError("invalid session token")
    if row.revoked_at is not None:
        raise AuthenticationError("session revoked: log in again")
    expires_at = as_utc(row.expires_at)
    if expires_at <= utcnow():
        raise AuthenticationError("session expired: log in again")
    if row.disabled:
        raise AuthenticationError("user disabled")
    return Principal(
        name=row.username,
        role=row.role,
        region=row.region,
        kind="session",
        subject_id=row.user_id,
        session_hash=row.token_hash,
        expires_at=expires_at,
    )


def revoke(conn: Connection, digest: str) -> bool:
    """End one session by its token hash; False if it had already ended."""
    result = conn.execute(
        update(sessions)
        .where(sessions.c.token_hash == digest)
        .where(sessions.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return result.rowcount == 1


def revoke_all(conn: Connection, user_id: str) -> int:
    """End every open session of a user; the number ended."""
    now = utcnow()
    live = [
        row.token_hash
        for row in conn.execute(
            select(sessions.c.token_hash, sessions.c.expires_at)
            .where(sessions.c.user_id == user_id)
            .where(sessions.c.revoked_at.is_(None))
        )
        if as_utc(row.expires_at) > now
    ]
    conn.execute(
        update(sessions)
        .where(sessions.c.user_id == user_id)
        .where(sessions.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return len(live)
