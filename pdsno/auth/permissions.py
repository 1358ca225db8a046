"""Which role may do what. Deny by default: a permission not listed is nobody's."""

from __future__ import annotations

ALL_ROLES = frozenset({"admin", "operator", "approver", "auditor"})

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
}


def allowed(role: str, permission: str) -> bool:
    return role in PERMISSIONS.get(permission, frozenset())
