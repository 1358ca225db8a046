"""The body of each message type between controllers, as a model.

The peer listener checks a message's body against its type's model before
anything is recorded (its nonce included): a refused body is a 422 and the
corrected message can be sent again. Strict models: what passes dumps back
to exactly the JSON that was signed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pdsno.api.types import ControllerId, Identifier, Version, text

Hex64 = text(64, min_length=64, pattern=r"^[0-9a-f]+$")
Timestamp = text(64, description="ISO 8601, with its UTC offset")
Signature = text(128, min_length=40, pattern=r"^[A-Za-z0-9+/]+={0,2}$")


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ExecutionToken(MessageBody):
    """What an approval yields: it binds a proposal, a device and the exact configuration."""

    token_id: Identifier
    proposal_id: Identifier
    device_id: Identifier
    config_hash: Hex64
    issuer_id: ControllerId
    issued_at: Timestamp
    expires_at: Timestamp
    signature: Signature


class ProposalRef(MessageBody):
    """proposal.review (LC to RC), proposal.escalate (RC to GC)."""

    proposal_id: Identifier


class ProposalApproved(MessageBody):
    """proposal.approved (RC or GC to the LC that proposed it)."""

    proposal_id: Identifier
    token: ExecutionToken


class PolicyPublished(MessageBody):
    """policy.published (GC or RC to each child)."""

    policy_id: Identifier
    policy_version: Version


MESSAGE_BODIES: dict[str, type[MessageBody]] = {
    "proposal.review": ProposalRef,
    "proposal.escalate": ProposalRef,
    "proposal.approved": ProposalApproved,
    "policy.published": PolicyPublished,
}
