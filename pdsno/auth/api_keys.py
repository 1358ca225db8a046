"""API keys for operators and automation: shown once, stored as a hash.

A key reads `pdsno_<key id>_<secret>`; the key ID finds the row, the hash
of the whole key proves it. Keys carry a role and, optionally, a region and
scopes: a list of permissions that narrows the key within its role.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence

from sqlalchemy import Connection, select, update

from pdsno.auth.permissions import ROLES, check_role, check_scopes
from pdsno.auth.principal import Principal
from pdsno.clock import utcnow
from pdsno.errors import AuthenticationError, NotFoundError
from pdsno.nib.schema import api_keys
from pdsno.security.keys import sha256_hex

__all__ = ["ROLES", "Principal", "authenticate", "create", "revoke"]


def create(
    conn: Connection,
    *,
    name: str,
    role: str,
    region: str | None,
    scopes: Sequence[str] | None = None,
) -> str:
    """A new key, returned once. Unknown roles and scopes are refused
    (InvalidRoleError, InvalidScopeError: both PdsnoError and ValueError)."""
    check_role(role)
    chosen = check_scopes(role, None if scopes is None else list(scopes))
    key_id = secrets.token_hex(8)
    key = f"pdsno_{key_id}_{secrets.token_urlsafe(32)}"
    conn.execute(
        api_keys.insert().values(
            key_id=key_id,
            key_hash=sha256_hex(key.encode()),
            name=name,
            role=role,
            region=region,
            scopes=chosen,
            created_at=utcnow(),
        )
    )
    return key


def authenticate(conn: Connection, presented: str) -> Principal:
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "pdsno":
        raise AuthenticationError("malformed API key")
    row = conn.execute(select(api_keys).where(api_keys.c.key_id == parts[1])).one_or_none()
    if row is None or not hmac.compare_digest(row.key_hash, sha256_hex(presented.encode())):
        raise AuthenticationError("invalid API key")
    if row.revoked_at is not None:
        raise AuthenticationError("API key revoked")
    return Principal(
        name=row.name,
        role=row.role,
        region=row.region,
        kind="api_key",
        scopes=None if row.scopes is None else frozenset(row.scopes),
        subject_id=row.key_id,
    )


def revoke(conn: Connection, key_id: str) -> None:
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == key_id)
        .where(api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if result.rowcount != 1:
        raise NotFoundError(f"no active API key {key_id}")
