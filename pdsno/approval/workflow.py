"""Config approval by sensitivity, across the three tiers.

    LC: submit ─ classify ─ LOW + policy ─────────────── approve ─ execute
                      └── review at the RC ─ classify, highest of both wins
                               ├─ LOW, or MEDIUM + policy ─ approve ─┐
                               ├─ MEDIUM: operator at the RC ────────┤ execution token
                               └─ HIGH: escalate; operator at the GC ┘ to the LC
    LC: verify token (issuer, device, exact config hash, unused) ─ lock device ─ execute

Each step commits its own change with its audit event and MQTT event, then
queues the message for the next controller (pdsno.messaging.dispatcher).
Message handlers are idempotent: a repeated message finds the proposal past
that step and does nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, select, update

from pdsno import audit
from pdsno.approval import tokens
from pdsno.approval.classifier import RuleClassifier, Sensitivity
from pdsno.approval.executor import ConfigExecutor
from pdsno.clock import as_utc, utcnow
from pdsno.config import ApprovalSettings
from pdsno.errors import ConflictError, NotFoundError, PermissionDeniedError
from pdsno.events import outbox
from pdsno.identity.state import Identity
from pdsno.nib import devices, locks
from pdsno.nib.schema import approvals, config_proposals, controllers
from pdsno.security.keys import SigningKey, config_hash

log = logging.getLogger("pdsno.approval")

OPEN_STATES = ("pending", "awaiting_regional", "awaiting_global", "approved")
DEVICE_LOCK_TTL_SECONDS = 300


class Messenger(Protocol):
    def send(self, recipient_id: str, message_type: str, body: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Decider:
    """Who decided: an operator (by name) or this controller's own policy."""

    name: str
    kind: str  # "operator" or "policy"


