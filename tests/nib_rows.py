"""Rows put straight into a test NIB, for tests of one component at a time."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import Connection, insert

from pdsno.clock import utcnow
from pdsno.nib.schema import config_proposals, controllers, devices
from pdsno.security.keys import SigningKey, config_hash

REGION = "eu-west"


def add_controller(
    conn: Connection,
    controller_id: str,
    key: SigningKey | None = None,
    *,
    controller_type: str = "global",
    status: str = "active",
) -> None:
    now = utcnow()
    conn.execute(
        insert(controllers).values(
            controller_id=controller_id,
            controller_type=controller_type,
            region=None if controller_type == "global" else REGION,
            name=controller_id,
            public_key=(key or SigningKey.generate()).public_key_b64,
            status=status,
            created_at=now,
            updated_at=now,
            version=1,
        )
    )


def add_device(conn: Connection, device_id: str, current_config: list[str] | None = None) -> None:
    now = utcnow()
    conn.execute(
        insert(devices).values(
            device_id=device_id,
            name=device_id,
            region=REGION,
            status="active",
            config_version=0,
            current_config=current_config or [],
            created_at=now,
            updated_at=now,
            version=1,
        )
    )


def add_proposal(
    conn: Connection,
    device_id: str,
    config_lines: list[str],
    *,
    origin_id: str,
    sensitivity: str,
) -> str:
    """An approved proposal, as the workflow leaves it before execution."""
    now = utcnow()
    proposal_id = str(uuid.uuid4())
    conn.execute(
        insert(config_proposals).values(
            proposal_id=proposal_id,
            device_id=device_id,
            origin_id=origin_id,
            region=REGION,
            config_lines=config_lines,
            config_hash=config_hash(config_lines),
            sensitivity_local=sensitivity,
            sensitivity=sensitivity,
            status="approved",
            created_at=now,
            expires_at=now + timedelta(hours=1),
            updated_at=now,
            version=1,
        )
    )
    return proposal_id
