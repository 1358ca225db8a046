"""The ASGI `tls` extension, which uvicorn's HTTP protocols do not provide.

The peer listener's join route binds the URL the parent will later call back
to the names of the joining controller's client certificate, so the app must
see that certificate. uvicorn builds each request's scope without it; this
protocol wraps the app once per connection, after the TLS handshake, with the
connection's details as the ASGI TLS extension names them
(https://asgi.readthedocs.io/en/latest/specs/tls.html).

Python's ssl module gives the peer's leaf certificate only (the verified
chain needs Python 3.13), and no numeric cipher suite, so `client_cert_chain`
holds the leaf alone and `cipher_suite` is None; nothing in pdsno reads more.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

# TLS protocol versions as the extension gives them: the record-layer numbers.
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The `tls` scope extension of one TLS connection."""
    der = ssl_object.getpeercert(binary_form=True)
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version) if version else None,
        "cipher_suite": None,
    }


def _with_extension(app: Any, extension: dict[str, Any]) -> Any:
    async def app_with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["extensions"] = {**scope.get("extensions", {}), "tls": extension}
        await app(scope, receive, send)

    return app_with_tls


class TlsExtensionProtocol(H11Protocol):
    """uvicorn's h11 protocol (its default without httptools) plus the `tls` extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            # uvicorn reads self.app for each request of this connection.
            self.app = _with_extension(self.app, tls_extension(ssl_object))
