"""Token buckets per client identity, in bounded memory.

A client is its API key ID (read from `X-API-Key: pdsno_<id>_...` without
checking the key: authentication happens later, and costs a NIB query that
the limit is there to protect), else its session token (hashed), else its IP
address (an IPv6 client by its /64, which one host usually holds whole). The
login route has a stricter class of its own, keyed by IP address only.

Memory: at most `max_tracked_clients` buckets per class, in least recently
used order; a new client beyond that evicts the least recently seen one.
Trade-off: an evicted client that comes back starts with a full bucket, so
a client that cycles through more identities than the table holds gets
`burst` requests per identity. Identities are cheap only for IP-less
attackers forging API key IDs and bearer tokens; those requests then fail
authentication (and feed the login lockout), and `max_concurrent_requests`
still caps the load. Raising max_tracked_clients costs about 200 bytes a
client.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from pdsno.api.middleware._asgi import send_json
from pdsno.observability.metrics import Metrics

LOGIN_PATH = "/api/v1/auth/login"
API_KEY = re.compile(rb"pdsno_([0-9a-f]{16})_")
MAX_BEARER_LENGTH = 512


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
    """The identity a request is limited as: API key ID, session, or IP address."""
    api_key = authorization = None
    for key, value in scope["headers"]:
        if key == b"x-api-key":
            api_key = value
        elif key == b"authorization":
            authorization = value
    if api_key is not None:
        match = API_KEY.match(api_key)
        if match:
            return f"key:{match.group(1).decode()}"
    if authorization is not None:
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() == b"bearer" and 0 < len(token) <= MAX_BEARER_LENGTH:
            return f"session:{hashlib.sha256(token).hexdigest()[:32]}"
    return ip_key(scope)


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
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.default = default
        self.login = login
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
