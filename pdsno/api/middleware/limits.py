"""Load caps: requests in flight, and request body size."""

from __future__ import annotations

from collections.abc import Collection

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdsno.api.middleware._asgi import send_json
from pdsno.observability.metrics import Metrics


class ConcurrencyLimitMiddleware:
    """503 with Retry-After beyond `max_requests` requests in flight (per listener).

    `exempt` paths are never refused: the liveness probe must answer under
    load, or the orchestrator restarts a controller that is merely busy.
    """

    RETRY_AFTER_SECONDS = 1

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_requests: int,
        metrics: Metrics | None = None,
        exempt: Collection[str] = (),
    ) -> None:
        self.app = app
        self.max_requests = max_requests
        self.metrics = metrics
        self.exempt = frozenset(exempt)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:
            if self.metrics is not None:
                self.metrics.count_rate_limited("concurrency")
            await send_json(
                send,
                503,
                {"detail": "the controller is at its limit of requests in flight; retry"},
                [(b"retry-after", str(self.RETRY_AFTER_SECONDS).encode())],
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


# How many times max_bytes a refused body may be before it is no longer read.
DRAIN_FACTOR = 4


class BodyTooLarge(HTTPException):
    """Raised from receive() once a streamed body passes the limit. FastAPI
    re-raises an HTTPException met while reading the body, and its handler
    answers 413; the middleware answers it itself if it gets that far."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodySizeLimitMiddleware:
    """413 for a body above `max_bytes`: at once from Content-Length, and by
    counting the chunks of a body without one (chunked transfer encoding)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # A client that sends its whole body before it reads (most do) would
        # meet a reset, not the 413, if the connection closed under its
        # writes: a body up to this size is read and dropped first. A larger
        # one is answered at once, and the connection closed.
        self.drain_bytes = DRAIN_FACTOR * max_bytes

    @staticmethod
    async def _drain(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        framed = False  # a body without Content-Length (chunked, or HTTP/2)
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value
            elif key == b"transfer-encoding":
                framed = True
        if declared is not None:
            if not declared.isdigit():
                await send_json(send, 400, {"detail": "invalid Content-Length"})
                return
            if int(declared) > self.max_bytes:
                if int(declared) <= self.drain_bytes:
                    await self._drain(receive)
                await self._refuse(send)
                return
        elif scope.get("http_version", "1.1") not in ("1.0", "1.1"):
            framed = True
        if not framed:
            # No body, or one the server cuts at its Content-Length: nothing to count.
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive_counted, send_tracked)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        # Connection: close, as the rest of the body is never read.
        await send_json(
            send,
            413,
            {"detail": f"request body larger than {self.max_bytes} bytes"},
            [(b"connection", b"close")],
        )
