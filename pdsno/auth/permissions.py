"""Which role may do what. Deny by default: a permission not listed is nobody's.

Operators (users with a session) and automation (API keys) hold one of ROLES.
The role `controller` is reserved: controllers authenticate on the peer
listener with their certificate and signed envelopes, never with a password
or an API key, so no user or key may hold it and it grants nothing here.
"""

from __future__ import annotations

from pdsno.errors import PdsnoError

ROLES = ("admin", "operator", "approver", "auditor")
RESERVED_ROLES = ("controller",)
ALL_ROLES = frozenset(ROLES)

PERMISSIONS: dict[str, frozenset[str]] = {
    "devices:read": ALL_ROLES,
    "devices:write": frozenset({"admin", "operator"}),
    "proposals:read": ALL_ROLES,
    "proposals:submit": frozenset({"admin", "operator"}),
    "proposals:decide": frozenset({"admin", "approver"}),
    "policies:read": ALL_ROLES,
    "policies:publish": frozenset({"admin"}),
    "controllers:read": ALL_ROLES,
    "events:read": frozenset({"admin", "auditor"}),
    # The caller's own identity and session.
    "self:read": ALL_ROLES,
    "self:logout": ALL_ROLES,
    # Ending other users' sessions.
    "sessions:revoke": frozenset({"admin"}),
}

# For `--scope` choices: every permission name, sorted.
PERMISSION_NAMES = tuple(sorted(PERMISSIONS))


class InvalidRoleError(PdsnoError, ValueError):
    """A role that does not exist, or one reserved for controllers."""


class InvalidScopeError(PdsnoError, ValueError):
    """An API key scope that names no permission, or one its role lacks."""


def allowed(role: str, permission: str) -> bool:
    return role in PERMISSIONS.get(permission, frozenset())


def permissions_of(role: str) -> frozenset[str]:
    return frozenset(name for name, roles in PERMISSIONS.items() if role in roles)


def check_role(role: str) -> str:
    """`role` if a user or an API key may hold it; else InvalidRoleError."""
    if role in RESERVED_ROLES:
        raise InvalidRoleError(
            f"role {role!r} is reserved for controllers, which authenticate with their "
            "certificate on the peer listener; choose one of " + ", ".join(ROLES)
        )
    if role not in ROLES:
        raise InvalidRoleError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def check_scopes(role: str, scopes: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """The scopes of a new key, sorted and deduplicated; None keeps all of the role's.

    Each scope must be a permission, and one that `role` holds: a scope can
    only narrow a key, never widen it.
    """
    if scopes is None:
        return None
    chosen = sorted(set(scopes))
    if not chosen:
        raise InvalidScopeError("give at least one scope, or none for all of the role's")
    unknown = [scope for scope in chosen if scope not in PERMISSIONS]
    if unknown:
        raise InvalidScopeError(
            f"unknown scope {', '.join(unknown)}: scopes are permission names, one of "
            + ", ".join(PERMISSION_NAMES)
        )
    outside = [scope for scope in chosen if not allowed(role, scope)]
    if outside:
        raise InvalidScopeError(
            f"role {role} does not hold {', '.join(outside)}; a scope can only narrow a key "
            f"within its role ({', '.join(sorted(permissions_of(role)))})"
        )
    return chosen
