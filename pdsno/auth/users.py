"""Operator accounts: argon2id password hashes, logins, lockout.

Passwords are hashed with argon2id (argon2-cffi's PasswordHasher); a login
whose stored hash was made with other parameters rehashes it. After
`auth.lockout_threshold` consecutive failed logins the account is locked for
`auth.lockout_seconds`; a login during the lock is refused without looking at
the password, and a success resets the count. Each lock takes another
`lockout_threshold` failures.

Every refusal gives the caller the same answer (LOGIN_REFUSED), whether the
user is unknown, disabled, locked or the password wrong, and spends the same
hashing time, so that neither the answer nor its timing tells which. The
audit trail records the real reason: `auth.login_failed`, `auth.locked` and
`auth.login` events.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import IntegrityError

from pdsno import audit
from pdsno.auth import sessions
from pdsno.auth.permissions import check_role
from pdsno.auth.principal import Principal
from pdsno.clock import as_utc, utcnow
from pdsno.config import AuthSettings
from pdsno.errors import AuthenticationError, ConflictError, NotFoundError, PdsnoError
from pdsno.nib.schema import users

# argon2id with argon2-cffi's defaults (RFC 9106's low-memory profile). When
# these change, each user's hash is redone at their next successful login.
HASHER = PasswordHasher()

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024

LOGIN_REFUSED = "login refused: wrong username or password, or the account is locked or disabled"


class InvalidPasswordError(PdsnoError, ValueError):
    """A new password that does not meet the rules."""


class LoginMetrics(Protocol):
    """What logins count (pdsno.observability.metrics.Metrics has both)."""

    def count_login_failure(self) -> None: ...

    def count_lockout(self) -> None: ...


@dataclass(frozen=True)
class LoginResult:
    token: str
    expires_at: datetime
    principal: Principal


def check_username(username: str) -> str:
    if not USERNAME.fullmatch(username):
        raise PdsnoError(
            f"invalid username {username!r}: 1 to 128 letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidPasswordError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidPasswordError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    return HASHER.hash(check_password(password))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@cache
def _decoy_hash() -> str:
    return HASHER.hash(secrets.token_urlsafe(32))


def _spend_hashing_time(password: str) -> None:
    """As long as a real check, against a hash no password matches."""
    _verify(_decoy_hash(), password)


def _locked(row: Any, now: datetime) -> bool:
    return row.locked_until is not None and as_utc(row.locked_until) > now


# ---- accounts -------------------------------------------------------------


def get(conn: Connection, username: str) -> Any:
    row = conn.execute(select(users).where(users.c.username == username)).one_or_none()
    if row is None:
        raise NotFoundError(f"no user {username}")
    return row


def create(
    conn: Connection,
    *,
    username: str,
    password: str,
    role: str,
    region: str | None = None,
    actor: str = "cli",
) -> str:
    """A new user; its ID. Audited as `user.created`."""
    check_username(username)
    check_role(role)
    if region is not None and not REGION.fullmatch(region):
        raise PdsnoError(f"invalid region {region!r}: lowercase letters, digits and -")
    password_hash = hash_password(password)
    user_id = str(uuid.uuid4())
    now = utcnow()
    try:
        with conn.begin_nested():
            conn.execute(
                users.insert().values(
                    user_id=user_id,
                    username=username,
                    password_hash=password_hash,
                    role=role,
                    region=region,
                    failed_logins=0,
                    locked_until=None,
                    disabled=0,
                    created_at=now,
                    updated_at=now,
                )
            )
    except IntegrityError:
        raise ConflictError(f"user {username} already exists") from None
    audit.append(
        conn,
        "user.created",
        actor=actor,
        subject=username,
        region=region,
        payload={"role": role, "user_id": user_id},
    )
    return user_id


def list_users(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(users).order_by(users.c.username))
    return [
        {
            "username": row.username,
            "role": row.role,
            "region": row.region,
            "disabled": bool(row.disabled),
            "failed_logins": row.failed_logins,
            "locked_until": as_utc(row.locked_until).isoformat(timespec="seconds")
            if row.locked_until
            else None,
        }
        for row in rows
    ]


def set_password(conn: Connection, username: str, password: str, *, actor: str = "cli") -> int:
    """A new password; ends the user's sessions (their number is returned)."""
    row = get(conn, username)
    conn.execute(
        update(users)
        .where(users.c.user_id == row.user_id)
        .values(password_hash=hash_password(password), updated_at=utcnow())
    )
    ended = sessions.revoke_all(conn, row.user_id)
    audit.append(
        conn,
        "user.password_changed",
        actor=actor,
        subject=username,
        region=row.region,
        payload={"sessions_revoked": ended},
    )
    return ended


def unlock(conn: Connection, username: str, *, actor: str = "cli") -> None:
    row = get(conn, username)
    conn.execute(
        update(users)
        .where(users.c.user_id == row.user_id)
        .values(failed_logins=0, locked_until=None, updated_at=utcnow())
    )
    audit.append(conn, "user.unlocked", actor=actor, subject=username, region=row.region)


def disable(conn: Connection, username: str, *, actor: str = "cli") -> int:
    """Disable a user and end their sessions (their number is returned)."""
    row = get(conn, username)
    conn.execute(
        update(users).where(users.c.user_id == row.user_id).values(disabled=1, updated_at=utcnow())
    )
    ended = sessions.revoke_all(conn, row.user_id)
    audit.append(
        conn,
        "user.disabled",
        actor=actor,
        subject=username,
        region=row.region,
        payload={"sessions_revoked": ended},
    )
    return ended


