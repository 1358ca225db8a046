"""Token buckets per client address and per verified identity, in bounded memory.

Every request is charged to its client address (an IPv6 client by its /64,
which one host usually holds whole), before anything else happens: what a
request presents costs nothing to invent, so it cannot choose its bucket. A
random `X-API-Key` on each request gets no fresh burst, and a known key ID
presented from another address drains that address's bucket, not the key's.

Once a credential is verified (pdsno.api.deps.authenticate), the request is
charged to that identity too: an API key by its ID, a session by its token
hash. So one key or session shared by many addresses still gets `burst` and
`rate_per_second` in all, and nobody without the credential can spend them.
The login route has a stricter class of its own, keyed by address only.

Memory: at most `max_tracked_clients` buckets per class, in least recently
used order; a new client beyond that evicts the least recently seen one. An
evicted client that comes back starts with a full bucket, so a client that
cycles through more addresses than the table holds gets `burst` requests per
address; `max_concurrent_requests` still caps the load. Raising
max_tracked_clients costs about 200 bytes a client.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import HTTPException, Request, status
from starlette.types import ASGIApp, Receive, Scope, Send

from pdsno.api.middleware._asgi import send_json
from pdsno.observability.metrics import Metrics

LOGIN_PATH = "/api/v1/auth/login"
# Where the middleware leaves the identity limiter for authenticate() (scope["state"]).
IDENTITY_LIMITER = "pdsno_identity_limiter"
# Where a request's identity charge is recorded (scope["state"]): (key, wait).
IDENTITY_CHARGED = "pdsno_identity_charged"


class TokenBucketLimiter:
    """`rate` tokens a second, up to `burst`, per key; O(1) a request.

    The lock makes it safe from threads too; on one asyncio loop it is never
    contended (acquire() never awaits).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_tracked: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_tracked < 1:
            raise ValueError("rate > 0, burst >= 1 and max_tracked >= 1 are required")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_tracked = max_tracked
        self.clock = clock  # replaceable: tests drive time
        # key -> [tokens, time of the last update]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take a token for `key`: 0.0 when allowed, else the seconds until one is there."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_tracked:
                    self._buckets.popitem(last=False)
                bucket = [self.burst, now]
                self._buckets[key] = bucket
            else:
                self._buckets.move_to_end(key)
                elapsed = now - bucket[1]
                if elapsed > 0:
                    bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
                bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return 0.0
            return (1.0 - bucket[0]) / self.rate


def ip_key(scope: Scope) -> str:
    client = scope.get("client")
    host = client[0] if client else "unknown"
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return f"ip:{host}"
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{host}"


def client_key(scope: Scope) -> str:
    """The bucket every request is charged to first: its client address.

    Credentials are not looked at here: they are unverified, and choosing a
    bucket by them let a forged key ID get a fresh burst or drain a real one.
    """
    return ip_key(scope)


def identity_key(kind: str, subject: str) -> str:
    """The bucket of a verified credential: `api_key:<key id>`, `session:<token hash>`."""
    return f"{kind}:{subject}"


def charge_verified_identity(request: Request, key: str) -> None:
    """Charge a verified credential's own bucket; 429 with Retry-After when empty.

    Called by authenticate() after the credential checked out, so only its
    holder spends it. Does nothing when the rate limiter is off.
    """
    wait = identity_wait(request.scope, key)
    if wait:
        seconds = retry_after(wait)
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many requests: retry after {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


def identity_wait(scope: Scope, key: str) -> float:
    """Charge the identity bucket `key` once per request: 0.0 when allowed, else
    the seconds until a token is there; 0.0 when the rate limiter is off.

    Once: the fast path (pdsno.api.fast_device_read) runs authenticate() and
    may then hand the request to its route, whose authenticate() runs again;
    that second call gets the first one's answer (a refusal included, so the
    route answers the 429), and the bucket and the metric pay once.
    """
    state = scope.get("state", {})
    charge = state.get(IDENTITY_LIMITER)
    if charge is None:
        return 0.0
    charged = state.get(IDENTITY_CHARGED)
    if charged is not None and charged[0] == key:
        return charged[1]
    wait = charge(key)
    state[IDENTITY_CHARGED] = (key, wait)
    return wait


def retry_after(wait: float) -> int:
    """Whole seconds until a token is available, rounded up (at least 1)."""
    return max(1, math.ceil(wait))


class RateLimitMiddleware:
    """429 with Retry-After once a client's bucket is empty."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: TokenBucketLimiter,
        login: TokenBucketLimiter,
        identity: TokenBucketLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.default = default
        self.login = login
        self.identity = identity
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == LOGIN_PATH and scope["method"] == "POST":
            limit_class, wait = "login", self.login.acquire(ip_key(scope))
        else:
            limit_class, wait = "default", self.default.acquire(client_key(scope))
        if not wait:
            if self.identity is not None:
                scope.setdefault("state", {})[IDENTITY_LIMITER] = self._charge_identity
            await self.app(scope, receive, send)
            return
        if self.metrics is not None:
            self.metrics.count_rate_limited(limit_class)
        seconds = retry_after(wait)
        await send_json(
            send,
            429,
            {"detail": f"too many requests: retry after {seconds} s"},
            [(b"retry-after", str(seconds).encode())],
        )

    def _charge_identity(self, key: str) -> float:
        assert self.identity is not None
        wait = self.identity.acquire(key)
        if wait and self.metrics is not None:
            self.metrics.count_rate_limited("identity")
        return wait
