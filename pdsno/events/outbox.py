"""Writing events to the outbox, in the same transaction as what they announce.

The publisher (pdsno.events.publisher) sends them to the broker and marks
them sent only when the broker acknowledges them.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy import Connection

from pdsno.clock import utcnow
from pdsno.nib.schema import outbox
from pdsno.security.keys import SigningKey

TOPIC_ROOT = "pdsno/v1"
# Set in the DBAPI connection's info by enqueue(); a publisher on the engine
# (pdsno.events.publisher) wakes when that connection goes back to the pool,
# after its transaction ended, so a lone event need not wait for the poll.
WRITTEN_MARK = "pdsno.outbox.written"

# Built once: the row's values go as parameters, so SQLAlchemy reuses the
# compiled statement instead of building and caching a new one per event
# (a quarter of an enqueue's own time).
_INSERT_EVENT = outbox.insert()


def topic_for(event_type: str, region: str | None) -> str:
    """pdsno/v1/<region or global>/<event type, dots as levels>."""
    return f"{TOPIC_ROOT}/{region or 'global'}/{event_type.replace('.', '/')}"


def signed_event(
    event_type: str, body: dict[str, Any], *, sender_id: str, signer: SigningKey
) -> dict[str, Any]:
    unsigned = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "sender": sender_id,
        "timestamp": utcnow().isoformat(),
        "nonce": secrets.token_hex(16),
        "body": body,
    }
    return {**unsigned, "signature": signer.sign(unsigned)}


def enqueue(
    conn: Connection,
    event_type: str,
    body: dict[str, Any],
    *,
    region: str | None,
    sender_id: str,
    signer: SigningKey,
) -> str:
    """Queue a signed event for MQTT; returns its event_id."""
    payload = signed_event(event_type, body, sender_id=sender_id, signer=signer)
    conn.execute(
        _INSERT_EVENT,
        {
            "event_id": payload["event_id"],
            "sender_id": sender_id,
            "topic": topic_for(event_type, region),
            "payload": payload,
            "created_at": utcnow(),
            "attempts": 0,
        },
    )
    conn.info[WRITTEN_MARK] = True
    return payload["event_id"]
