"""CORS for the operator API, from http.cors_allow_origins only."""

from __future__ import annotations

import re
from typing import Any

from pdsno.errors import ConfigurationError

ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


def cors_options(origins: list[str]) -> dict[str, Any] | None:
    """Keyword arguments of Starlette's CORSMiddleware, or None without origins.

    Only exact origins: "*" is refused (any web page could then drive the API
    with a victim's session), and so is anything that is not scheme://host[:port].
    Credentials (cookies) are never allowed: the API takes headers only.
    """
    if not origins:
        return None
    for origin in origins:
        if "*" in origin:
            raise ConfigurationError(
                "http.cors_allow_origins: '*' is refused; list the exact origins of the "
                "web consoles that call the API, such as https://console.example.net"
            )
        if not ORIGIN.fullmatch(origin):
            raise ConfigurationError(
                f"http.cors_allow_origins: {origin!r} is not an origin: write "
                "scheme://host[:port], without a path or a trailing slash"
            )
    return {
        "allow_origins": list(origins),
        "allow_methods": ["GET", "POST", "PATCH", "DELETE"],
        "allow_headers": ["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
        "allow_credentials": False,
        "expose_headers": ["X-Request-ID", "Retry-After"],
        "max_age": 600,
    }
