"""The approval workflow in one process: expiry, and decisions refused out of turn."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from pdsno.approval.classifier import RuleClassifier
from pdsno.approval.executor import load_executor
from pdsno.approval.workflow import ApprovalWorkflow
from pdsno.clock import as_utc, utcnow
from pdsno.config import ApprovalSettings
from pdsno.errors import PermissionDeniedError, ValidationRefusedError
from pdsno.identity.state import Identity
from pdsno.nib import devices
from pdsno.nib.schema import config_proposals, controllers, execution_tokens
from pdsno.security.keys import SigningKey


class RecordingMessenger:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict]] = []

    def send(self, recipient_id: str, message_type: str, body: dict) -> None:
        self.sent.append((recipient_id, message_type, body))


def register(engine, controller_id, controller_type, parent_id, key):
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            controllers.insert().values(
                controller_id=controller_id,
                controller_type=controller_type,
                region="r1",
                name=controller_id,
                public_key=key.public_key_b64,
                parent_id=parent_id,
                status="active",
                created_at=now,
                updated_at=now,
                version=1,
            )
        )
    return Identity(controller_id, controller_type, "r1", parent_id, {})


@pytest.fixture
def local(nib_engine):
    register(nib_engine, "gc-1", "global", None, SigningKey.generate())
    register(nib_engine, "rc-r1-2", "regional", "gc-1", SigningKey.generate())
    key = SigningKey.generate()
    identity = register(nib_engine, "lc-r1-3", "local", "rc-r1-2", key)
    with nib_engine.begin() as conn:
        devices.create(conn, device_id="sw-1", name="switch 1", region="r1", status="active")
    messenger = RecordingMessenger()
    workflow = ApprovalWorkflow(
        engine=nib_engine,
        identity=identity,
        signer=key,
        settings=ApprovalSettings(),
        classifier=RuleClassifier.default(),
        executor=load_executor("nib-recorder"),
        messenger=messenger,
    )
    return workflow, messenger


def test_low_change_is_approved_and_executed_at_the_lc_by_policy(local):
    workflow, messenger = local
    proposal = workflow.submit(
        device_id="sw-1", config_lines=["logging host 192.0.2.9"], submitted_by="ops"
    )
    assert proposal["sensitivity"] == "low"
    assert proposal["status"] == "executed"
    assert messenger.sent == []


def test_medium_change_goes_to_the_rc_for_review(local):
    workflow, messenger = local
    proposal = workflow.submit(device_id="sw-1", config_lines=["vlan 20"], submitted_by="ops")
    assert proposal["status"] == "pending"
    assert messenger.sent == [
        ("rc-r1-2", "proposal.review", {"proposal_id": proposal["proposal_id"]})
    ]


def test_device_of_another_region_is_refused(local, nib_engine):
    workflow, _ = local
    with nib_engine.begin() as conn:
        devices.create(conn, device_id="sw-9", name="far", region="r9", status="active")
    with pytest.raises(PermissionDeniedError, match="region r9"):
        workflow.submit(device_id="sw-9", config_lines=["vlan 2"], submitted_by="ops")


def test_stale_proposals_expire(local, nib_engine):
    workflow, _ = local
    pid = workflow.submit(device_id="sw-1", config_lines=["vlan 30"], submitted_by="ops")[
        "proposal_id"
    ]
    with nib_engine.begin() as conn:
        conn.execute(
            update(config_proposals)
            .where(config_proposals.c.proposal_id == pid)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert workflow.expire_stale() == 1
    assert workflow.get(pid)["status"] == "expired"
    assert workflow.expire_stale() == 0


def test_a_local_controller_takes_no_operator_decision(local):
    workflow, _ = local
    pid = workflow.submit(device_id="sw-1", config_lines=["vlan 40"], submitted_by="ops")[
        "proposal_id"
    ]
    with pytest.raises(PermissionDeniedError):
        workflow.decide(pid, approve=True, operator="x", reason=None)


def test_a_proposal_is_executed_at_most_once(local, nib_engine):
    workflow, _ = local
    lines = ["logging trap 4"]
    pid = workflow.submit(device_id="sw-1", config_lines=lines, submitted_by="ops")["proposal_id"]
    assert workflow.get(pid)["status"] == "executed"
    with nib_engine.connect() as conn:
        token = dict(
            conn.execute(select(execution_tokens).where(execution_tokens.c.proposal_id == pid))
            .one()
            ._mapping
        )
    presented = {
        k: as_utc(v).isoformat() if isinstance(v, datetime) else v
        for k, v in token.items()
        if k != "used_at"
    }
    with pytest.raises(ValidationRefusedError, match="already used"):
        workflow.execute(pid, presented, config_lines=lines)
    with nib_engine.connect() as conn:
        assert devices.get(conn, "sw-1")["config_version"] == 1


def test_controller_start_warns_when_the_master_key_is_due_for_rotation(nib_engine, caplog):
    from pdsno.nib.schema import master_keys
    from pdsno.runtime import _warn_if_master_key_rotation_due

    with nib_engine.begin() as conn:
        conn.execute(
            master_keys.insert().values(
                key_version=1,
                fingerprint="f" * 64,
                created_at=utcnow() - timedelta(days=91),
            )
        )
    with caplog.at_level("WARNING", logger="pdsno.runtime"):
        _warn_if_master_key_rotation_due(nib_engine, 90)
    assert "pdsno secrets rotate" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pdsno.runtime"):
        _warn_if_master_key_rotation_due(nib_engine, 120)
    assert caplog.text == ""
