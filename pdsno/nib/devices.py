"""Devices in the NIB, with optimistic concurrency on every update."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from pdsno.clock import utcnow
from pdsno.errors import ConflictError, NotFoundError, PdsnoError
from pdsno.nib.schema import devices

EDITABLE = ("name", "region", "status", "management_address", "vendor", "role")
NOT_NULL = frozenset(name for name in EDITABLE if not devices.c[name].nullable)


def create(conn: Connection, *, device_id: str, **fields: Any) -> dict[str, Any]:
    now = utcnow()
    try:
        with conn.begin_nested():
            conn.execute(
                devices.insert().values(
                    device_id=device_id,
                    **{key: fields.get(key) for key in EDITABLE},
                    config_version=0,
                    current_config=[],
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
            )
    except IntegrityError:
        raise ConflictError(f"device {device_id} already exists") from None
    return get(conn, device_id)


def get(conn: Connection, device_id: str) -> dict[str, Any]:
    row = conn.execute(select(devices).where(devices.c.device_id == device_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"no device {device_id}")
    return dict(row._mapping)


def list_devices(
    conn: Connection,
    *,
    region: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    query = select(devices).order_by(devices.c.device_id).limit(limit).offset(offset)
    if region is not None:
        query = query.where(devices.c.region == region)
    if status is not None:
        query = query.where(devices.c.status == status)
    return [dict(row._mapping) for row in conn.execute(query)]


def update_device(
    conn: Connection, device_id: str, *, expected_version: int, changes: dict[str, Any]
) -> dict[str, Any]:
    """Apply `changes` only if nobody changed the device since `expected_version`."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise ConflictError(f"fields {sorted(unknown)} cannot be changed here")
    nulled = sorted(name for name in NOT_NULL if name in changes and changes[name] is None)
    if nulled:
        raise PdsnoError(f"fields {nulled} cannot be null: leave them out to keep them")
    result = conn.execute(
        update(devices)
        .where(devices.c.device_id == device_id)
        .where(devices.c.version == expected_version)
        .values(**changes, updated_at=utcnow(), version=devices.c.version + 1)
    )
    if result.rowcount != 1:
        current = get(conn, device_id)  # raises NotFoundError when it is gone
        raise ConflictError(
            f"device {device_id} is at version {current['version']}, not {expected_version}: "
            "read it again and retry"
        )
    return get(conn, device_id)
