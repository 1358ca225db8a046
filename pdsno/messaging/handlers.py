"""What a controller does with each verified message from another controller.

Each handler gets the message's body as its type's model
(pdsno.messaging.bodies); the peer listener refused any other body before
the message was recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from pdsno import policies
from pdsno.context import ControllerContext
from pdsno.errors import PermissionDeniedError, ValidationRefusedError
from pdsno.messaging.bodies import (
    MESSAGE_BODIES,
    MessageBody,
    PolicyPublished,
    ProposalApproved,
    ProposalRef,
)
from pdsno.messaging.envelope import VerifiedMessage

Handler = Callable[[ControllerContext, VerifiedMessage, Any], None]


def _from_child(ctx: ControllerContext, message: VerifiedMessage) -> None:
    if message.sender_parent_id != ctx.identity.controller_id:
        raise PermissionDeniedError(f"{message.sender_id} is not a child of this controller")


def _from_above(ctx: ControllerContext, message: VerifiedMessage) -> None:
    if message.sender_id != ctx.identity.parent_id and message.sender_type != "global":
        raise PermissionDeniedError(f"{message.sender_id} is not above this controller")


def proposal_review(ctx: ControllerContext, message: VerifiedMessage, body: ProposalRef) -> None:
    _from_child(ctx, message)
    ctx.workflow.review(body.proposal_id, from_controller=message.sender_id)


def proposal_escalate(ctx: ControllerContext, message: VerifiedMessage, body: ProposalRef) -> None:
    if message.sender_type != "regional":
        raise PermissionDeniedError("escalations come from regional controllers")
    ctx.workflow.escalated(body.proposal_id, from_controller=message.sender_id)


def proposal_approved(
    ctx: ControllerContext, message: VerifiedMessage, body: ProposalApproved
) -> None:
    _from_above(ctx, message)
    ctx.workflow.execute_delivered(body.proposal_id, body.token.model_dump())


def policy_published(
    ctx: ControllerContext, message: VerifiedMessage, body: PolicyPublished
) -> None:
    """Verify and acknowledge; a regional controller passes global policies down."""
    _from_above(ctx, message)
    with ctx.engine.begin() as conn:
        policies.acknowledge(
            conn,
            policy_id=body.policy_id,
            policy_version=body.policy_version,
            me=ctx.identity,
        )
        children = policies.children_of(conn, ctx.identity.controller_id)
    for child in children:
        ctx.dispatcher.send(child, "policy.published", body.model_dump())


HANDLERS: dict[str, Handler] = {
    "proposal.review": proposal_review,
    "proposal.escalate": proposal_escalate,
    "proposal.approved": proposal_approved,
    "policy.published": policy_published,
}


def parse_body(message_type: str, body: dict[str, Any]) -> MessageBody:
    """The body as its type's model; ValidationRefusedError for an unknown
    type or a body that is not that type's."""
    model = MESSAGE_BODIES.get(message_type)
    if model is None:
        raise ValidationRefusedError(f"unknown message type {message_type}")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in ("body", *first["loc"]))
        raise ValidationRefusedError(f"{message_type}: {where}: {first['msg']}") from None


def handle(ctx: ControllerContext, message: VerifiedMessage) -> None:
    handler = HANDLERS.get(message.message_type)
    if handler is None:
        raise ValidationRefusedError(f"unknown message type {message.message_type}")
    handler(ctx, message, parse_body(message.message_type, message.body))
