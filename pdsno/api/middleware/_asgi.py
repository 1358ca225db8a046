"""Small helpers shared by the pure ASGI middleware."""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import Send

Headers = list[tuple[bytes, bytes]]


async def send_json(
    send: Send, status: int, body: dict, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """A complete JSON response, straight from the middleware (no app involved)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
