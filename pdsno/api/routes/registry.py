"""Controllers, policies and the audit trail: what the hierarchy knows of itself.

A principal bound to a region sees that region's controllers and events only,
the policies that apply to it (global ones and its region's), and publishes a
policy only at a controller of its region (pdsno.api.deps.require).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status
from sqlalchemy import select

from pdsno import policies
from pdsno.api.deps import Context, region_scope, require
from pdsno.api.models import ControllerOut, EventOut, PolicyIn, PolicyOut
from pdsno.api.types import ControllerId, Count, EventType, SequenceNumber
from pdsno.auth.api_keys import Principal
from pdsno.errors import NotFoundError
from pdsno.nib.schema import controllers, events

SURFACE = "api"
router = APIRouter()


@router.get("/controllers", response_model=list[ControllerOut], tags=["controllers"])
def list_controllers(
    ctx: Context, principal: Annotated[Principal, Depends(require("controllers:read"))]
) -> list[dict]:
    query = select(controllers).order_by(controllers.c.seq)
    region = region_scope(principal, None)
    if region is not None:
        query = query.where(controllers.c.region == region)
    with ctx.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


@router.get("/controllers/{controller_id}", response_model=ControllerOut, tags=["controllers"])
def get_controller(
    controller_id: Annotated[ControllerId, Path()],
    ctx: Context,
    _: Annotated[Principal, Depends(require("controllers:read"))],
) -> dict:
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(controllers).where(controllers.c.controller_id == controller_id)
        ).one_or_none()
    if row is None:
        raise NotFoundError(f"no controller {controller_id}")
    return dict(row._mapping)


@router.get("/policies", response_model=list[PolicyOut], tags=["policies"])
def list_policies(
    ctx: Context, principal: Annotated[Principal, Depends(require("policies:read"))]
) -> list[dict]:
    """The policies in force for the caller: global ones and its region's (an unbound
    caller: this controller's region's, or all of them at the global controller)."""
    with ctx.engine.connect() as conn:
        return policies.list_policies(conn, region=principal.region or ctx.identity.region)


@router.post(
    "/policies", response_model=PolicyOut, status_code=status.HTTP_201_CREATED, tags=["policies"]
)
def publish_policy(
    body: PolicyIn,
    ctx: Context,
    _: Annotated[Principal, Depends(require("policies:publish", region="controller"))],
) -> dict:
    with ctx.engine.begin() as conn:
        published = policies.publish(
            conn, policy_id=body.policy_id, body=body.body, me=ctx.identity, signer=ctx.signer
        )
        children = policies.children_of(conn, ctx.identity.controller_id)
    notice = {"policy_id": published["policy_id"], "policy_version": published["policy_version"]}
    for child in children:
        ctx.dispatcher.send(child, "policy.published", notice)
    return published


@router.get("/events", response_model=list[EventOut], tags=["events"])
def list_events(
    ctx: Context,
    principal: Annotated[Principal, Depends(require("events:read"))],
    after_seq: Annotated[SequenceNumber, Query()] = 0,
    event_type: Annotated[EventType | None, Query()] = None,
    limit: Annotated[Count, Query(ge=1, le=1000)] = 100,
) -> list[dict]:
    query = select(events).where(events.c.seq > after_seq).order_by(events.c.seq).limit(limit)
    if event_type:
        query = query.where(events.c.event_type == event_type)
    region = region_scope(principal, None)
    if region is not None:
        query = query.where(events.c.region == region)
    with ctx.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
