"""Named leases in the NIB, e.g. one configuration change per device at a time.

The `locks` table's primary key is the lock name, so the database itself
decides who wins: `acquire` deletes an expired lease and then INSERTs, and a
unique-key violation means someone else holds the name. Never check-then-insert:
two controllers could both see the name free. A lease expires after its TTL,
so a controller that dies while holding one blocks the name for at most that long.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from pdsno.clock import as_utc, utcnow
from pdsno.errors import ConflictError
from pdsno.nib.schema import locks


def device_lock_name(device_id: str) -> str:
    """The lock that serialises configuration changes to one device."""
    return f"device {device_id}"


def acquire(conn: Connection, name: str, holder: str, ttl_seconds: float) -> None:
    """Take lock `name` for `holder` until now + ttl, or raise ConflictError.

    Runs in the caller's transaction: the lock is visible to others once it
    commits. A holder that already holds `name` is refused too, so that
    nested users cannot release each other's lease.
    """
    if ttl_seconds <= 0:
        raise ValueError(f"a lock needs a positive ttl, not {ttl_seconds}")
    now = utcnow()
    conn.execute(delete(locks).where(locks.c.name == name, locks.c.expires_at <= now))
    try:
        # A failed INSERT aborts a whole PostgreSQL transaction; inside a
        # savepoint only the savepoint is lost and the caller's work survives.
        with conn.begin_nested():
            conn.execute(
                insert(locks).values(
                    name=name,
                    holder=holder,
                    acquired_at=now,
                    expires_at=now + timedelta(seconds=ttl_seconds),
                )
            )
    except IntegrityError:
        raise _held_error(conn, name) from None


def _held_error(conn: Connection, name: str) -> ConflictError:
    current = conn.execute(
        select(locks.c.holder, locks.c.expires_at).where(locks.c.name == name)
    ).one_or_none()
    if current is None:  # released between our INSERT and this SELECT
        return ConflictError(f"{name} was locked by someone else a moment ago: try again")
    until = as_utc(current.expires_at).isoformat(timespec="seconds")
    return ConflictError(f"{name} is locked by {current.holder} until {until}")


def release(conn: Connection, name: str, holder: str) -> bool:
    """Drop `holder`'s lease on `name`; False when it holds none (expired and taken over)."""
    result = conn.execute(delete(locks).where(locks.c.name == name, locks.c.holder == holder))
    return result.rowcount == 1


@contextmanager
def held(engine: Engine, name: str, holder: str, ttl_seconds: float) -> Iterator[None]:
    """Hold `name` for the duration of the block, visible to every other controller.

    The lease is taken and released in transactions of its own, so that it is
    committed (and seen by others) while the block runs its own transactions.
    If the release fails, the lease still ends at its TTL.
    """
    with engine.begin() as conn:
        acquire(conn, name, holder, ttl_seconds)
    try:
        yield
    finally:
        with engine.begin() as conn:
            release(conn, name, holder)
