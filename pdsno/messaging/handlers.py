"""What a controller does with each verified message from another controller."""

from __future__ import annotations

from collections.abc import Callable

from pdsno import policies
from pdsno.context import ControllerContext
from pdsno.errors import PermissionDeniedError, ValidationRefusedError
from pdsno.messaging.envelope import VerifiedMessage

Handler = Callable[[ControllerContext, VerifiedMessage], None]


def _from_child(ctx: ControllerContext, message: VerifiedMessage) -> None:
    if message.sender_parent_id != ctx.identity.controller_id:
        raise PermissionDeniedError(f"{message.sender_id} is not a child of this controller")


def _from_above(ctx: ControllerContext, message: VerifiedMessage) -> None:
    if message.sender_id != ctx.identity.parent_id and message.sender_type != "global":
        raise PermissionDeniedError(f"{message.sender_id} is not above this controller")


def proposal_review(ctx: ControllerContext, message: VerifiedMessage) -> None:
    _from_child(ctx, message)
    ctx.workflow.review(message.body["proposal_id"], from_controller=message.sender_id)


def proposal_escalate(ctx: ControllerContext, message: VerifiedMessage) -> None:
    if message.sender_type != "regional":
        raise PermissionDeniedError("escalations come from regional controllers")
    ctx.workflow.escalated(message.body["proposal_id"], from_controller=message.sender_id)


def proposal_approved(ctx: ControllerContext, message: VerifiedMessage) -> None:
    _from_above(ctx, message)
    ctx.workflow.execute_delivered(message.body["proposal_id"], message.body["token"])


def policy_published(ctx: ControllerContext, message: VerifiedMessage) -> None:
    """Verify and acknowledge; a regional controller passes global policies down."""
    _from_above(ctx, message)
    with ctx.engine.begin() as conn:
        policies.acknowledge(
            conn,
            policy_id=message.body["policy_id"],
            policy_version=message.body["policy_version"],
            me=ctx.identity,
        )
        children = policies.children_of(conn, ctx.identity.controller_id)
    for child in children:
        ctx.dispatcher.send(child, "policy.published", message.body)


HANDLERS: dict[str, Handler] = {
    "proposal.review": proposal_review,
    "proposal.escalate": proposal_escalate,
    "proposal.approved": proposal_approved,
    "policy.published": policy_published,
}


def handle(ctx: ControllerContext, message: VerifiedMessage) -> None:
    handler = HANDLERS.get(message.message_type)
    if handler is None:
        raise ValidationRefusedError(f"unknown message type {message.message_type}")
    handler(ctx, message)
