"""Every route of the operator API declares its permission, and enforces it first.

Walks the routes of the real app (pdsno.api.app.create_app, surface "api"):
a route without a `require(permission)` dependency fails the test unless it
is one of PUBLIC below. Then each protected route is called without
credentials (401) and as a caller lacking its permission (403 naming it),
with dummy path parameters: the check must come before any lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import fastapi.routing
import pytest
from fastapi.dependencies.models import Dependant
from test_auth import Api, build_api

from pdsno.auth.permissions import PERMISSIONS, ROLES, allowed

# The only routes open without credentials, by name and path: probes, metrics,
# the OpenAPI contract and the login. A name not registered (metrics may live
# on a listener of its own) is simply absent.
PUBLIC = {
    "health": "/health",
    "health_status": "/health",
    "health_live": "/health/live",
    "health_ready": "/health/ready",
    "metrics": "/metrics",
    "openapi": "/openapi.json",  # the API's published contract
    "login": "/api/v1/auth/login",  # how an operator gets credentials
}
IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def api(nib_engine) -> Iterator[Api]:
    built, http = build_api(nib_engine)
    with built.client:
        yield built
    http.close()


def permissions_of(dependant: Dependant) -> list[str]:
    """Permissions declared through require(), at any depth of the dependency tree."""
    found = []
    for dependency in dependant.dependencies:
        permission = getattr(dependency.call, "permission", None)
        if permission is not None:
            found.append(permission)
        found.extend(permissions_of(dependency))
    return found


def every_route(api: Api) -> list[Any]:
    """All routes the app serves, those of included routers too (FastAPI >= 0.13x keeps
    included routers nested; iter_route_contexts flattens them with their full paths)."""
    routes = api.client.app.routes
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(flatten(routes)) if flatten else list(routes)


def protected_routes(api: Api) -> list[tuple[Any, list[str]]]:
    """Each route with its permissions; fails naming every route without a rule."""
    unprotected, unknown, routes = [], [], []
    for route in every_route(api):
        name = getattr(route, "name", None)
        path = getattr(route, "path", None) or ""
        if PUBLIC.get(name) == path:
            continue
        dependant = getattr(route, "dependant", None)
        if dependant is None:  # not an API route: a mount, a plain Starlette route
            unprotected.append(f"{path} ({type(route).__name__} {name})")
            continue
        permissions = permissions_of(dependant)
        if not permissions:
            unprotected.append(f"{sorted(route.methods or ())} {path} ({name})")
        unknown += [f"{path}: {p}" for p in permissions if p not in PERMISSIONS]
        routes.append((route, permissions))
    assert not unprotected, (
        "routes without a permission rule; add Depends(require(...)), or list them in PUBLIC: "
        + "; ".join(unprotected)
    )
    assert not unknown, "permissions missing from pdsno.auth.permissions: " + "; ".join(unknown)
    return routes


def concrete(path: str) -> str:
    """The path with dummy values for its parameters."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: f"dummy-{m[1].replace('_', '-')}", path)


def refused_as(api: Api, permission: str) -> tuple[dict[str, str], str]:
    """Credentials that lack `permission`: a role without it, else a key scoped elsewhere."""
    for role in ROLES:
        if not allowed(role, permission):
            return api.key(role), f"role {role} lacks the permission {permission}"
    other = next(p for p in sorted(PERMISSIONS) if p != permission and allowed("auditor", p))
    return (
        api.key("auditor", scopes=[other]),
        f"this API key is not scoped for the permission {permission}",
    )


def test_every_api_route_has_a_permission_rule(api):
    routes = protected_routes(api)
    paths = {route.path for route, _ in routes}
    # The walk sees the routers the app discovered, not a list of its own.
    assert {"/api/v1/devices", "/api/v1/proposals", "/api/v1/auth/me"} <= paths
    assert "/api/v1/messages" not in paths, "peer routes stay off the operator API"


def test_public_routes_need_no_credentials(api):
    assert api.client.get("/health").status_code == 200
    assert api.client.get("/openapi.json").status_code == 200
    refused = api.client.post("/api/v1/auth/login", json={"username": "x", "password": "y"})
    assert refused.status_code == 401, "login answers anonymous callers (here: wrong password)"


def test_each_protected_route_refuses_before_any_lookup(api):
    checked = 0
    failures = []
    for route, permissions in protected_routes(api):
        path = concrete(route.path)
        for method in sorted(route.methods - IGNORED_METHODS):
            anonymous = api.client.request(method, path)
            if anonymous.status_code != 401:
                failures.append(f"{method} {path} without credentials: {anonymous.status_code}")
            for permission in permissions:
                headers, detail = refused_as(api, permission)
                response = api.client.request(method, path, headers=headers)
                if response.status_code != 403 or response.json().get("detail") != detail:
                    failures.append(
                        f"{method} {path} lacking {permission}: {response.status_code} "
                        f"{response.text[:200]}"
                    )
            checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 15


