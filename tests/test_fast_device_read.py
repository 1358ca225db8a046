"""The fast path of the cached device read (pdsno.api.fast_device_read).

It must be taken (FastAPI's dependency solver is not entered for a cached
read), must not be taken on a miss or a refusal, and must answer exactly
what the route answers: every comparison here runs the same requests with
the fast path and with it switched off (`routed`), from the same state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import fastapi.routing
import pytest
from test_auth import Api, build_api
from test_hot_path import DEVICE, PATH, credentials

from pdsno.api import fast_device_read
from pdsno.auth import api_keys
from pdsno.clock import utcnow
from pdsno.nib.schema import events

REQUEST_ID = {"X-Request-ID": "fast-path-test"}


@pytest.fixture
def solved(nib_engine, monkeypatch) -> Iterator[tuple[Api, list[str]]]:
    """An API with cached credentials, and the paths FastAPI's dependency solver ran for."""
    api, http = build_api(nib_engine, cache_seconds=30)
    entered: list[str] = []
    real_solve = fastapi.routing.solve_dependencies

    # fastapi.routing looks solve_dependencies up at each request.
    async def counting_solve(*args: Any, **kwargs: Any) -> Any:
        entered.append(kwargs["request"].url.path)
        return await real_solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting_solve)
    try:
        with api.client:
            yield api, entered
    finally:
        http.close()


