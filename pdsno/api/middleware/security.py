"""The security headers every response carries (RequestContextMiddleware adds them)."""

from __future__ import annotations

API_CSP = "default-src 'none'; frame-ancestors 'none'"
# Swagger UI (only when http.docs_enabled): FastAPI's page loads its script
# and style from jsDelivr and starts it with an inline script.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' https://cdn.jsdelivr.net 'unsafe-inline'; "
    "style-src 'self' https://cdn.jsdelivr.net 'unsafe-inline'; "
    "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
COMMON = (
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
API_HEADERS = (*COMMON, (b"content-security-policy", API_CSP.encode()))
DOCS_HEADERS = (*COMMON, (b"content-security-policy", DOCS_CSP.encode()))


ALWAYS_DROPPED = frozenset({b"server"})


def with_security_headers(
    headers: list[tuple[bytes, bytes]] | tuple,
    extra: tuple[tuple[bytes, bytes], ...],
    drop: frozenset[bytes] = ALWAYS_DROPPED,
) -> list[tuple[bytes, bytes]]:
    """`headers` without those named in `drop` (Server), plus each of `extra`
    they lack: a handler may set its own Cache-Control, say, not remove one."""
    result = []
    present = set()
    for key, value in headers:
        lowered = key.lower()
        if lowered not in drop:
            result.append((key, value))
            present.add(lowered)
    result.extend(item for item in extra if item[0] not in present)
    return result
