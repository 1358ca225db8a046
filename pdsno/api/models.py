"""Request and response models: the API's contract, published as OpenAPI."""

from __future__ import annotations

import functools
import operator
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from pdsno.api.types import (
    ControllerId,
    FreeText,
    Identifier,
    Name,
    Region,
    UtcDateTime,
    Version,
    text,
)
from pdsno.approval.classifier import config_line_problem
from pdsno.messaging.bodies import MESSAGE_BODIES, ExecutionToken, Signature, Timestamp


def _one_statement(line: str) -> str:
    problem = config_line_problem(line)
    if problem is not None:
        raise ValueError(problem)
    return line


# One configuration statement: the classifier rates what the device will read,
# so a line break or another control character inside a line is refused (422,
# located at the line's index), never passed on to be read as a second statement.
ConfigLine = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_one_statement)]
DeviceStatus = Literal["active", "maintenance", "retired"]
# The base64 of a 32-byte Ed25519 public key.
PublicKey = text(64, min_length=40, pattern=r"^[A-Za-z0-9+/]+={0,2}$")
Url = text(255)
BootstrapToken = text(200, min_length=10)
ChallengeNonce = text(64, min_length=64, pattern=r"^[0-9a-f]+$")
MessageNonce = text(64, min_length=16, pattern=r"^[A-Za-z0-9_-]+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    type: str = Field(description="what kind of problem, such as `missing` or `json_invalid`")
    loc: list[str | int] = Field(description="where: `body`, `query` or `path`, then the field")
    msg: str = Field(description="what is wrong; the value sent is never echoed")


class ValidationErrorOut(BaseModel):
    """422: the request's URL, parameters or JSON body are not valid; one issue each."""

    detail: list[ValidationIssue]


class HealthOut(BaseModel):
    status: Literal["healthy", "unhealthy"]
    timestamp: UtcDateTime
    version: str
    controller_id: str | None
    controller_type: str


ManagementAddress = text(255, min_length=0)
Vendor = text(64, min_length=0)
Role = text(64, min_length=0)


def _no_null_defaults(schema: dict[str, Any]) -> None:
    """A field that may be left out but not sent as null (its column refuses
    NULL) documents no `default: null`."""
    for field in schema.get("properties", {}).values():
        if "default" in field and field["default"] is None and "anyOf" not in field:
            del field["default"]


class DeviceIn(Strict):
    device_id: Identifier
    name: Name
    region: Region
    status: DeviceStatus = "active"
    management_address: ManagementAddress | None = None
    vendor: Vendor | None = None
    role: Role | None = None


class DeviceUpdate(Strict):
    """The fields to change; one left out stays as it is. name and status
    cannot be null; the others can (null clears them)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_null_defaults)

    version: Version
    name: Name = None  # type: ignore[assignment]  # left out: unchanged; null: 422
    status: DeviceStatus = None  # type: ignore[assignment]
    management_address: ManagementAddress | None = None
    vendor: Vendor | None = None
    role: Role | None = None


class DeviceOut(BaseModel):
    device_id: str
    name: str
    region: str
    status: str
    management_address: str | None
    vendor: str | None
    role: str | None
    config_version: int
    current_config: list[str]
    created_at: UtcDateTime
    updated_at: UtcDateTime
    version: int


class ProposalIn(Strict):
    device_id: Identifier
    config_lines: list[ConfigLine] = Field(min_length=1, max_length=5000)


class ProposalOut(BaseModel):
    proposal_id: str
    device_id: str
    origin_id: str
    region: str
    config_lines: list[str]
    config_hash: str
    sensitivity_local: str
    sensitivity_regional: str | None
    sensitivity: str
    status: str
    submitted_by: str | None = None
    decided_by: str | None
    decision_reason: str | None
    created_at: UtcDateTime
    expires_at: UtcDateTime
    updated_at: UtcDateTime
    version: int


class DecisionIn(Strict):
    reason: FreeText | None = None


ExecutionTokenIn = ExecutionToken


class ExecuteIn(Strict):
    token: ExecutionTokenIn
    config_lines: list[ConfigLine] = Field(min_length=1, max_length=5000)


class ControllerOut(BaseModel):
    controller_id: str
    controller_type: str
    region: str | None
    name: str
    public_key: str
    parent_id: str | None
    url: str | None
    status: str
    created_at: UtcDateTime


class ChallengeIn(Strict):
    token: BootstrapToken
    controller_type: Literal["regional", "local"]
    region: Region
    name: Name
    public_key: PublicKey
    url: Url | None = None


class ChallengeOut(BaseModel):
    nonce: str
    expires_at: UtcDateTime


class RegisterIn(Strict):
    nonce: ChallengeNonce
    signature: Signature


class RegisterOut(BaseModel):
    controller_id: str
    controller_type: str
    region: str | None
    parent_id: str
    credential: dict[str, Any]


class Envelope(Strict):
    """A signed message; its `body` is checked against its type's model
    (pdsno.messaging.bodies) before anything is recorded."""

    sender: ControllerId
    recipient: ControllerId | None = None
    timestamp: Timestamp
    nonce: MessageNonce
    signature: Signature


def _envelope_of(message_type: str, body: type[BaseModel]) -> type[Envelope]:
    name = "".join(part.capitalize() for part in re.split(r"[._]", message_type)) + "Message"
    return create_model(
        name,
        __base__=Envelope,
        message_type=(Literal[message_type], ...),
        body=(body, ...),
    )


# One envelope model per message type, told apart by `message_type`: an
# unknown type, or a body that is not its type's, is a 422.
ENVELOPES = {kind: _envelope_of(kind, body) for kind, body in MESSAGE_BODIES.items()}
EnvelopeIn = Annotated[
    functools.reduce(operator.or_, ENVELOPES.values()),
    Field(discriminator="message_type"),
]


class MessageOut(BaseModel):
    accepted: bool = True
    message_type: str


class PolicyIn(Strict):
    policy_id: Identifier
    body: dict[str, Any]


class PolicyOut(BaseModel):
    policy_id: str
    policy_version: int
    scope: str
    region: str | None
    issuer_id: str
    body: dict[str, Any]
    signature: str
    created_at: UtcDateTime
    acknowledged_by: list[str] = []


class EventOut(BaseModel):
    seq: int
    event_type: str
    actor: str
    subject: str | None
    region: str | None
    payload: dict[str, Any]
    created_at: UtcDateTime
    hash: str
