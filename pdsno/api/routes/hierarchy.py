"""Endpoints controllers call on each other: joining, and signed messages.

They take no API key: a join proves itself with a bootstrap token and a
signed challenge, a message with its sender's signature.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from fastapi import APIRouter, Request, status

from pdsno import audit
from pdsno.api.deps import Context
from pdsno.api.models import (
    ChallengeIn,
    ChallengeOut,
    EnvelopeIn,
    MessageOut,
    RegisterIn,
    RegisterOut,
)
from pdsno.config import ControllerType
from pdsno.context import ControllerContext
from pdsno.errors import PdsnoError
from pdsno.identity import bootstrap
from pdsno.messaging import handlers
from pdsno.messaging.envelope import VerifiedMessage, open_sealed, release_nonce

SURFACE = "peer"
router = APIRouter(tags=["hierarchy"])
log = logging.getLogger("pdsno.api")


def _audit_refusal(ctx: ControllerContext, event_type: str, reason: str, payload: dict) -> None:
    """Refusals are security events: record them even though the request fails."""
    with ctx.engine.begin() as conn:
        audit.append(
            conn,
            event_type,
            actor=ctx.identity.controller_id,
            region=payload.get("region"),
            payload={**payload, "reason": reason},
        )


def _count_validation(ctx: ControllerContext, controller_type: str, result: str) -> None:
    if ctx.metrics is not None:
        ctx.metrics.count_validation(controller_type, result)


def _client_certificate_hosts(http_request: Request) -> list[str] | None:
    """The names of the client's certificate, from the ASGI `tls` extension
    (pdsno.api.tls_scope); None without TLS (the development mode)."""
    tls = http_request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(chain[0].encode())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [*names.get_values_for_type(x509.DNSName)] + [
        str(address) for address in names.get_values_for_type(x509.IPAddress)
    ]


@router.post("/validation/challenge", response_model=ChallengeOut)
def open_challenge(body: ChallengeIn, ctx: Context, http_request: Request) -> dict:
    request = bootstrap.JoinRequest(
        token=body.token,
        controller_type=ControllerType(body.controller_type),
        region=body.region,
        name=body.name,
        public_key=body.public_key,
        url=body.url,
    )
    try:
        with ctx.engine.begin() as conn:
            nonce, expires_at = bootstrap.open_challenge(
                conn,
                request,
                parent=ctx.identity,
                # Plain http only in the insecure development mode (TLS off).
                require_https=ctx.settings.tls.enabled,
                certificate_hosts=_client_certificate_hosts(http_request),
            )
    except PdsnoError as error:
        _audit_refusal(
            ctx,
            "validation.refused",
            str(error),
            {
                "step": "challenge",
                "name": body.name,
                "region": body.region,
                "controller_type": body.controller_type,
            },
        )
        raise
    return {"nonce": nonce, "expires_at": expires_at}


@router.post(
    "/validation/register", response_model=RegisterOut, status_code=status.HTTP_201_CREATED
)
def register(body: RegisterIn, ctx: Context) -> dict:
    try:
        with ctx.engine.begin() as conn:
            child = bootstrap.register(
                conn,
                nonce=body.nonce,
                signature=body.signature,
                parent=ctx.identity,
                signer=ctx.signer,
            )
    except PdsnoError as error:
        _count_validation(ctx, "unknown", "refused")
        _audit_refusal(ctx, "validation.refused", str(error), {"step": "register"})
        raise
    _count_validation(ctx, child.controller_type, "admitted")
    return {
        "controller_id": child.controller_id,
        "controller_type": child.controller_type,
        "region": child.region,
        "parent_id": child.parent_id,
        "credential": child.credential,
    }


@router.post("/messages", response_model=MessageOut, status_code=status.HTTP_202_ACCEPTED)
def receive_message(body: EnvelopeIn, ctx: Context) -> dict:
    """A signed message. Its body was checked against its type's model before
    this runs; a message refused here or by its handler leaves its nonce
    unused, so that the sender may correct it and send it again."""
    window = timedelta(seconds=ctx.settings.message_window_seconds)
    # Strict models: this is exactly the JSON the sender signed.
    envelope = body.model_dump(mode="json", exclude_unset=True)
    try:
        with ctx.engine.begin() as conn:
            message = open_sealed(
                conn, envelope, recipient_id=ctx.identity.controller_id, window=window
            )
    except PdsnoError as error:
        _audit_refusal(
            ctx,
            "message.refused",
            str(error),
            {
                "sender": body.sender,
                "message_type": body.message_type,
            },
        )
        raise
    started = time.perf_counter()
    try:
        handlers.handle(ctx, message)
    except Exception:
        _release_nonce(ctx, message)
        raise
    if ctx.metrics is not None:
        ctx.metrics.observe_message(message.message_type, time.perf_counter() - started)
    return {"message_type": message.message_type}


def _release_nonce(ctx: ControllerContext, message: VerifiedMessage) -> None:
    """Forget a refused message's nonce; handlers are idempotent, so the
    message may come again, and is handled or refused again."""
    try:
        with ctx.engine.begin() as conn:
            release_nonce(conn, message.sender_id, message.nonce)
    except Exception:  # the handler's own error is the one to report
        log.exception("could not release the nonce of a refused %s", message.message_type)
