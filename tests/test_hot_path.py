"""The authenticated device read is cheap by construction, not by timing.

Timings are too noisy here to assert (bench/api_tls_bench.py measures them);
what makes the read fast can be counted instead: once the credential, the
region of the device and the device itself are cached, a read makes no NIB
query and no thread-pool hop (each hop is two event-loop wake-ups and a
worker's lock, measured at about a third of the request's time before these
tests). A change that adds a query or a sync dependency or endpoint to this
path fails here. A cold read is held to its budget too: one query and one
hop for each cache it fills.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import event
from test_auth import Api, build_api

from pdsno.errors import AuthenticationError
from pdsno.nib.cache import TTLCache

DEVICE = {"device_id": "sw-hot-1", "name": "hot switch", "region": "region-a"}
PATH = f"/api/v1/devices/{DEVICE['device_id']}"
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@dataclass
class Counts:
    """NIB statements run and functions sent to the thread pool, with what they were."""

    queries: list[str] = field(default_factory=list)
    hops: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.queries.clear()
        self.hops.clear()


@pytest.fixture
def counted(nib_engine, monkeypatch) -> Iterator[tuple[Api, Counts]]:
    api, http = build_api(nib_engine, cache_seconds=30)
    counts = Counts()

    def count_query(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # Not SQLite's BEGIN (pdsno.nib.engine): a connection's, not a query.
        if not statement.lstrip().upper().startswith(TRANSACTION_CONTROL):
            counts.queries.append(statement.split("\n", 1)[0])

    real_run_sync = anyio.to_thread.run_sync

    # Starlette's run_in_threadpool (FastAPI's, for every sync endpoint and
    # dependency) calls anyio.to_thread.run_sync, looked up at each call.
    async def count_hop(function: Any, *args: Any, **kwargs: Any) -> Any:
        counts.hops.append(getattr(function, "__qualname__", repr(function)))
        return await real_run_sync(function, *args, **kwargs)

    event.listen(nib_engine, "before_cursor_execute", count_query)
    monkeypatch.setattr(anyio.to_thread, "run_sync", count_hop)
    try:
        with api.client:
            yield api, counts
    finally:
        event.remove(nib_engine, "before_cursor_execute", count_query)
        http.close()


def credentials(api: Api) -> dict[str, dict[str, str]]:
    admin = api.key("admin")
    created = api.client.post("/api/v1/devices", headers=admin, json=DEVICE)
    assert created.status_code == 201, created.text
    api.user("olga", "operator")
    return {
        "api key": api.key("auditor"),
        "session": api.session("olga"),
        "region-bound key": api.key("auditor", region="region-a"),
    }


@pytest.mark.parametrize("caller", ["api key", "session", "region-bound key"])
def test_a_cached_device_read_makes_no_query_and_no_thread_pool_hop(counted, caller):
    api, counts = counted
    headers = credentials(api)[caller]
    first = api.client.get(PATH, headers=headers)
    assert first.status_code == 200, first.text
    counts.reset()
    for _ in range(3):
        again = api.client.get(PATH, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
    assert counts.queries == [], f"NIB queries on a cached read: {counts.queries}"
    assert counts.hops == [], f"thread-pool hops on a cached read: {counts.hops}"


@pytest.mark.parametrize(
    ("caller", "caches"),
    # The credential and the device; a bound principal also the device's region.
    [("api key", 2), ("session", 2), ("region-bound key", 3)],
)
def test_a_cold_device_read_costs_one_query_and_one_hop_per_cache(counted, caller, caches):
    api, counts = counted
    headers = credentials(api)[caller]
    for cache in (api.ctx.auth_cache, api.ctx.region_cache, api.ctx.device_cache):
        if cache is not None:
            cache.clear()
    counts.reset()
    response = api.client.get(PATH, headers=headers)
    assert response.status_code == 200, response.text
    assert len(counts.hops) == caches, counts.hops
    assert len(counts.queries) == caches, counts.queries


def test_the_device_json_is_what_the_response_model_makes(counted):
    """The cached bytes are DeviceOut's JSON: every field, the same values."""
    api, _ = counted
    headers = credentials(api)["api key"]
    body = api.client.get(PATH, headers=headers).json()
    listed = api.client.get("/api/v1/devices", headers=headers).json()
    assert [body] == listed  # the list route still goes through response_model
    assert json.loads(json.dumps(body)) == body


# ---- the cache's shared loads ------------------------------------------------------


def test_concurrent_misses_of_one_key_share_one_load():
    cache: TTLCache[str] = TTLCache(ttl_seconds=30)
    loads: list[str] = []

    def load() -> str:
        loads.append("read")
        time.sleep(0.05)  # long enough for every request to miss it
        return "principal"

    async def many() -> list[str]:
        return await asyncio.gather(*(cache.get_or_load_async("k", load) for _ in range(10)))

    assert asyncio.run(many()) == ["principal"] * 10
    assert loads == ["read"]


def test_a_miss_after_an_invalidation_does_not_join_a_load_started_before_it():
    """A logout clears the cache while a request reads the session: a request
    that arrives after the logout must read again, not share that read."""
    cache: TTLCache[str] = TTLCache(ttl_seconds=30)
    # Each load's answer is fixed when it starts, not when it ends: on a busy
    # machine the second load may finish first.
    answers = iter(["before the logout", "after the logout"])
    started = threading.Event()

    def load() -> str:
        answer = next(answers)
        started.set()
        time.sleep(0.05)
        return answer

    async def scenario() -> tuple[str, str]:
        first = asyncio.ensure_future(cache.get_or_load_async("k", load))
        await asyncio.to_thread(started.wait)
        cache.clear()
        second = await cache.get_or_load_async("k", load)
        return await first, second

    assert asyncio.run(scenario()) == ("before the logout", "after the logout")
    assert cache.get_or_load("k", lambda: "not stored") == "after the logout"


def test_a_failed_shared_load_fails_every_request_that_joined_it():
    cache: TTLCache[str] = TTLCache(ttl_seconds=30)

    def load() -> str:
        time.sleep(0.05)
        raise AuthenticationError("API key revoked")

    async def many() -> list[object]:
        calls = (cache.get_or_load_async("k", load) for _ in range(3))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(many())
    assert [type(result) for result in results] == [AuthenticationError] * 3
    assert len(cache) == 0