@contextmanager
def routed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fast path switched off: every request goes to the FastAPI route."""
    with monkeypatch.context() as patch:
        patch.setattr(fast_device_read, "device_id_of", lambda _scope: None)
        yield


def answer(api: Api, headers: dict[str, str], path: str = PATH) -> tuple[int, list, bytes]:
    """Status, every header (the request ID is the one sent), body bytes."""
    response = api.client.get(path, headers={**headers, **REQUEST_ID})
    return response.status_code, response.headers.raw, response.content


def audit_trail(api: Api) -> list[tuple[str, str | None]]:
    with api.engine.connect() as conn:
        rows = conn.execute(events.select().order_by(events.c.seq)).all()
    return [(row.event_type, row.subject) for row in rows]


@pytest.mark.parametrize("caller", ["api key", "session", "region-bound key"])
def test_a_cached_read_skips_fastapi_and_a_miss_does_not(solved, caller):
    api, entered = solved
    headers = credentials(api)[caller]
    assert api.client.get(PATH, headers=headers).status_code == 200  # fills the caches
    entered.clear()
    for _ in range(3):
        assert api.client.get(PATH, headers=headers).status_code == 200
    assert entered == [], "a cached device read went through FastAPI's dependency solver"

    api.ctx.device_cache.clear()
    assert api.client.get(PATH, headers=headers).status_code == 200
    assert entered == [PATH], "a device not cached must be read by the route"

    entered.clear()
    api.ctx.auth_cache.clear()
    assert api.client.get(PATH, headers=headers).status_code == 200
    assert entered == [PATH], "a credential not cached must be verified by the route"

    if caller == "region-bound key":
        entered.clear()
        api.ctx.region_cache.clear()
        assert api.client.get(PATH, headers=headers).status_code == 200
        assert entered == [PATH], "a region not cached must be read by the route"


def test_other_requests_go_to_fastapi(solved):
    api, entered = solved
    headers = credentials(api)["api key"]
    api.client.get(PATH, headers=headers)
    entered.clear()
    assert api.client.get("/api/v1/devices", headers=headers).status_code == 200
    assert api.client.patch(PATH, headers=headers, json={"version": 1}).status_code == 403
    trailing = api.client.get(PATH + "/", headers=headers, follow_redirects=False)
    assert trailing.status_code in (307, 404)
    assert api.client.get("/api/v1/devices/no-such", headers=headers).status_code == 404
    assert entered == ["/api/v1/devices", PATH, "/api/v1/devices/no-such"]


@pytest.mark.parametrize("caller", ["api key", "session", "region-bound key"])
def test_the_fast_answer_is_the_routes(solved, monkeypatch, caller):
    api, entered = solved
    headers = credentials(api)[caller]
    assert api.client.get(PATH, headers=headers).status_code == 200
    entered.clear()
    fast = answer(api, headers)
    with routed(monkeypatch):
        slow = answer(api, headers)
    assert entered == [PATH]  # the second one, only
    assert fast == slow
    assert fast[0] == 200
    assert (b"content-type", b"application/json") in fast[1]
    assert (b"x-content-type-options", b"nosniff") in fast[1]
    # With a query string too: the route ignores it, and so does its check.
    assert answer(api, headers, PATH + "?verbose=1") == slow


def refusals(api: Api) -> dict[str, dict[str, str]]:
    """Callers the route refuses although their credential (and the device's
    region) is cached: each was let through once, then changed behind the cache."""
    found = credentials(api)
    wrong_region = api.key("auditor", region="region-b")
    unscoped = api.key("auditor", scopes=["proposals:read"])
    for headers in (wrong_region, unscoped, found["region-bound key"]):
        api.client.get(PATH, headers=headers)  # caches the credential and the region
    return {
        "key of another region": wrong_region,
        "key without devices:read": unscoped,
        "session of a user who logged out": found["session"],
        "no credential": {},
        "a bearer and a key": {**found["api key"], **found["session"]},
        "malformed Authorization": {"Authorization": "Basic eDp5"},
        "unknown key": {"X-API-Key": "pdsno_nothing_here"},
    }


def test_refusals_are_the_routes(solved, monkeypatch):
    api, entered = solved
    callers = refusals(api)
    # A logout clears the credential cache: the session is refused at once.
    session = callers["session of a user who logged out"]
    assert api.client.post("/api/v1/auth/logout", headers=session).status_code in (200, 204)
    for headers in callers.values():
        api.client.get(PATH, headers=headers)  # the credentials cached again, when valid
    trail = audit_trail(api)
    for what, headers in callers.items():
        entered.clear()
        fast = answer(api, headers)
        assert entered == [PATH], f"{what}: not handed to the route"
        with routed(monkeypatch):
            slow = answer(api, headers)
        assert fast == slow, what
        assert fast[0] in (401, 403), (what, fast)
    assert audit_trail(api) == trail  # refused reads are audited as before: not at all


def test_an_expired_session_is_refused_as_the_route_refuses_it(solved, monkeypatch):
    api, entered = solved
    session = credentials(api)["session"]
    assert api.client.get(PATH, headers=session).status_code == 200
    later = utcnow() + timedelta(days=400)
    monkeypatch.setattr("pdsno.api.deps.utcnow", lambda: later)
    entered.clear()
    fast = answer(api, session)
    with routed(monkeypatch):
        slow = answer(api, session)
    assert fast == slow
    assert fast[0] == 401 and b"session expired" in fast[2]
    assert entered == [PATH, PATH]


def test_a_revoked_key_is_refused_once_its_cache_entry_goes(solved, monkeypatch):
    api, _ = solved
    headers = api.key("auditor")
    api.client.post("/api/v1/devices", headers=api.key("admin"), json=DEVICE)
    assert api.client.get(PATH, headers=headers).status_code == 200
    key_id = headers["X-API-Key"].split("_")[1]
    with api.engine.begin() as conn:
        api_keys.revoke(conn, key_id)
    api.ctx.auth_cache.clear()  # what the revocation bound (auth.cache_seconds) ends in
    fast = answer(api, headers)
    with routed(monkeypatch):
        slow = answer(api, headers)
    assert fast == slow
    assert fast[0] == 401 and b"API key revoked" in fast[2]


@pytest.mark.parametrize("region_cached", [True, False])
def test_the_identity_bucket_pays_once_a_request(solved, monkeypatch, region_cached):
    """A fast read is charged to its key's bucket like a routed one; a read
    the fast path hands on after charging it (the device's region no longer
    cached) is not charged again; and the 429 is the route's."""
    api, _ = solved
    headers = credentials(api)["region-bound key"]
    identity = api.client.app.state.rate_limiters["identity"]
    charges: list[str] = []
    real_acquire = identity.acquire

    def counting_acquire(key: str) -> float:
        charges.append(key)
        return real_acquire(key)

    monkeypatch.setattr(identity, "acquire", counting_acquire)
    monkeypatch.setattr(identity, "clock", lambda: 1000.0)  # no refill
    monkeypatch.setattr(identity, "rate", 0.5)

    def run() -> list[tuple[int, list, bytes]]:
        identity._buckets.clear()
        monkeypatch.setattr(identity, "burst", 3.0)
        assert api.client.get(PATH, headers=headers).status_code == 200  # warm caches
        charges.clear()
        results = []
        for _ in range(3):
            if not region_cached:
                api.ctx.region_cache.clear()
            results.append(answer(api, headers))
        assert len(charges) == 3, charges  # one a request
        return results

    fast = run()
    with routed(monkeypatch):
        slow = run()
    assert fast == slow
    assert [status for status, _, _ in fast] == [200, 200, 429]
    assert (b"retry-after", b"2") in fast[2][1]
