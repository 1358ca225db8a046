"""Request and response models: the API's contract, published as OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pdsno.approval.classifier import config_line_problem

Identifier = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
Region = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")


def _one_statement(line: str) -> str:
    problem = config_line_problem(line)
    if problem is not None:
        raise ValueError(problem)
    return line


# One configuration statement: the classifier rates what the device will read,
# so a line break or another control character inside a line is refused (422,
# located at the line's index), never passed on to be read as a second statement.
ConfigLine = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_one_statement)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str


class HealthOut(BaseModel):
    status: Literal["healthy", "unhealthy"]
    timestamp: datetime
    version: str
    controller_id: str | None
    controller_type: str


class DeviceIn(Strict):
    device_id: str = Identifier
    name: str = Field(min_length=1, max_length=128)
    region: str = Region
    status: Literal["active", "maintenance", "retired"] = "active"
    management_address: str | None = Field(default=None, max_length=255)
    vendor: str | None = Field(default=None, max_length=64)
    role: str | None = Field(default=None, max_length=64)


class DeviceUpdate(Strict):
    version: int = Field(ge=1, description="The version you read; a newer one means 409")
    name: str | None = Field(default=None, min_length=1, max_length=128)
    status: Literal["active", "maintenance", "retired"] | None = None
    management_address: str | None = Field(default=None, max_length=255)
    vendor: str | None = Field(default=None, max_length=64)
    role: str | None = Field(default=None, max_length=64)


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
    created_at: datetime
    updated_at: datetime
    version: int


class ProposalIn(Strict):
    device_id: str = Identifier
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
    created_at: datetime
    expires_at: datetime
    updated_at: datetime
    version: int


class DecisionIn(Strict):
    reason: str | None = Field(default=None, max_length=1000)


class ExecutionTokenIn(Strict):
    token_id: str
    proposal_id: str
    device_id: str
    config_hash: str
    issuer_id: str
    issued_at: str
    expires_at: str
    signature: str


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
    created_at: datetime


class ChallengeIn(Strict):
    token: str = Field(min_length=10, max_length=200)
    controller_type: Literal["regional", "local"]
    region: str = Region
    name: str = Field(min_length=1, max_length=128)
    public_key: str = Field(min_length=40, max_length=64)
    url: str | None = Field(default=None, max_length=255)


class ChallengeOut(BaseModel):
    nonce: str
    expires_at: datetime


class RegisterIn(Strict):
    nonce: str = Field(min_length=64, max_length=64)
    signature: str = Field(min_length=40, max_length=128)


class RegisterOut(BaseModel):
    controller_id: str
    controller_type: str
    region: str | None
    parent_id: str
    credential: dict[str, Any]


class EnvelopeIn(Strict):
    message_type: str = Field(min_length=1, max_length=64)
    sender: str = Field(min_length=1, max_length=64)
    recipient: str | None = Field(default=None, max_length=64)
    timestamp: str = Field(max_length=64)
    nonce: str = Field(min_length=16, max_length=64)
    body: dict[str, Any]
    signature: str = Field(min_length=40, max_length=128)


class MessageOut(BaseModel):
    accepted: bool = True
    message_type: str


class PolicyIn(Strict):
    policy_id: str = Identifier
    body: dict[str, Any]


class PolicyOut(BaseModel):
    policy_id: str
    policy_version: int
    scope: str
    region: str | None
    issuer_id: str
    body: dict[str, Any]
    signature: str
    created_at: datetime
    acknowledged_by: list[str] = []


class EventOut(BaseModel):
    seq: int
    event_type: str
    actor: str
    subject: str | None
    region: str | None
    payload: dict[str, Any]
    created_at: datetime
    hash: str
