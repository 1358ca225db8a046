"""Rate limiting: token buckets per client identity, in bounded memory."""

from __future__ import annotations

import asyncio
import gc
import math
import tracemalloc

import httpx
import pytest
from fastapi import Request
from test_middleware import (
    asgi_client,
    assert_security_headers,
    controller_app,
    new_sqlite_nib,
    run,
)

from pdsno.api.middleware.context import client_address, parse_trusted_proxies
from pdsno.api.middleware.ratelimit import TokenBucketLimiter, client_key, ip_key
from pdsno.errors import ConfigurationError


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return new_sqlite_nib(tmp_path_factory)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def clocked(app) -> FakeClock:
    clock = FakeClock()
    for limiter in app.state.rate_limiters.values():
        limiter.clock = clock
    return clock


def test_a_burst_above_the_bucket_gets_429_with_retry_after(sqlite_url):
    with controller_app(sqlite_url, limits={"burst": 5, "rate_per_second": 0.25}) as (app, ctx):
        clock = clocked(app)

        async def scenario() -> list[httpx.Response]:
            async with asgi_client(app) as client:
                responses = [await client.get("/health/live") for _ in range(7)]
                clock.advance(3.9)  # not yet a whole token
                responses.append(await client.get("/health/live"))
                clock.advance(0.1)
                responses.append(await client.get("/health/live"))
                return responses

        responses = run(scenario())
    assert [r.status_code for r in responses] == [200] * 5 + [429, 429, 429, 200]
    limited = responses[5]
    # Empty bucket at 0.25 tokens/s: one token in 4 s.
    assert limited.headers["retry-after"] == "4"
    assert limited.json() == {"detail": "too many requests: retry after 4 s"}
    assert_security_headers(limited)
    # 0.1 s short of a token: still rounded up to a whole second.
    assert responses[7].headers["retry-after"] == "1"
    assert ctx.metrics.rate_limited.labels(limit_class="default")._value.get() == 3
    assert (
        ctx.metrics.http_requests.labels(
            route="/health/live", method="GET", status="429"
        )._value.get()
        == 3
    )


def test_allowed_requests_over_a_window_are_burst_plus_rate_times_elapsed(sqlite_url):
    burst, rate = 10, 5.0
    with controller_app(sqlite_url, limits={"burst": burst, "rate_per_second": rate}) as (app, _):
        clock = clocked(app)

        async def scenario() -> tuple[int, float]:
            allowed = 0
            started = clock.now
            async with asgi_client(app) as client:
                # A client trying every 20 ms for 12 s: far above the rate.
                for _ in range(600):
                    if (await client.get("/health/live")).status_code == 200:
                        allowed += 1
                    clock.advance(0.02)
            return allowed, clock.now - started

        allowed, elapsed = run(scenario())
    expected = burst + rate * elapsed
    assert abs(allowed - expected) <= 1, (allowed, expected)


def test_each_address_has_its_own_bucket_whatever_credentials_it_presents(sqlite_url):
    """Unverified credentials choose no bucket: the address pays (issue 11, finding 3)."""
    key_a = "pdsno_0123456789abcdef_secret-a"
    key_b = "pdsno_fedcba9876543210_secret-b"
    with controller_app(sqlite_url, limits={"burst": 2, "rate_per_second": 0.01}) as (app, _):
        clocked(app)

        async def statuses(headers: dict, client=("192.0.2.10", 1), n: int = 3) -> list[int]:
            async with asgi_client(app, client=client) as c:
                return [
                    (await c.get("/health/live", headers=headers)).status_code for _ in range(n)
                ]

        async def scenario() -> dict[str, list[int]]:
            return {
                "key a": await statuses({"X-API-Key": key_a}),
                "key b, same address": await statuses({"X-API-Key": key_b}, n=1),
                "session, same address": await statuses({"Authorization": "Bearer pdsno-s-x"}, n=1),
                "key a, other address": await statuses(
                    {"X-API-Key": key_a}, client=("192.0.2.99", 1)
                ),
            }

        seen = run(scenario())
    assert seen == {
        "key a": [200, 200, 429],
        "key b, same address": [429],
        "session, same address": [429],
        "key a, other address": [200, 200, 429],
    }