class ApprovalWorkflow:
    def __init__(
        self,
        *,
        engine: Engine,
        identity: Identity,
        signer: SigningKey,
        settings: ApprovalSettings,
        classifier: RuleClassifier,
        executor: ConfigExecutor,
        messenger: Messenger,
        on_device_changed: Callable[[str], None] = lambda _device_id: None,
    ) -> None:
        self._engine = engine
        self._me = identity
        self._signer = signer
        self._settings = settings
        self._classifier = classifier
        self._executor = executor
        self._messenger = messenger
        self._on_device_changed = on_device_changed
        # A pdsno.observability.metrics.Metrics, set by the runtime when it serves one.
        self.metrics: Any = None

    # ---- reading -------------------------------------------------------
    def get(self, proposal_id: str) -> dict[str, Any]:
        with self._engine.connect() as conn:
            return _load(conn, proposal_id)

    def list(
        self, *, status: str | None = None, region: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        query = select(config_proposals).order_by(config_proposals.c.created_at.desc())
        if status:
            query = query.where(config_proposals.c.status == status)
        if region:
            query = query.where(config_proposals.c.region == region)
        with self._engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query.limit(limit))]

    # ---- local controller ---------------------------------------------
    def submit(self, *, device_id: str, config_lines: list[str], submitted_by: str) -> dict:
        """A new proposal at this LC; LOW ones may be approved here by policy."""
        self._require_type("local", "proposals are submitted to a local controller")
        classification = self._classifier.classify(config_lines)
        proposal_id = str(uuid.uuid4())
        now = utcnow()
        with self._engine.begin() as conn:
            device = devices.get(conn, device_id)
            if device["region"] != self._me.region:
                raise PermissionDeniedError(
                    f"device {device_id} is in region {device['region']}, "
                    f"this controller serves {self._me.region}"
                )
            conn.execute(
                config_proposals.insert().values(
                    proposal_id=proposal_id,
                    device_id=device_id,
                    origin_id=self._me.controller_id,
                    region=self._me.region,
                    config_lines=config_lines,
                    config_hash=config_hash(config_lines),
                    submitted_by=submitted_by,
                    sensitivity_local=classification.sensitivity.value,
                    sensitivity=classification.sensitivity.value,
                    status="pending",
                    created_at=now,
                    expires_at=now + timedelta(seconds=self._settings.proposal_ttl_seconds),
                    updated_at=now,
                    version=1,
                )
            )
            self._record(
                conn,
                "proposal.submitted",
                proposal_id,
                {
                    "device_id": device_id,
                    "submitted_by": submitted_by,
                    "sensitivity": classification.sensitivity.value,
                    "matched_rules": classification.matched_rules,
                },
            )
            auto = classification.sensitivity is Sensitivity.LOW and self._settings.auto_approve_low
            token = None
            if auto:
                token = self._approve(conn, proposal_id, Decider("local-policy", "policy"), None)
        if token is not None:
            self.execute(proposal_id, token)
        else:
            self._messenger.send(
                self._me.parent_id, "proposal.review", {"proposal_id": proposal_id}
            )
        return self.get(proposal_id)

    def execute(
        self, proposal_id: str, token: dict[str, Any], config_lines: list[str] | None = None
    ):
        """Apply an approved proposal, if `token` binds this device and this exact config."""
        self._require_type("local", "only a local controller executes configurations")
        with self._engine.begin() as conn:
            proposal = _load(conn, proposal_id)
            lines = proposal["config_lines"] if config_lines is None else config_lines
            tokens.verify_and_consume(
                conn,
                token,
                proposal_id=proposal_id,
                device_id=proposal["device_id"],
                config_lines=lines,
                allowed_issuers=self._allowed_issuers(conn, proposal["sensitivity"]),
            )
            if config_hash(lines) != proposal["config_hash"]:
                raise PermissionDeniedError("the configuration differs from the approved one")
            if proposal["status"] != "approved":
                raise ConflictError(f"proposal {proposal_id} is {proposal['status']}, not approved")
            self._check_not_expired(proposal)
            lock_name = f"device:{proposal['device_id']}"
            locks.acquire(conn, lock_name, proposal_id, DEVICE_LOCK_TTL_SECONDS)
            result = self._executor.apply(
                conn,
                device_id=proposal["device_id"],
                config_lines=lines,
                proposal_id=proposal_id,
                applied_by=self._me.controller_id,
            )
            self._set_status(conn, proposal, "executed")
            self._record(
                conn,
                "proposal.executed",
                proposal_id,
                {
                    "device_id": proposal["device_id"],
                    "config_version": result.config_version,
                    "executor": self._executor.name,
                    "token_issuer": token["issuer_id"],
                },
            )
            locks.release(conn, lock_name, proposal_id)
        self._on_device_changed(proposal["device_id"])
        return self.get(proposal_id)

    def execute_delivered(self, proposal_id: str, token: dict[str, Any]) -> None:
        """Execute on an approval message; a repeated delivery finds it done already."""
        if self.get(proposal_id)["status"] != "executed":
            self.execute(proposal_id, token)

    def _allowed_issuers(self, conn: Connection, sensitivity: str) -> set[str]:
        """Who may approve at each tier: this LC, its RC, or the GC."""
        if sensitivity == Sensitivity.LOW:
            return {self._me.controller_id, self._me.parent_id}
        if sensitivity == Sensitivity.MEDIUM:
            return {self._me.parent_id}
        global_ids = conn.execute(
            select(controllers.c.controller_id)
            .where(controllers.c.controller_type == "global")
            .where(controllers.c.status == "active")
        ).scalars()
        return set(global_ids)

    # ---- regional controller ------------------------------------------
    def review(self, proposal_id: str, *, from_controller: str) -> None:
        """Classify again at the RC; approve, wait for an operator, or escalate."""
        self._require_type("regional", "proposals are reviewed by a regional controller")
        send: tuple[str, str, dict] | None = None
        with self._engine.begin() as conn:
            proposal = _load(conn, proposal_id)
            if proposal["origin_id"] != from_controller or proposal["region"] != self._me.region:
                raise PermissionDeniedError(
                    f"{from_controller} cannot submit proposal {proposal_id} for review here"
                )
            if proposal["status"] != "pending":
                return  # reviewed already
            self._check_not_expired(proposal)
            regional = self._classifier.classify(proposal["config_lines"])
            final = Sensitivity.highest(
                Sensitivity(proposal["sensitivity_local"]), regional.sensitivity
            )
            proposal = self._update(
                conn,
                proposal,
                sensitivity_regional=regional.sensitivity.value,
                sensitivity=final.value,
            )
            self._record(
                conn,
                "proposal.classified",
                proposal_id,
                {
                    "local": proposal["sensitivity_local"],
                    "regional": regional.sensitivity.value,
                    "final": final.value,
                    "matched_rules": regional.matched_rules,
                },
            )
            if final is Sensitivity.HIGH:
                proposal = self._set_status(conn, proposal, "awaiting_global")
                root = self._global_controller_id(conn)
                send = (root, "proposal.escalate", {"proposal_id": proposal_id})
            elif final is Sensitivity.LOW or self._settings.auto_approve_medium:
                token = self._approve(conn, proposal_id, Decider("regional-policy", "policy"), None)
                send = (
                    proposal["origin_id"],
                    "proposal.approved",
                    {"proposal_id": proposal_id, "token": token},
                )
            else:
                self._set_status(conn, proposal, "awaiting_regional")
        if send is not None:
            self._messenger.send(*send)

    # ---- global controller --------------------------------------------
    def escalated(self, proposal_id: str, *, from_controller: str) -> None:
        self._require_type("global", "only the global controller takes escalations")
        with self._engine.begin() as conn:
            proposal = _load(conn, proposal_id)
            if proposal["status"] != "awaiting_global":
                raise ConflictError(f"proposal {proposal_id} is {proposal['status']}")
            self._record(conn, "proposal.escalated", proposal_id, {"from": from_controller})

    # ---- operators (RC for MEDIUM, GC for HIGH) -----------------------
    def decide(
        self,
        proposal_id: str,
        *,
        approve: bool,
        operator: str,
        reason: str | None,
        operator_region: str | None = None,
    ) -> dict[str, Any]:
        expected = {"regional": "awaiting_regional", "global": "awaiting_global"}.get(
            self._me.controller_type
        )
        if expected is None:
            raise PermissionDeniedError("operators decide at the regional or global controller")
        token = None
        try:
            token, proposal = self._decide(
                proposal_id, expected, approve, operator, reason, operator_region
            )
        except _DutiesNotSeparatedError as refused:
            # Recorded in a transaction of its own: the decision's rolled back.
            with self._engine.begin() as conn:
                audit.append(
                    conn,
                    "proposal.decision_refused",
                    actor=operator,
                    subject=proposal_id,
                    region=self._me.region,
                    payload={"reason": str(refused), "rule": "separation_of_duties"},
                )
            raise PermissionDeniedError(str(refused)) from None
        if token is not None:
            self._messenger.send(
                proposal["origin_id"],
                "proposal.approved",
                {"proposal_id": proposal_id, "token": token},
            )
        return self.get(proposal_id)

    def _decide(
        self,
        proposal_id: str,
        expected: str,
        approve: bool,
        operator: str,
        reason: str | None,
        operator_region: str | None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        token = None
        with self._engine.begin() as conn:
            proposal = _load(conn, proposal_id)
            if proposal["status"] != expected:
                raise ConflictError(
                    f"proposal {proposal_id} is {proposal['status']}; this controller decides "
                    f"proposals that are {expected}"
                )
            if self._me.controller_type == "regional" and proposal["region"] != self._me.region:
                raise PermissionDeniedError(f"proposal {proposal_id} is not in this region")
            if operator_region is not None and operator_region != proposal["region"]:
                raise PermissionDeniedError(
                    f"{operator} may decide for region {operator_region} only"
                )
            self._check_not_expired(proposal)
            if approve:
                refusal = self._separation_of_duties(proposal, operator)
                if refusal is not None:
                    raise _DutiesNotSeparatedError(refusal)
            decider = Decider(operator, "operator")
            if approve:
                token = self._approve(conn, proposal_id, decider, reason)
            else:
                self._reject(conn, proposal, decider, reason)
        return token, proposal

    def _separation_of_duties(self, proposal: dict[str, Any], operator: str) -> str | None:
        """Why `operator` may not approve `proposal`, or None: nobody approves their own
        MEDIUM or HIGH change while approval.separation_of_duties is on."""
        if not self._settings.separation_of_duties:
            return None
        if proposal["sensitivity"] == Sensitivity.LOW:
            return None
        if proposal.get("submitted_by") != operator:
            return None
        return (
            f"separation of duties: {operator} submitted proposal {proposal['proposal_id']} "
            f"({proposal['sensitivity']}) and may not approve it; another approver must "
            "(approval.separation_of_duties)"
        )

    # ---- housekeeping --------------------------------------------------
    def expire_stale(self) -> int:
        """Mark open proposals past their expiry as expired; returns how many."""
        now = utcnow()
        with self._engine.begin() as conn:
            stale = conn.execute(
                select(config_proposals)
                .where(config_proposals.c.status.in_(OPEN_STATES))
                .where(config_proposals.c.expires_at <= now)
                .where(config_proposals.c.region == self._me.region if self._me.region else True)
            ).all()
            for row in stale:
                self._set_status(conn, dict(row._mapping), "expired")
                self._record(conn, "proposal.expired", row.proposal_id, {})
        return len(stale)

    # ---- internals -----------------------------------------------------
    def _approve(
        self, conn: Connection, proposal_id: str, decider: Decider, reason: str | None
    ) -> dict[str, Any]:
        proposal = _load(conn, proposal_id)
        self._insert_decision(conn, proposal_id, "approve", decider, reason)
        self._update(
            conn, proposal, status="approved", decided_by=decider.name, decision_reason=reason
        )
        token = tokens.issue(
            conn,
            proposal_id=proposal_id,
            device_id=proposal["device_id"],
            config_hash=proposal["config_hash"],
            issuer_id=self._me.controller_id,
            signer=self._signer,
            ttl_seconds=self._settings.execution_token_ttl_seconds,
        )
        self._record(
            conn,
            "proposal.approved",
            proposal_id,
            {
                "decided_by": decider.name,
                "decider_kind": decider.kind,
                "sensitivity": proposal["sensitivity"],
                "token_id": token["token_id"],
            },
        )
        return token

    def _reject(self, conn: Connection, proposal: dict, decider: Decider, reason: str | None):
        self._insert_decision(conn, proposal["proposal_id"], "reject", decider, reason)
        self._update(
            conn, proposal, status="rejected", decided_by=decider.name, decision_reason=reason
        )
        self._record(
            conn,
            "proposal.rejected",
            proposal["proposal_id"],
            {
                "decided_by": decider.name,
                "reason": reason,
            },
        )

    def _insert_decision(self, conn, proposal_id, decision, decider: Decider, reason) -> None:
        conn.execute(
            approvals.insert().values(
                proposal_id=proposal_id,
                decision=decision,
                decided_by=decider.name,
                decider_kind=decider.kind,
                controller_id=self._me.controller_id,
                reason=reason,
                created_at=utcnow(),
            )
        )

    def _update(self, conn: Connection, proposal: dict, **changes: Any) -> dict[str, Any]:
        result = conn.execute(
            update(config_proposals)
            .where(config_proposals.c.proposal_id == proposal["proposal_id"])
            .where(config_proposals.c.version == proposal["version"])
            .values(**changes, updated_at=utcnow(), version=proposal["version"] + 1)
        )
        if result.rowcount != 1:
            raise ConflictError(f"proposal {proposal['proposal_id']} changed meanwhile: retry")
        return _load(conn, proposal["proposal_id"])

    def _set_status(self, conn: Connection, proposal: dict, status: str) -> dict[str, Any]:
        return self._update(conn, proposal, status=status)

    def _record(self, conn: Connection, event_type: str, proposal_id: str, payload: dict) -> None:
        audit.append(
            conn,
            event_type,
            actor=self._me.controller_id,
            subject=proposal_id,
            region=self._me.region,
            payload=payload,
        )
        outbox.enqueue(
            conn,
            event_type,
            {"proposal_id": proposal_id, **payload},
            region=self._me.region,
            sender_id=self._me.controller_id,
            signer=self._signer,
        )

    def _check_not_expired(self, proposal: dict) -> None:
        if as_utc(proposal["expires_at"]) <= utcnow():
            raise ConflictError(f"proposal {proposal['proposal_id']} expired")

    def _require_type(self, controller_type: str, message: str) -> None:
        if self._me.controller_type != controller_type:
            raise PermissionDeniedError(message)

    @staticmethod
    def _global_controller_id(conn: Connection) -> str:
        root = conn.execute(
            select(controllers.c.controller_id)
            .where(controllers.c.controller_type == "global")
            .where(controllers.c.status == "active")
        ).scalar_one_or_none()
        if root is None:
            raise NotFoundError("no active global controller in the NIB")
        return root


class _DutiesNotSeparatedError(Exception):
    """Raised inside a decision's transaction, so that nothing of it commits."""


def _load(conn: Connection, proposal_id: str) -> dict[str, Any]:
    row = conn.execute(
        select(config_proposals).where(config_proposals.c.proposal_id == proposal_id)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"no proposal {proposal_id}")
    return dict(row._mapping)
