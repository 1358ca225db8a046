"""The audit trail: append-only rows in the NIB, each hashing its predecessor.

`append` runs inside the caller's transaction, so an action and its audit
event commit together or not at all. `verify` recomputes the chain and names
the first row that does not match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from pdsno.clock import as_utc, utcnow
from pdsno.nib.schema import audit_head, events
from pdsno.security.keys import canonical_json, sha256_hex


def _row_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    return sha256_hex(prev_hash.encode() + canonical_json(fields))


def _hashed_fields(row: Any) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "event_type": row.event_type,
        "actor": row.actor,
        "subject": row.subject,
        "region": row.region,
        "payload": row.payload,
        "created_at": as_utc(row.created_at).isoformat(),
    }


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    event_type: str
    actor: str
    subject: str | None
    region: str | None
    payload: dict[str, Any]
    created_at: Any


def append(
    conn: Connection,
    event_type: str,
    *,
    actor: str,
    subject: str | None = None,
    region: str | None = None,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction; the head row lock orders writers."""
    head = conn.execute(
        select(audit_head.c.last_seq, audit_head.c.last_hash)
        .where(audit_head.c.id == 1)
        .with_for_update()
    ).one()
    event = AuditEvent(
        seq=head.last_seq + 1,
        event_type=event_type,
        actor=actor,
        subject=subject,
        region=region,
        payload=payload or {},
        created_at=utcnow(),
    )
    digest = _row_hash(head.last_hash, _hashed_fields(event))
    conn.execute(
        events.insert().values(
            seq=event.seq,
            event_type=event.event_type,
            actor=event.actor,
            subject=event.subject,
            region=event.region,
            payload=event.payload,
            created_at=event.created_at,
            prev_hash=head.last_hash,
            hash=digest,
        )
    )
    conn.execute(
        update(audit_head).where(audit_head.c.id == 1).values(last_seq=event.seq, last_hash=digest)
    )
    return event


@dataclass(frozen=True)
class ChainReport:
    rows_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None

    @property
    def intact(self) -> bool:
        return self.first_bad_seq is None


def verify(engine: Engine, *, batch_size: int = 1000) -> ChainReport:
    """Recompute every hash from the start; stop at the first row that fails."""
    expected_prev = "0" * 64
    expected_seq = 1
    checked = 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=batch_size).execute(
            select(events).order_by(events.c.seq)
        )
        for row in result:
            if row.seq != expected_seq:
                return ChainReport(checked, row.seq, f"row {expected_seq} is missing")
            if row.prev_hash != expected_prev:
                return ChainReport(checked, row.seq, "prev_hash does not match the row before")
            if _row_hash(row.prev_hash, _hashed_fields(row)) != row.hash:
                return ChainReport(checked, row.seq, "content does not match its hash")
            expected_prev = row.hash
            expected_seq += 1
            checked += 1
        head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one()
    if head.last_seq != checked or head.last_hash != expected_prev:
        return ChainReport(checked, checked + 1, "rows after the last one are missing")
    return ChainReport(checked)
