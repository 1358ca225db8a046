"""Strict input, before any route sees it: URLs and JSON bodies the NIB can hold.

JSON bodies must be strict JSON (RFC 8259, with the I-JSON rules of RFC 7493
that matter here): UTF-8, no NaN or Infinity (and no number too large for a
double), no member named twice in an object, no lone surrogate, no NUL
(PostgreSQL cannot store U+0000, in text or in json), nested at most
MAX_DEPTH levels. Python's json module accepts all of these, and FastAPI
parses bodies with it. A URL must not carry a NUL, or bytes that are not
UTF-8, once percent-decoded.

A refusal is a 422 in the shape of every validation error of the API,
naming where the problem is and never echoing the input.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdsno.api.middleware._asgi import send_json

MAX_DEPTH = 32
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class StrictJsonError(ValueError):
    """A body that is not strict JSON; the message says why, without the input."""


def _refuse_constant(name: str) -> Any:
    raise StrictJsonError(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise StrictJsonError("a number is too large for a double")
    return value


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise StrictJsonError(f"{where} holds U+0000 (NUL), which cannot be stored")
    # Encoding fails exactly on lone surrogates (a pair was joined by the parser).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StrictJsonError(f"{where} holds a lone surrogate, which is not Unicode") from None


def _check_tree(value: Any) -> None:
    """Strings and keys of a parsed document, and its depth; without recursion."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, str):
            _check_text(node, "a string")
        elif isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(node, dict):
                for key, item in node.items():
                    _check_text(key, "an object key")
                    pending.append((item, depth + 1))
            else:
                pending.extend((item, depth + 1) for item in node)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise StrictJsonError("an object names the same member twice")
    return document


def loads_strict(raw: bytes) -> Any:
    """Parse `raw` as strict JSON; StrictJsonError says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise StrictJsonError(f"not UTF-8 (byte {error.start})") from None
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except StrictJsonError:
        raise
    except json.JSONDecodeError as error:
        raise StrictJsonError(f"{error.msg} (line {error.lineno}, column {error.colno})") from None
    except (ValueError, RecursionError) as error:  # an integer of 4300+ digits; deep nesting
        reason = "nested too deeply" if isinstance(error, RecursionError) else "number too long"
        raise StrictJsonError(reason) from None
    _check_tree(value)
    return value


def is_json(content_type: str) -> bool:
    """What FastAPI parses as JSON: application/json and application/*+json."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media_type.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def url_problem(scope: Scope) -> tuple[str, str] | None:
    """Where the URL carries a NUL or non-UTF-8 bytes, and what: or None."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    for where, raw in (("path", raw_path), ("query", scope.get("query_string", b""))):
        decoded = unquote_to_bytes(raw.replace(b"+", b" ") if where == "query" else raw)
        if b"\x00" in decoded:
            return where, "the URL holds U+0000 (NUL)"
        try:
            decoded.decode("utf-8")
        except UnicodeDecodeError:
            return where, "the URL holds percent-encoded bytes that are not UTF-8"
    return None


def validation_body(location: list[str | int], kind: str, message: str) -> dict[str, Any]:
    return {"detail": [{"type": kind, "loc": location, "msg": message}]}


class StrictInputMiddleware:
    """422 for a URL or a JSON body that is not strict; the body is read once
    and handed on unchanged (BodySizeLimitMiddleware, outside, bounds it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = url_problem(scope)
        if problem is not None:
            where, message = problem
            await send_json(send, 422, validation_body([where], "url_invalid", message))
            return
        if scope["method"] not in BODY_METHODS or not is_json(_header(scope, b"content-type")):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                loads_strict(body)
            except StrictJsonError as error:
                await send_json(
                    send,
                    422,
                    validation_body(["body"], "json_invalid", f"not strict JSON: {error}"),
                )
                return
        await self.app(scope, _replay(body, receive), send)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when it comes

    return replayed