def test_a_verified_key_has_one_bucket_across_addresses(sqlite_url):
    from pdsno.auth import api_keys

    with controller_app(sqlite_url, limits={"burst": 3, "rate_per_second": 0.01}) as (app, ctx):
        clocked(app)
        with ctx.engine.begin() as conn:
            key = api_keys.create(conn, name="shared", role="auditor", region=None)

        async def scenario() -> list[int]:
            seen = []
            for number in range(5):
                async with asgi_client(app, client=(f"192.0.2.{20 + number}", 1)) as c:
                    response = await c.get("/api/v1/devices", headers={"X-API-Key": key})
                    seen.append(response.status_code)
                    if response.status_code == 429:
                        assert response.headers["retry-after"]
            return seen

        seen = run(scenario())
    assert seen == [200, 200, 200, 429, 429]
    assert ctx.metrics.rate_limited.labels(limit_class="identity")._value.get() == 2


def test_login_has_its_own_stricter_class_keyed_by_address(sqlite_url):
    with controller_app(
        sqlite_url, limits={"burst": 50, "login_burst": 3, "login_rate_per_second": 0.2}
    ) as (app, ctx):
        clocked(app)

        async def scenario() -> tuple[list[int], int, int]:
            async with asgi_client(app) as client:
                logins = []
                for n in range(5):
                    # A new API key each time does not buy a new login bucket.
                    headers = {"X-API-Key": f"pdsno_{n:016x}_x"}
                    response = await client.post("/api/v1/auth/login", json={}, headers=headers)
                    logins.append(response.status_code)
                other_route = (await client.get("/health/live")).status_code
            async with asgi_client(app, client=("192.0.2.77", 1)) as other:
                other_address = (await other.post("/api/v1/auth/login", json={})).status_code
            return logins, other_route, other_address

        logins, other_route, other_address = run(scenario())
    assert logins[3:] == [429, 429]
    assert 429 not in logins[:3]
    assert other_route == 200
    assert other_address != 429
    assert ctx.metrics.rate_limited.labels(limit_class="login")._value.get() == 2


def test_forwarded_for_is_honoured_only_from_trusted_proxies(sqlite_url):
    proxy = ("10.0.0.5", 1)
    stranger = ("198.51.100.1", 1)
    with controller_app(
        sqlite_url,
        limits={"burst": 2, "rate_per_second": 0.01, "trusted_proxies": ["10.0.0.0/24"]},
    ) as (app, _):
        clocked(app)
        seen_clients: list[str] = []

        @app.get("/test/client")
        def client_of(request: Request) -> dict:
            seen_clients.append(request.client.host)
            return {}

        async def statuses(client, forwarded: str, n: int = 3) -> list[int]:
            async with asgi_client(app, client=client) as c:
                headers = {"X-Forwarded-For": forwarded}
                return [
                    (await c.get("/test/client", headers=headers)).status_code for _ in range(n)
                ]

        async def scenario() -> dict[str, list[int]]:
            return {
                # Through the proxy: limited by the client's address, each its own bucket.
                "client 1 via proxy": await statuses(proxy, "203.0.113.1"),
                "client 2 via proxy": await statuses(proxy, "203.0.113.2"),
                # A client prepending a forged address is still itself (right-most untrusted).
                "client 1 forging": await statuses(proxy, "1.1.1.1, 203.0.113.1", n=1),
                # From an untrusted peer the header is ignored: one bucket, the peer's.
                "stranger a": await statuses(stranger, "203.0.113.50", n=2),
                "stranger b": await statuses(stranger, "203.0.113.51", n=1),
            }

        seen = run(scenario())
    assert seen == {
        "client 1 via proxy": [200, 200, 429],
        "client 2 via proxy": [200, 200, 429],
        "client 1 forging": [429],
        "stranger a": [200, 200],
        "stranger b": [429],
    }
    # Handlers (and the access log) see the client's address, not the proxy's.
    assert seen_clients[:2] == ["203.0.113.1", "203.0.113.1"]
    assert seen_clients[-1] == "198.51.100.1"


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9, 10.0.0.7", "203.0.113.9"),  # a chain of trusted proxies
        ("10.0.0.5", "6.6.6.6, 203.0.113.9, 10.0.0.7", "203.0.113.9"),
        ("10.0.0.5", "10.0.0.8, 10.0.0.7", "10.0.0.8"),  # only proxies: the farthest
        ("10.0.0.5", "garbage, 10.0.0.7", "10.0.0.7"),
        ("10.0.0.5", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.5", None, "10.0.0.5"),
        ("192.0.2.1", "203.0.113.9", "192.0.2.1"),  # untrusted peer
    ],
)
def test_client_address_takes_the_rightmost_untrusted_hop(peer, forwarded, expected):
    trusted = parse_trusted_proxies(["10.0.0.0/24"])
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"client": (peer, 1), "headers": headers}
    assert client_address(scope, trusted) == expected


