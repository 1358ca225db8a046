"""The outermost middleware: who is asking, which request this is, and the
headers every answer carries.

One layer rather than three, because every layer of pure ASGI middleware
costs a wrapped send() per response; this one does, for each request:

- the client address: the direct peer, or from X-Forwarded-For when the
  peer is in limits.trusted_proxies (scope["client"] is replaced, so that
  the limits, the handlers and uvicorn's access log see the same address);
- the request ID: a sane incoming X-Request-ID, else a new one, in the
  REQUEST_ID context variable (for the logs) and scope["state"], and
  returned as X-Request-ID;
- the security headers on every response, without any Server header;
- an exception that escapes before a response started is logged (with the
  request ID) and answered here with a JSON 500 that carries the headers;
  Starlette's own handler would answer outside this stack, without them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdsno.api.middleware._asgi import send_json
from pdsno.api.middleware.security import API_HEADERS, DOCS_HEADERS, with_security_headers
from pdsno.errors import ConfigurationError
from pdsno.observability.logging import REQUEST_ID

log = logging.getLogger("pdsno.api")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# An incoming X-Request-ID is kept when it looks like an ID (a UUID, a
# trace ID): anything else could inject text into logs, and is replaced.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_FORWARDED_HOPS = 32
# Response headers this layer sets itself, whatever the app said.
REPLACED = frozenset({b"server", b"x-request-id"})


def parse_trusted_proxies(values: Iterable[str]) -> tuple[Network, ...]:
    """limits.trusted_proxies as networks; a malformed entry is a ConfigurationError."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigurationError(
                f"limits.trusted_proxies: {value!r} is not an address or a CIDR network "
                "(such as 10.0.0.5 or 10.0.0.0/24)"
            ) from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [2001:db8::1]:443
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # 192.0.2.1:443
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def client_address(scope: Scope, trusted: Sequence[Network]) -> str | None:
    """The client's address: the direct peer, or, when the peer is a trusted
    proxy, the right-most address of X-Forwarded-For that is not a trusted
    proxy (addresses left of it were written by the client and prove nothing)."""
    client = scope.get("client")
    peer = client[0] if client else None
    if not trusted or peer is None:
        return peer
    peer_address = _address(peer)
    if peer_address is None or not _trusted(peer_address, trusted):
        return peer
    forwarded = b",".join(value for key, value in scope["headers"] if key == b"x-forwarded-for")
    if not forwarded:
        return peer
    hops = forwarded.decode("latin-1").split(",")[-MAX_FORWARDED_HOPS:]
    result = str(peer_address)
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # garbage: keep the last hop a trusted proxy vouched for
        result = str(address)
        if not _trusted(address, trusted):
            break
    return result


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: Sequence[Network] = (),
        docs_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.trusted = tuple(trusted_proxies)
        self.docs_paths = docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                candidate = value.decode("latin-1")
                if SANE_REQUEST_ID.fullmatch(candidate):
                    request_id = candidate
                break
        if request_id is None:
            request_id = os.urandom(16).hex()
        if self.trusted:
            address = client_address(scope, self.trusted)
            client = scope.get("client")
            if client and address != client[0]:
                scope["client"] = (address, 0)
        scope.setdefault("state", {})["request_id"] = request_id
        extra = (
            *(DOCS_HEADERS if scope["path"] in self.docs_paths else API_HEADERS),
            (b"x-request-id", request_id.encode()),
        )
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = with_security_headers(
                    message.get("headers", ()), extra, REPLACED
                )
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            if started:
                raise
            await send_json(send_with_headers, 500, {"detail": "internal server error"})
        finally:
            REQUEST_ID.reset(token)
