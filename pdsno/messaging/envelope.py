"""Signed envelopes: every message between controllers carries its sender's
signature, checked against the sender's key registered in the NIB, inside a
timestamp window, with a nonce that can be used once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import IntegrityError

from pdsno.clock import as_utc, utcnow
from pdsno.errors import ValidationRefusedError
from pdsno.nib.schema import controllers, message_nonces
from pdsno.security.keys import SigningKey, verify_signature

SIGNED_FIELDS = ("message_type", "sender", "recipient", "timestamp", "nonce", "body")


def seal(
    message_type: str,
    body: dict[str, Any],
    *,
    sender_id: str,
    recipient_id: str | None,
    signer: SigningKey,
) -> dict[str, Any]:
    unsigned = {
        "message_type": message_type,
        "sender": sender_id,
        "recipient": recipient_id,
        "timestamp": utcnow().isoformat(),
        "nonce": secrets.token_hex(16),
        "body": body,
    }
    return {**unsigned, "signature": signer.sign(unsigned)}


@dataclass(frozen=True)
class VerifiedMessage:
    message_type: str
    sender_id: str
    sender_type: str
    sender_region: str | None
    sender_parent_id: str | None
    body: dict[str, Any]
    nonce: str = ""


def _parse_time(value: str) -> datetime:
    try:
        return as_utc(datetime.fromisoformat(value))
    except (TypeError, ValueError):
        raise ValidationRefusedError("message timestamp is not an ISO 8601 time") from None


def open_sealed(
    conn: Connection, envelope: dict[str, Any], *, recipient_id: str, window: timedelta
) -> VerifiedMessage:
    """Verify sender, recipient, time, signature and nonce; refuse with the reason."""
    sender = conn.execute(
        select(controllers).where(controllers.c.controller_id == envelope["sender"])
    ).one_or_none()
    if sender is None or sender.status != "active":
        raise ValidationRefusedError(f"unknown or inactive sender {envelope['sender']}")
    if envelope.get("recipient") != recipient_id:
        raise ValidationRefusedError(
            f"message is addressed to {envelope.get('recipient')}, not {recipient_id}"
        )
    sent_at = _parse_time(envelope["timestamp"])
    now = utcnow()
    if abs(now - sent_at) > window:
        raise ValidationRefusedError(
            f"message timestamp {sent_at.isoformat()} is outside the {window.seconds} s window"
        )
    unsigned = {field: envelope.get(field) for field in SIGNED_FIELDS}
    if not verify_signature(sender.public_key, unsigned, envelope["signature"]):
        raise ValidationRefusedError(f"bad signature for sender {sender.controller_id}")
    _use_nonce(conn, sender.controller_id, envelope["nonce"], now, window)
    return VerifiedMessage(
        message_type=envelope["message_type"],
        sender_id=sender.controller_id,
        sender_type=sender.controller_type,
        sender_region=sender.region,
        sender_parent_id=sender.parent_id,
        body=envelope["body"],
        nonce=envelope["nonce"],
    )


def release_nonce(conn: Connection, sender_id: str, nonce: str) -> None:
    """Make a nonce usable again: for a message refused after it was used."""
    conn.execute(
        delete(message_nonces)
        .where(message_nonces.c.sender_id == sender_id)
        .where(message_nonces.c.nonce == nonce)
    )


def _use_nonce(
    conn: Connection, sender_id: str, nonce: str, now: datetime, window: timedelta
) -> None:
    # Nonces older than twice the window can no longer pass the time check.
    conn.execute(delete(message_nonces).where(message_nonces.c.received_at < now - 2 * window))
    try:
        with conn.begin_nested():
            conn.execute(
                message_nonces.insert().values(sender_id=sender_id, nonce=nonce, received_at=now)
            )
    except IntegrityError:
        raise ValidationRefusedError("message nonce already used (replayed message)") from None