# --- region scoping: every route tried by a principal of another region --------------

OTHER_REGION = "far-away"


def region_rule_of(dependant: Dependant) -> str | None:
    for dependency in dependant.dependencies:
        rule = getattr(dependency.call, "region_rule", None)
        if rule is not None:
            return rule
        found = region_rule_of(dependency)
        if found is not None:
            return found
    return None


def regional_resources(api: Api) -> dict[str, str]:
    """A controller, a device, a proposal, a user and audit events of nib_rows.REGION."""
    from nib_rows import REGION, add_controller, add_device, add_proposal

    from pdsno import audit

    with api.engine.begin() as conn:
        add_controller(conn, "rc-walk-1", controller_type="regional")
        add_device(conn, "sw-walk-1")
        proposal_id = add_proposal(
            conn, "sw-walk-1", ["vlan 5"], origin_id="rc-walk-1", sensitivity="medium"
        )
        audit.append(conn, "auth.login_failed", actor="x", region=REGION, payload={"client": "ip"})
    api.user("walk-user", "operator", region=REGION)
    return {
        "region": REGION,
        "device_id": "sw-walk-1",
        "proposal_id": proposal_id,
        "controller_id": "rc-walk-1",
        "username": "walk-user",
    }


def bodies(resources: dict[str, str]) -> dict[str, dict]:
    """Valid bodies per route name, so that the region check, not validation, answers."""
    return {
        "create_device": {"device_id": "sw-new", "name": "n", "region": resources["region"]},
        "update_device": {"version": 1, "name": "renamed"},
        "submit_proposal": {"device_id": resources["device_id"], "config_lines": ["vlan 9"]},
        "approve_proposal": {"reason": "walk"},
        "reject_proposal": {"reason": "walk"},
        "execute_proposal": {
            "token": dict.fromkeys(
                (
                    "token_id",
                    "proposal_id",
                    "device_id",
                    "config_hash",
                    "issuer_id",
                    "issued_at",
                    "expires_at",
                    "signature",
                ),
                "x",
            ),
            "config_lines": ["vlan 5"],
        },
        "publish_policy": {"policy_id": "walk-policy", "body": {"k": 1}},
    }


def leaked(items: Any, region: str) -> list[Any]:
    """Items of an answer (a list, or one resource) of another region than `region`."""
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        return []
    return [
        item
        for item in items
        if isinstance(item, dict)
        and "region" in item
        and item["region"] != region
        and item.get("scope") != "global"  # global policies apply in every region
    ]


def test_every_route_refuses_a_principal_of_another_region(api):
    """docs/controller.md: a principal bound to a region sees and changes only that
    region. Each route is called with the resources of one region by an admin (who
    holds every permission) bound to another: it must refuse (403), or, for a list,
    answer only the caller's region."""
    resources = regional_resources(api)
    body_of = bodies(resources)
    outsider = api.key("admin", region=OTHER_REGION)
    checked, failures, undeclared = 0, [], []
    for route, _ in protected_routes(api):
        rule = region_rule_of(route.dependant)
        if rule is None:
            undeclared.append(route.path)
        path = re.sub(
            r"\{(\w+)(:\w+)?\}", lambda m: resources.get(m[1], f"dummy-{m[1]}"), route.path
        )
        for method in sorted(route.methods - IGNORED_METHODS):
            response = api.client.request(
                method, path, headers=outsider, json=body_of.get(route.name)
            )
            checked += 1
            status = response.status_code
            if rule == "own":
                continue  # the caller's own identity or session: no other region's
            if status == 403:
                continue
            if method == "GET" and status == 200:
                if leaked(response.json(), OTHER_REGION):
                    failures.append(f"GET {path} shows another region's: {response.text[:300]}")
                continue
            failures.append(f"{method} {path} as {OTHER_REGION}: {status} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert not undeclared, f"routes without a region rule: {undeclared}"
    assert checked >= 15


def test_a_bound_principal_lists_its_own_region(api):
    """The filter is the caller's region, not nothing: its own rows are listed."""
    resources = regional_resources(api)
    insider = api.key("admin", region=resources["region"])
    controllers = api.client.get("/api/v1/controllers", headers=insider).json()
    assert [row["controller_id"] for row in controllers] == ["rc-walk-1"]
    seen = api.client.get("/api/v1/events", headers=insider).json()
    assert seen and {event["region"] for event in seen} == {resources["region"]}
    assert api.client.get("/api/v1/controllers/rc-walk-1", headers=insider).status_code == 200
    gc = api.ctx.identity.controller_id
    assert api.client.get(f"/api/v1/controllers/{gc}", headers=insider).status_code == 403
