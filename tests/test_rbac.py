"""Roles, permissions, API key scopes and region scoping, through the real app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from test_auth import Api, build_api

from pdsno.api.deps import region_scope
from pdsno.auth import api_keys, users
from pdsno.auth.permissions import (
    PERMISSION_NAMES,
    PERMISSIONS,
    ROLES,
    InvalidRoleError,
    InvalidScopeError,
    allowed,
    permissions_of,
)
from pdsno.auth.principal import Principal
from pdsno.clock import utcnow
from pdsno.errors import PdsnoError, PermissionDeniedError
from pdsno.nib import devices
from pdsno.nib.schema import api_keys as api_keys_table
from pdsno.nib.schema import config_proposals
from pdsno.security.keys import config_hash

A, B = "region-a", "region-b"


@pytest.fixture
def api(nib_engine) -> Iterator[Api]:
    built, http = build_api(nib_engine)
    with built.client:
        yield built
    http.close()


@pytest.fixture
def resources(api) -> dict[str, str]:
    """A device and an open proposal in each of two regions."""
    now = utcnow()
    ids = {}
    with api.engine.begin() as conn:
        for region in (A, B):
            device_id = f"sw-{region}"
            devices.create(
                conn, device_id=device_id, name=device_id, region=region, status="active"
            )
            proposal_id = str(uuid.uuid4())
            lines = ["snmp-server location lab"]
            conn.execute(
                config_proposals.insert().values(
                    proposal_id=proposal_id,
                    device_id=device_id,
                    origin_id=api.ctx.identity.controller_id,
                    region=region,
                    config_lines=lines,
                    config_hash=config_hash(lines),
                    sensitivity_local="high",
                    sensitivity="high",
                    status="awaiting_global",
                    created_at=now,
                    expires_at=now + timedelta(hours=1),
                    updated_at=now,
                    version=1,
                )
            )
            ids[f"device-{region}"] = device_id
            ids[f"proposal-{region}"] = proposal_id
    return ids


# ---- the permission table ------------------------------------------------------------


def test_deny_by_default():
    assert not allowed("admin", "no:such-permission")
    assert not allowed("nobody", "devices:read")
    assert not allowed("controller", "devices:read"), "the controller role grants nothing here"
    for role in ROLES:
        assert permissions_of(role) <= set(PERMISSIONS)
    assert permissions_of("controller") == frozenset()
    assert tuple(sorted(PERMISSIONS)) == PERMISSION_NAMES


def test_role_matrix():
    assert permissions_of("auditor") == {
        "devices:read",
        "proposals:read",
        "policies:read",
        "controllers:read",
        "events:read",
        "self:read",
        "self:logout",
    }
    assert "proposals:decide" in permissions_of("approver")
    assert "devices:write" not in permissions_of("approver")
    assert "proposals:decide" not in permissions_of("operator")
    assert permissions_of("admin") == set(PERMISSIONS)


def test_reserved_and_unknown_roles_are_refused(nib_engine):
    with nib_engine.begin() as conn:
        for role in ("controller", "root"):
            with pytest.raises(InvalidRoleError):
                api_keys.create(conn, name="k", role=role, region=None)
            with pytest.raises(InvalidRoleError):
                users.create(conn, username="u", password="x" * 12, role=role)


def test_a_wrong_role_gets_403_naming_the_permission(api):
    for role, expected in (("admin", 200), ("auditor", 200), ("operator", 403), ("approver", 403)):
        response = api.client.get("/api/v1/events", headers=api.key(role))
        assert response.status_code == expected, role
        if expected == 403:
            assert response.json()["detail"] == f"role {role} lacks the permission events:read"
    api.user("olga", "auditor")
    refused = api.client.post(
        "/api/v1/devices",
        json={"device_id": "x", "name": "x", "region": A},
        headers=api.session("olga"),
    )
    assert refused.status_code == 403 and "devices:write" in refused.json()["detail"]


# ---- API key scopes ----------------------------------------------------------------------


def test_scopes_narrow_an_api_key_within_its_role(api, resources):
    narrow = api.key("operator", scopes=["devices:read", "self:read"])
    assert api.client.get("/api/v1/devices", headers=narrow).status_code == 200
    write = api.client.post(
        "/api/v1/devices", json={"device_id": "x", "name": "x", "region": A}, headers=narrow
    )
    assert write.status_code == 403
    assert write.json()["detail"] == "this API key is not scoped for the permission devices:write"
    proposals = api.client.get("/api/v1/proposals", headers=narrow)
    assert proposals.status_code == 403 and "proposals:read" in proposals.json()["detail"]
    me = api.client.get("/api/v1/auth/me", headers=narrow).json()
    assert me["kind"] == "api_key"
    assert me["scopes"] == ["devices:read", "self:read"]
    assert me["permissions"] == ["devices:read", "self:read"]

    # The same role without scopes keeps all of the role's permissions.
    full = api.client.get("/api/v1/auth/me", headers=api.key("operator")).json()
    assert full["scopes"] is None and set(full["permissions"]) == permissions_of("operator")


def test_scopes_are_checked_at_creation(nib_engine):
    with nib_engine.begin() as conn:
        with pytest.raises(InvalidScopeError, match="unknown scope devices:reed"):
            api_keys.create(conn, name="k", role="operator", region=None, scopes=["devices:reed"])
        with pytest.raises(InvalidScopeError, match="does not hold devices:write"):
            api_keys.create(conn, name="k", role="auditor", region=None, scopes=["devices:write"])
        with pytest.raises(InvalidScopeError, match="at least one"):
            api_keys.create(conn, name="k", role="auditor", region=None, scopes=[])
        # CLI-friendly: a PdsnoError (exit 1 with the message) and a ValueError.
        assert issubclass(InvalidScopeError, PdsnoError) and issubclass(
            InvalidScopeError, ValueError
        )
        api_keys.create(
            conn,
            name="k",
            role="auditor",
            region=None,
            scopes=["events:read", "devices:read", "events:read"],
        )
        stored = conn.execute(select(api_keys_table.c.scopes)).scalar_one()
    assert stored == ["devices:read", "events:read"]


# ---- regions --------------------------------------------------------------------------------


def test_a_principal_bound_to_a_region_reaches_only_its_region(api, resources):
    bound = api.key("operator", region=A)
    everywhere = api.key("operator")

    def get(path: str, headers: dict[str, str] = bound, **params: str) -> int:
        return api.client.get(f"/api/v1/{path}", headers=headers, params=params).status_code

    assert get(f"devices/{resources['device-region-a']}") == 200
    other = api.client.get(f"/api/v1/devices/{resources['device-region-b']}", headers=bound)
    assert other.status_code == 403
    assert "bound to region region-a" in other.json()["detail"]
    assert "region-b" in other.json()["detail"]
    patched = api.client.patch(
        f"/api/v1/devices/{resources['device-region-b']}",
        json={"version": 1, "name": "taken over"},
        headers=bound,
    )
    assert patched.status_code == 403
    assert get("devices", region=B) == 403
    assert get("devices", region=A) == 200
    assert get(f"proposals/{resources['proposal-region-a']}") == 200
    assert get(f"proposals/{resources['proposal-region-b']}") == 403
    assert get("proposals", region=B) == 403
    # A missing resource stays the handler's 404.
    assert get("devices/no-such-device") == 404
    # An unbound principal reaches every region.
    assert get(f"devices/{resources['device-region-b']}", everywhere) == 200
    assert get(f"proposals/{resources['proposal-region-b']}", everywhere) == 200


def test_a_bound_approver_cannot_decide_for_another_region(api, resources):
    api.user("pia", "approver", region=A)
    bearer = api.session("pia")
    response = api.client.post(
        f"/api/v1/proposals/{resources['proposal-region-b']}/approve", json={}, headers=bearer
    )
    assert response.status_code == 403 and "bound to region region-a" in response.json()["detail"]
    with api.engine.connect() as conn:
        status = conn.execute(
            select(config_proposals.c.status).where(
                config_proposals.c.proposal_id == resources["proposal-region-b"]
            )
        ).scalar_one()
    assert status == "awaiting_global"


def test_a_bound_admin_revokes_sessions_of_its_region_only(api):
    api.user("quinn", "operator", region=B)
    api.session("quinn")
    bound_admin = api.key("admin", region=A)
    refused = api.client.delete("/api/v1/auth/users/quinn/sessions", headers=bound_admin)
    assert refused.status_code == 403
    allowed_admin = api.key("admin", region=B)
    done = api.client.delete("/api/v1/auth/users/quinn/sessions", headers=allowed_admin)
    assert done.status_code == 200 and done.json()["revoked"] == 1


def test_region_scope_helper_for_list_handlers():
    unbound = Principal("ops", "operator", None)
    bound = Principal("ops-a", "operator", A)
    assert region_scope(unbound, None) is None
    assert region_scope(unbound, B) == B
    assert region_scope(bound, None) == A, "a bound principal lists its own region by default"
    assert region_scope(bound, A) == A
    with pytest.raises(PermissionDeniedError, match="bound to region region-a"):
        region_scope(bound, B)
    bound.check_region(A)
    with pytest.raises(PermissionDeniedError):
        bound.check_region(B, "device sw-b")
    with pytest.raises(PermissionDeniedError):
        bound.check_region(None, "a global resource")
