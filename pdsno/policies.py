"""Policies: published signed by the GC (global) or an RC (regional), and
acknowledged by each controller below once it has verified the signature.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import IntegrityError

from pdsno import audit
from pdsno.clock import utcnow
from pdsno.errors import NotFoundError, PermissionDeniedError, ValidationRefusedError
from pdsno.events import outbox
from pdsno.identity.state import Identity
from pdsno.nib.schema import controllers, policies, policy_acks
from pdsno.security.keys import SigningKey, verify_signature

SIGNED_FIELDS = ("policy_id", "policy_version", "scope", "region", "issuer_id", "body")


def publish(
    conn: Connection, *, policy_id: str, body: dict[str, Any], me: Identity, signer: SigningKey
) -> dict[str, Any]:
    if me.controller_type == "local":
        raise PermissionDeniedError("policies are published by the global or a regional controller")
    latest = conn.execute(
        select(func.max(policies.c.policy_version)).where(policies.c.policy_id == policy_id)
    ).scalar()
    claims = {
        "policy_id": policy_id,
        "policy_version": (latest or 0) + 1,
        "scope": "global" if me.controller_type == "global" else "regional",
        "region": me.region,
        "issuer_id": me.controller_id,
        "body": body,
    }
    conn.execute(
        policies.insert().values(**claims, signature=signer.sign(claims), created_at=utcnow())
    )
    audit.append(
        conn,
        "policy.published",
        actor=me.controller_id,
        subject=policy_id,
        region=me.region,
        payload={"policy_version": claims["policy_version"]},
    )
    outbox.enqueue(
        conn,
        "policy.published",
        claims,
        region=me.region,
        sender_id=me.controller_id,
        signer=signer,
    )
    return get(conn, policy_id, claims["policy_version"])


def get(conn: Connection, policy_id: str, policy_version: int) -> dict[str, Any]:
    row = conn.execute(
        select(policies)
        .where(policies.c.policy_id == policy_id)
        .where(policies.c.policy_version == policy_version)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"no policy {policy_id} version {policy_version}")
    return _with_acks(conn, dict(row._mapping))


def list_policies(conn: Connection, *, region: str | None = None) -> list[dict[str, Any]]:
    query = select(policies).order_by(policies.c.policy_id, policies.c.policy_version)
    if region is not None:
        query = query.where((policies.c.scope == "global") | (policies.c.region == region))
    return [_with_acks(conn, dict(row._mapping)) for row in conn.execute(query)]


def _with_acks(conn: Connection, policy: dict[str, Any]) -> dict[str, Any]:
    acked = conn.execute(
        select(policy_acks.c.controller_id)
        .where(policy_acks.c.policy_seq == policy["seq"])
        .order_by(policy_acks.c.controller_id)
    ).scalars()
    return {**policy, "acknowledged_by": list(acked)}


def acknowledge(conn: Connection, *, policy_id: str, policy_version: int, me: Identity) -> None:
    """Verify the policy's signature and that its issuer is above us, then record the ack."""
    policy = get(conn, policy_id, policy_version)
    issuer = conn.execute(
        select(controllers).where(controllers.c.controller_id == policy["issuer_id"])
    ).one_or_none()
    claims = {field: policy[field] for field in SIGNED_FIELDS}
    if issuer is None or not verify_signature(issuer.public_key, claims, policy["signature"]):
        raise ValidationRefusedError(f"policy {policy_id} v{policy_version}: bad signature")
    if issuer.controller_type != "global" and issuer.controller_id != me.parent_id:
        raise ValidationRefusedError(f"{issuer.controller_id} is not above {me.controller_id}")
    try:
        with conn.begin_nested():
            conn.execute(
                policy_acks.insert().values(
                    policy_seq=policy["seq"], controller_id=me.controller_id, acked_at=utcnow()
                )
            )
    except IntegrityError:
        return  # acknowledged already: a repeated delivery
    audit.append(
        conn,
        "policy.acknowledged",
        actor=me.controller_id,
        subject=policy_id,
        region=me.region,
        payload={"policy_version": policy_version},
    )


def children_of(conn: Connection, controller_id: str) -> list[str]:
    return list(
        conn.execute(
            select(controllers.c.controller_id)
            .where(controllers.c.parent_id == controller_id)
            .where(controllers.c.status == "active")
        ).scalars()
    )
