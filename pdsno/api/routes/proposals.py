from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status

from pdsno.api.deps import Context, check_region, region_scope, require
from pdsno.api.models import DecisionIn, ExecuteIn, ProposalIn, ProposalOut
from pdsno.api.types import Count, Identifier, Region, StateName
from pdsno.auth.api_keys import Principal

SURFACE = "api"
ProposalId = Annotated[Identifier, Path()]
router = APIRouter(prefix="/proposals", tags=["proposals"])


@router.get("", response_model=list[ProposalOut])
def list_proposals(
    ctx: Context,
    principal: Annotated[Principal, Depends(require("proposals:read"))],
    proposal_status: Annotated[StateName | None, Query(alias="status")] = None,
    region: Annotated[Region | None, Query()] = None,
    limit: Annotated[Count, Query(ge=1, le=500)] = 100,
) -> list[dict]:
    return ctx.workflow.list(
        status=proposal_status, region=region_scope(principal, region), limit=limit
    )


@router.post("", response_model=ProposalOut, status_code=status.HTTP_202_ACCEPTED)
def submit_proposal(
    body: ProposalIn,
    ctx: Context,
    principal: Annotated[Principal, Depends(require("proposals:submit"))],
) -> dict:
    check_region(principal, ctx.identity.region, f"controller {ctx.identity.controller_id}")
    return ctx.workflow.submit(
        device_id=body.device_id, config_lines=body.config_lines, submitted_by=principal.name
    )


@router.get("/{proposal_id}", response_model=ProposalOut)
def get_proposal(
    proposal_id: ProposalId,
    ctx: Context,
    _: Annotated[Principal, Depends(require("proposals:read"))],
) -> dict:
    return ctx.workflow.get(proposal_id)


@router.post("/{proposal_id}/approve", response_model=ProposalOut)
def approve_proposal(
    proposal_id: ProposalId,
    body: DecisionIn,
    ctx: Context,
    principal: Annotated[Principal, Depends(require("proposals:decide"))],
) -> dict:
    return ctx.workflow.decide(
        proposal_id,
        approve=True,
        operator=principal.name,
        reason=body.reason,
        operator_region=principal.region,
    )


@router.post("/{proposal_id}/reject", response_model=ProposalOut)
def reject_proposal(
    proposal_id: ProposalId,
    body: DecisionIn,
    ctx: Context,
    principal: Annotated[Principal, Depends(require("proposals:decide"))],
) -> dict:
    return ctx.workflow.decide(
        proposal_id,
        approve=False,
        operator=principal.name,
        reason=body.reason,
        operator_region=principal.region,
    )


@router.post("/{proposal_id}/execute", response_model=ProposalOut)
def execute_proposal(
    proposal_id: ProposalId,
    body: ExecuteIn,
    ctx: Context,
    _: Annotated[Principal, Depends(require("proposals:submit"))],
) -> dict:
    """Apply an approved proposal with its execution token and the exact approved config."""
    return ctx.workflow.execute(
        proposal_id, body.token.model_dump(), config_lines=body.config_lines
    )