def test_a_malformed_trusted_proxy_is_a_configuration_error(sqlite_url):
    with pytest.raises(ConfigurationError, match="trusted_proxies"):  # noqa: SIM117
        with controller_app(sqlite_url, limits={"trusted_proxies": ["10.0.0.0/33"]}):
            pass


def test_ipv6_clients_share_a_bucket_per_64():
    def key(host: str) -> str:
        return ip_key({"client": (host, 1), "headers": []})

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "ip:2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:192.0.2.1") == "ip:192.0.2.1"
    assert client_key({"client": ("192.0.2.1", 1), "headers": []}) == "ip:192.0.2.1"


def test_memory_stays_bounded_for_100000_distinct_clients():
    clock = [0.0]
    limiter = TokenBucketLimiter(10.0, 20, max_tracked=1000, clock=lambda: clock[0])
    tracemalloc.start()
    try:
        for n in range(2000):  # a full table
            limiter.acquire(f"key:{n:016x}")
        gc.collect()
        full, _ = tracemalloc.get_traced_memory()
        for n in range(100_000):
            clock[0] += 0.0001
            assert limiter.acquire(f"key:{n + 10_000:016x}") == 0.0  # new: a full bucket
            assert len(limiter) <= 1000
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(limiter) == 1000
    # A full table costs well under 1 KB a client...
    assert full < 1000 * 1024, full
    # ...and 100,000 more clients do not grow it (100,000 buckets would be over 20 MB).
    assert after - full < 64 * 1024, after - full


def test_the_app_tracks_at_most_max_tracked_clients(sqlite_url):
    with controller_app(
        sqlite_url,
        limits={"max_tracked_clients": 100, "burst": 1, "trusted_proxies": ["10.0.0.5"]},
    ) as (app, _):
        clocked(app)
        limiter = app.state.rate_limiters["default"]

        async def scenario() -> tuple[int, int]:
            largest = 0
            async with asgi_client(app, client=("10.0.0.5", 1)) as client:
                for n in range(1000):
                    address = f"203.0.{n // 250}.{n % 250}"
                    response = await client.get(
                        "/health/live", headers={"X-Forwarded-For": address}
                    )
                    assert response.status_code == 200  # every one is new: a full bucket
                    largest = max(largest, len(limiter))
                # The first clients were evicted: they come back with a full bucket.
                back = await client.get("/health/live", headers={"X-Forwarded-For": "203.0.0.0"})
            return largest, back.status_code

        largest, back = run(scenario())
    assert largest == 100
    assert back == 200


def test_limiter_refills_at_its_rate_and_never_beyond_burst():
    clock = [0.0]
    limiter = TokenBucketLimiter(2.0, 3, max_tracked=100, clock=lambda: clock[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert math.isclose(limiter.acquire("a"), 0.5)
    clock[0] += 1000  # idle for long: back to burst, not 2,000 tokens
    assert [limiter.acquire("a") == 0.0 for _ in range(4)] == [True, True, True, False]


def test_concurrent_requests_on_one_loop_never_exceed_the_bucket(sqlite_url):
    with controller_app(sqlite_url, limits={"burst": 25, "rate_per_second": 0.001}) as (app, _):
        clocked(app)

        async def scenario() -> list[int]:
            async with asgi_client(app) as client:
                responses = await asyncio.gather(*(client.get("/health/live") for _ in range(100)))
            return [r.status_code for r in responses]

        statuses = run(scenario())
    assert statuses.count(200) == 25
    assert statuses.count(429) == 75
