"""Execution tokens: signed by the approver, bound to one device and config, used once."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from nib_rows import add_controller, add_device, add_proposal
from sqlalchemy import Engine, select

from pdsno.approval import tokens
from pdsno.approval.tokens import issue, verify_and_consume
from pdsno.clock import utcnow
from pdsno.errors import ConflictError, NotFoundError, ValidationRefusedError
from pdsno.nib.schema import execution_tokens
from pdsno.security.keys import SigningKey, config_hash

APPROVER = "global-1"
DEVICE = "edge-7"
CONFIG = ["interface Gi0/1", " description uplink to core"]


@pytest.fixture
def approver_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def nib(nib_engine: Engine, approver_key: SigningKey) -> Engine:
    """A NIB with the approver controller and two devices."""
    with nib_engine.begin() as conn:
        add_controller(conn, APPROVER, approver_key)
        add_device(conn, DEVICE)
        add_device(conn, "core-1")
    return nib_engine


def issue_token(
    engine: Engine, signer: SigningKey, *, ttl_seconds: int = 600, config: list[str] = CONFIG
) -> dict[str, Any]:
    with engine.begin() as conn:
        proposal_id = add_proposal(conn, DEVICE, config, origin_id=APPROVER, sensitivity="low")
        return issue(
            conn,
            proposal_id=proposal_id,
            device_id=DEVICE,
            config_hash=config_hash(config),
            issuer_id=APPROVER,
            signer=signer,
            ttl_seconds=ttl_seconds,
        )


def consume(
    engine: Engine,
    token: dict[str, Any],
    *,
    device_id: str = DEVICE,
    config_lines: list[str] = CONFIG,
    allowed_issuers: frozenset[str] = frozenset({APPROVER}),
    proposal_id: str | None = None,
) -> dict[str, Any]:
    with engine.begin() as conn:
        return verify_and_consume(
            conn,
            token,
            proposal_id=proposal_id or _claimed_proposal(token),
            device_id=device_id,
            config_lines=config_lines,
            allowed_issuers=set(allowed_issuers),
        )


def _claimed_proposal(token: Any) -> str:
    """The proposal the token names: the one it is presented for, unless a test says."""
    return str(token.get("proposal_id", "")) if isinstance(token, dict) else ""


def used_at(engine: Engine, token_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(execution_tokens.c.used_at).where(execution_tokens.c.token_id == token_id)
        ).scalar_one()


def test_issue_signs_and_stores_the_claims(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    assert set(token) == {*tokens.CLAIMS, "signature"}
    assert token["config_hash"] == config_hash(CONFIG)
    assert token["issuer_id"] == APPROVER and token["device_id"] == DEVICE
    assert token["issued_at"].endswith("+00:00") and token["expires_at"] > token["issued_at"]
    with nib.connect() as conn:
        row = conn.execute(
            select(execution_tokens).where(execution_tokens.c.token_id == token["token_id"])
        ).one()
    assert row.signature == token["signature"] and row.used_at is None


def test_a_valid_token_is_used_once_and_then_refused(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    claims = consume(nib, token)
    assert claims["proposal_id"] == token["proposal_id"]
    assert used_at(nib, token["token_id"]) is not None
    with pytest.raises(ValidationRefusedError, match="already used"):
        consume(nib, token)


def test_one_token_per_proposal(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    with nib.begin() as conn:
        with pytest.raises(ConflictError, match="already has an execution token"):
            issue(
                conn,
                proposal_id=token["proposal_id"],
                device_id=DEVICE,
                config_hash=token["config_hash"],
                issuer_id=APPROVER,
                signer=approver_key,
                ttl_seconds=600,
            )
        # The refusal did not spoil the caller's transaction (PostgreSQL).
        assert conn.execute(select(execution_tokens.c.token_id)).scalars().all() == [
            token["token_id"]
        ]


def test_a_token_can_only_permit_the_proposed_change(nib: Engine, approver_key: SigningKey) -> None:
    with nib.begin() as conn:
        proposal_id = add_proposal(conn, DEVICE, CONFIG, origin_id=APPROVER, sensitivity="low")
    attempts = [
        ({"device_id": "core-1"}, ConflictError, "is for device edge-7"),
        ({"config_hash": config_hash(["reload"])}, ConflictError, "only permit the proposed"),
        ({"proposal_id": str(uuid.uuid4())}, NotFoundError, "is not in the NIB"),
        ({"issuer_id": "ghost-9"}, NotFoundError, "ghost-9 is not a registered controller"),
    ]
    for change, error, reason in attempts:
        arguments = {
            "proposal_id": proposal_id,
            "device_id": DEVICE,
            "config_hash": config_hash(CONFIG),
            "issuer_id": APPROVER,
            **change,
        }
        with pytest.raises(error, match=reason), nib.begin() as conn:
            issue(conn, **arguments, signer=approver_key, ttl_seconds=600)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", "core-1"),
        ("config_hash", config_hash(["reload"])),
        ("expires_at", "2999-01-01T00:00:00+00:00"),
        ("proposal_id", str(uuid.uuid4())),
    ],
)
def test_tampered_claims_are_refused(
    nib: Engine, approver_key: SigningKey, field: str, value: str
) -> None:
    token = {**issue_token(nib, approver_key), field: value}
    device = token["device_id"]
    with pytest.raises(ValidationRefusedError, match="bad signature"):
        consume(nib, token, device_id=device)
    assert used_at(nib, token["token_id"]) is None


def test_a_token_signed_by_another_key_is_refused(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    claims = {key: token[key] for key in tokens.CLAIMS}
    forged = {**claims, "signature": SigningKey.generate().sign(claims)}
    with pytest.raises(ValidationRefusedError, match=f"bad signature.*not signed by {APPROVER}"):
        consume(nib, forged)


def test_wrong_device_is_refused(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    with pytest.raises(ValidationRefusedError, match=f"token is for device {DEVICE}, not core-1"):
        consume(nib, token, device_id="core-1")
    assert used_at(nib, token["token_id"]) is None  # a refused token stays usable
    consume(nib, token)


def test_a_different_configuration_is_refused(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    with pytest.raises(ValidationRefusedError, match="configuration differs from the approved"):
        consume(nib, token, config_lines=[*CONFIG, " shutdown"])
    with pytest.raises(ValidationRefusedError, match="configuration differs"):
        consume(nib, token, config_lines=list(reversed(CONFIG)))


def test_an_expired_token_is_refused(
    nib: Engine, approver_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = issue_token(nib, approver_key, ttl_seconds=60)
    later = utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(tokens, "utcnow", lambda: later)
    with pytest.raises(ValidationRefusedError, match="expired at"):
        consume(nib, token)


def test_an_issuer_not_allowed_is_refused(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    with pytest.raises(ValidationRefusedError, match=f"issuer {APPROVER} is not allowed"):
        consume(nib, token, allowed_issuers=frozenset({"regional-1"}))


def test_an_unknown_issuer_is_refused(nib: Engine) -> None:
    stranger = SigningKey.generate()
    claims = {
        "token_id": str(uuid.uuid4()),
        "proposal_id": str(uuid.uuid4()),
        "device_id": DEVICE,
        "config_hash": config_hash(CONFIG),
        "issuer_id": "ghost-9",
        "issued_at": utcnow().isoformat(),
        "expires_at": (utcnow() + timedelta(minutes=5)).isoformat(),
    }
    token = {**claims, "signature": stranger.sign(claims)}
    with pytest.raises(ValidationRefusedError, match="ghost-9 is not a registered controller"):
        consume(nib, token, allowed_issuers=frozenset({"ghost-9"}))


def test_an_inactive_issuer_is_refused(nib: Engine) -> None:
    revoked_key = SigningKey.generate()
    with nib.begin() as conn:
        add_controller(conn, "global-old", revoked_key, status="revoked")
    claims = {
        "token_id": str(uuid.uuid4()),
        "proposal_id": str(uuid.uuid4()),
        "device_id": DEVICE,
        "config_hash": config_hash(CONFIG),
        "issuer_id": "global-old",
        "issued_at": utcnow().isoformat(),
        "expires_at": (utcnow() + timedelta(minutes=5)).isoformat(),
    }
    token = {**claims, "signature": revoked_key.sign(claims)}
    with pytest.raises(ValidationRefusedError, match="global-old is revoked"):
        consume(nib, token, allowed_issuers=frozenset({"global-old"}))


def test_a_signed_token_never_issued_in_the_nib_is_refused(
    nib: Engine, approver_key: SigningKey
) -> None:
    claims = {
        "token_id": str(uuid.uuid4()),
        "proposal_id": str(uuid.uuid4()),
        "device_id": DEVICE,
        "config_hash": config_hash(CONFIG),
        "issuer_id": APPROVER,
        "issued_at": utcnow().isoformat(),
        "expires_at": (utcnow() + timedelta(minutes=5)).isoformat(),
    }
    token = {**claims, "signature": approver_key.sign(claims)}
    with pytest.raises(ValidationRefusedError, match="never issued in the NIB"):
        consume(nib, token)


def test_a_signed_token_differing_from_the_stored_one_is_refused(
    nib: Engine, approver_key: SigningKey
) -> None:
    token = issue_token(nib, approver_key)
    claims = {key: token[key] for key in tokens.CLAIMS}
    claims["expires_at"] = (utcnow() + timedelta(days=30)).isoformat()
    extended = {**claims, "signature": approver_key.sign(claims)}
    with pytest.raises(ValidationRefusedError, match=r"does not match the one issued \(expires_at"):
        consume(nib, extended)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda token: "not a token", "not a JSON object"),
        (lambda token: {k: v for k, v in token.items() if k != "signature"}, "missing signature"),
        (lambda token: {**token, "scope": "all"}, "unexpected scope"),
        (lambda token: {**token, "device_id": 7}, "device_id must be strings"),
    ],
)
def test_malformed_tokens_are_refused(
    nib: Engine, approver_key: SigningKey, mangle: Any, reason: str
) -> None:
    token = issue_token(nib, approver_key)
    with pytest.raises(ValidationRefusedError, match=f"malformed token: .*{reason}"):
        consume(nib, mangle(token))


def test_a_consumption_rolled_back_with_its_change_leaves_the_token_usable(
    nib: Engine, approver_key: SigningKey
) -> None:
    token = issue_token(nib, approver_key)
    with pytest.raises(RuntimeError), nib.begin() as conn:
        verify_and_consume(
            conn,
            token,
            proposal_id=token["proposal_id"],
            device_id=DEVICE,
            config_lines=CONFIG,
            allowed_issuers={APPROVER},
        )
        raise RuntimeError("the change failed after the token was checked")
    assert used_at(nib, token["token_id"]) is None
    consume(nib, token)


def test_concurrent_replays_only_one_is_accepted(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    contenders = 6
    start = threading.Barrier(contenders)
    accepted: list[int] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def replay(number: int) -> None:
        try:
            start.wait(timeout=30)
            with nib.begin() as conn:
                verify_and_consume(
                    conn,
                    token,
                    proposal_id=token["proposal_id"],
                    device_id=DEVICE,
                    config_lines=CONFIG,
                    allowed_issuers={APPROVER},
                )
                accepted.append(number)
                time.sleep(0.2)  # stay uncommitted while the others try
        except ValidationRefusedError as error:
            refused.append(str(error))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=replay, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(accepted) == 1
    assert len(refused) == contenders - 1
    assert all("already used" in reason for reason in refused)


def test_a_token_is_refused_for_another_proposal(nib: Engine, approver_key: SigningKey) -> None:
    token = issue_token(nib, approver_key)
    with pytest.raises(ValidationRefusedError, match="is for proposal"):
        consume(nib, token, proposal_id=str(uuid.uuid4()))
    assert used_at(nib, token["token_id"]) is None