def enable(conn: Connection, username: str, *, actor: str = "cli") -> None:
    """Let a disabled user log in again (with a fresh failure count)."""
    row = get(conn, username)
    conn.execute(
        update(users)
        .where(users.c.user_id == row.user_id)
        .values(disabled=0, failed_logins=0, locked_until=None, updated_at=utcnow())
    )
    audit.append(conn, "user.enabled", actor=actor, subject=username, region=row.region)


def revoke_sessions(conn: Connection, username: str, *, actor: str = "cli") -> int:
    """End every open session of a user; the number ended. Audited."""
    row = get(conn, username)
    ended = sessions.revoke_all(conn, row.user_id)
    audit.append(
        conn,
        "auth.sessions_revoked",
        actor=actor,
        subject=username,
        region=row.region,
        payload={"sessions_revoked": ended},
    )
    return ended


# ---- logging in -----------------------------------------------------------


def login(
    engine: Engine,
    settings: AuthSettings,
    *,
    username: str,
    password: str,
    client: str | None = None,
    metrics: LoginMetrics | None = None,
) -> LoginResult:
    """A new session for a right password; AuthenticationError(LOGIN_REFUSED) otherwise.

    `metrics`, when given, counts every refusal and every lock."""
    try:
        return _login(engine, settings, username, password, client, metrics)
    except AuthenticationError:
        if metrics is not None:
            metrics.count_login_failure()
        raise


def _login(
    engine: Engine,
    settings: AuthSettings,
    username: str,
    password: str,
    client: str | None,
    metrics: LoginMetrics | None,
) -> LoginResult:
    with engine.connect() as conn:
        user = conn.execute(select(users).where(users.c.username == username)).one_or_none()
    if user is None or user.disabled or _locked(user, utcnow()):
        # Never the user's own hash: a locked account's password is not checked.
        _spend_hashing_time(password)
        reason = "unknown_user" if user is None else "disabled" if user.disabled else "locked"
        _refuse(engine, username, user, reason, client)
    if not _verify(user.password_hash, password):
        if _record_failure(engine, settings, user, client) and metrics is not None:
            metrics.count_lockout()
        raise AuthenticationError(LOGIN_REFUSED)

    with engine.begin() as conn:
        current = conn.execute(
            select(users).where(users.c.user_id == user.user_id).with_for_update()
        ).one()
        # Disabled or locked in the meantime: refused all the same.
        refused = "disabled" if current.disabled else None
        if _locked(current, utcnow()):
            refused = "locked"
        if refused is None:
            changes: dict[str, Any] = {"failed_logins": 0, "locked_until": None}
            rehashed = current.password_hash == user.password_hash and HASHER.check_needs_rehash(
                current.password_hash
            )
            if rehashed:
                changes["password_hash"] = HASHER.hash(password)
            conn.execute(
                update(users)
                .where(users.c.user_id == user.user_id)
                .values(**changes, updated_at=utcnow())
            )
            token, expires_at = sessions.create(
                conn, user.user_id, ttl_seconds=settings.session_ttl_seconds
            )
            audit.append(
                conn,
                "auth.login",
                actor=username,
                subject=username,
                region=user.region,
                payload={
                    "client": client,
                    "expires_at": expires_at.isoformat(),
                    "rehashed": rehashed,
                },
            )
    if refused is not None:
        _refuse(engine, username, user, refused, client)
    principal = Principal(
        name=user.username,
        role=user.role,
        region=user.region,
        kind="session",
        subject_id=user.user_id,
        session_hash=sessions.token_hash(token),
        expires_at=expires_at,
    )
    return LoginResult(token=token, expires_at=expires_at, principal=principal)


def _refuse(engine: Engine, username: str, user: Any, reason: str, client: str | None):
    with engine.begin() as conn:
        audit.append(
            conn,
            "auth.login_failed",
            actor=username[:128],
            subject=username[:128],
            region=None if user is None else user.region,
            payload={"reason": reason, "client": client},
        )
    raise AuthenticationError(LOGIN_REFUSED)


def _record_failure(engine: Engine, settings: AuthSettings, user: Any, client: str | None) -> bool:
    """Count a wrong password; at the threshold, lock the account (and say so)."""
    now = utcnow()
    with engine.begin() as conn:
        # One statement: concurrent failures each count.
        conn.execute(
            update(users)
            .where(users.c.user_id == user.user_id)
            .values(failed_logins=users.c.failed_logins + 1, updated_at=now)
        )
        failures = conn.execute(
            select(users.c.failed_logins).where(users.c.user_id == user.user_id)
        ).scalar_one()
        audit.append(
            conn,
            "auth.login_failed",
            actor=user.username,
            subject=user.username,
            region=user.region,
            payload={"reason": "wrong_password", "failures": failures, "client": client},
        )
        if failures >= settings.lockout_threshold:
            locked_until = now + timedelta(seconds=settings.lockout_seconds)
            conn.execute(
                update(users)
                .where(users.c.user_id == user.user_id)
                .values(failed_logins=0, locked_until=locked_until)
            )
            audit.append(
                conn,
                "auth.locked",
                actor="pdsno",
                subject=user.username,
                region=user.region,
                payload={
                    "failures": failures,
                    "locked_until": locked_until.isoformat(),
                    "client": client,
                },
            )
            return True
    return False
