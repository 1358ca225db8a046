"""Execution tokens: an approval turned into a signed, single-use permission.

An approver controller issues a token that binds one proposal, one device and
the hash of the exact configuration it approved. Whoever executes the change
presents the token with the configuration it is about to apply; the token is
checked against the issuer's key in the `controllers` table and against the
row stored at issue time, and is consumed by a conditional UPDATE so that two
executors (or a replay) can never both use it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from pdsno.clock import as_utc, utcnow
from pdsno.errors import ConflictError, NotFoundError, ValidationRefusedError
from pdsno.nib.schema import config_proposals, controllers, execution_tokens
from pdsno.security.keys import SigningKey, verify_signature
from pdsno.security.keys import config_hash as hash_config

CLAIMS = (
    "token_id",
    "proposal_id",
    "device_id",
    "config_hash",
    "issuer_id",
    "issued_at",
    "expires_at",
)
ACTIVE = "active"


def issue(
    conn: Connection,
    *,
    proposal_id: str,
    device_id: str,
    config_hash: str,
    issuer_id: str,
    signer: SigningKey,
    ttl_seconds: int,
) -> dict[str, Any]:
    """Sign and store a token for `proposal_id`; a proposal gets one token only.

    Returns the claims plus `signature`: the token to hand to the executor.
    """
    if ttl_seconds <= 0:
        raise ValueError(f"an execution token needs a positive ttl, not {ttl_seconds}")
    _check_matches_proposal(conn, proposal_id, device_id, config_hash)
    issued_at = utcnow()
    expires_at = issued_at + timedelta(seconds=ttl_seconds)
    claims = {
        "token_id": str(uuid.uuid4()),
        "proposal_id": proposal_id,
        "device_id": device_id,
        "config_hash": config_hash,
        "issuer_id": issuer_id,
        "issued_at": issued_at.isoformat(),
        "expires_at": expires_at.isoformat(),
    }
    signature = signer.sign(claims)
    row = {**claims, "issued_at": issued_at, "expires_at": expires_at, "signature": signature}
    try:
        # A savepoint, so that a refused INSERT leaves the caller's
        # PostgreSQL transaction usable.
        with conn.begin_nested():
            conn.execute(insert(execution_tokens).values(**row))
    except IntegrityError as error:
        if _token_exists_for(conn, proposal_id):
            raise ConflictError(
                f"proposal {proposal_id} already has an execution token: "
                "a proposal is executed at most once"
            ) from None
        # The proposal and its device exist (checked above): the issuer does not.
        raise NotFoundError(
            f"cannot issue a token for proposal {proposal_id}: "
            f"issuer {issuer_id} is not a registered controller"
        ) from error
    return {**claims, "signature": signature}


def _check_matches_proposal(
    conn: Connection, proposal_id: str, device_id: str, config_hash: str
) -> None:
    """A token may only permit what was proposed: the proposal's device and exact config."""
    proposal = conn.execute(
        select(config_proposals.c.device_id, config_proposals.c.config_hash).where(
            config_proposals.c.proposal_id == proposal_id
        )
    ).one_or_none()
    if proposal is None:
        raise NotFoundError(f"proposal {proposal_id} is not in the NIB")
    if (proposal.device_id, proposal.config_hash) != (device_id, config_hash):
        raise ConflictError(
            f"proposal {proposal_id} is for device {proposal.device_id} with config hash "
            f"{proposal.config_hash}, not device {device_id} with {config_hash}: "
            "a token can only permit the proposed change"
        )


def _token_exists_for(conn: Connection, proposal_id: str) -> bool:
    query = select(execution_tokens.c.token_id).where(execution_tokens.c.proposal_id == proposal_id)
    return conn.execute(query).first() is not None


def verify_and_consume(
    conn: Connection,
    token: dict[str, Any],
    *,
    proposal_id: str,
    device_id: str,
    config_lines: list[str],
    allowed_issuers: set[str],
) -> dict[str, Any]:
    """Check `token` for applying `config_lines` of `proposal_id` to `device_id`, and use it up.

    Every claim the token binds is compared with what it is presented for:
    the proposal, the device and the configuration's hash. A token of another
    proposal with the same device and configuration is refused too, so the
    audit trail names the approval that really permitted the change.

    Raises ValidationRefusedError naming the first check that fails; a refused
    token is not consumed. Returns the claims. Runs in the caller's
    transaction, so the consumption commits with the change it permits.
    """
    claims = _claims_of(token)
    issuer_id = claims["issuer_id"]
    _check_issuer(conn, issuer_id, allowed_issuers, claims, token["signature"])
    stored = _stored_token(conn, claims, token["signature"])
    # What the token binds comes first: a token presented for another proposal,
    # device or configuration is refused as such, whether used or not.
    if claims["proposal_id"] != proposal_id:
        raise ValidationRefusedError(
            f"token {claims['token_id']} is for proposal {claims['proposal_id']}, not {proposal_id}"
        )
    if claims["device_id"] != device_id:
        raise ValidationRefusedError(f"token is for device {claims['device_id']}, not {device_id}")
    if hash_config(config_lines) != claims["config_hash"]:
        raise ValidationRefusedError(
            "the configuration differs from the approved one "
            f"(token {claims['token_id']}, proposal {claims['proposal_id']})"
        )
    now = utcnow()
    if stored.used_at is not None:
        used = as_utc(stored.used_at).isoformat(timespec="seconds")
        raise ValidationRefusedError(f"token {claims['token_id']} was already used at {used}")
    if now >= as_utc(stored.expires_at):
        expired = as_utc(stored.expires_at).isoformat(timespec="seconds")
        raise ValidationRefusedError(f"token {claims['token_id']} expired at {expired}")
    _consume(conn, claims["token_id"], now)
    return claims


def _claims_of(token: Any) -> dict[str, Any]:
    """The claims of a well-formed token: exactly the signed fields, all strings."""
    if not isinstance(token, dict):
        raise ValidationRefusedError("malformed token: not a JSON object")
    expected = {*CLAIMS, "signature"}
    missing = sorted(expected - token.keys())
    unexpected = sorted(str(key) for key in token.keys() - expected)
    if missing or unexpected:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unexpected {', '.join(unexpected)}"] if unexpected else []
        raise ValidationRefusedError(f"malformed token: {'; '.join(problems)}")
    not_text = sorted(key for key in expected if not isinstance(token[key], str))
    if not_text:
        raise ValidationRefusedError(f"malformed token: {', '.join(not_text)} must be strings")
    return {key: token[key] for key in CLAIMS}


def _check_issuer(
    conn: Connection,
    issuer_id: str,
    allowed_issuers: set[str],
    claims: dict[str, Any],
    signature: str,
) -> None:
    """The issuer may approve, is a registered active controller, and signed the claims."""
    if issuer_id not in allowed_issuers:
        allowed = ", ".join(sorted(allowed_issuers)) or "none"
        raise ValidationRefusedError(
            f"token issuer {issuer_id} is not allowed to approve this change (allowed: {allowed})"
        )
    issuer = conn.execute(
        select(controllers.c.public_key, controllers.c.status).where(
            controllers.c.controller_id == issuer_id
        )
    ).one_or_none()
    if issuer is None:
        raise ValidationRefusedError(f"token issuer {issuer_id} is not a registered controller")
    if issuer.status != ACTIVE:
        raise ValidationRefusedError(
            f"token issuer {issuer_id} is {issuer.status}, not {ACTIVE}: its tokens are void"
        )
    if not verify_signature(issuer.public_key, claims, signature):
        raise ValidationRefusedError(
            f"bad signature: token {claims['token_id']} was not signed by {issuer_id}"
        )


def _stored_token(conn: Connection, claims: dict[str, Any], signature: str) -> Any:
    """The NIB's row for the token, which must match what is presented field by field."""
    row = conn.execute(
        select(execution_tokens).where(execution_tokens.c.token_id == claims["token_id"])
    ).one_or_none()
    if row is None:
        raise ValidationRefusedError(f"token {claims['token_id']} was never issued in the NIB")
    differing = [
        name
        for name in ("proposal_id", "device_id", "config_hash", "issuer_id")
        if getattr(row, name) != claims[name]
    ]
    differing += [
        name
        for name in ("issued_at", "expires_at")
        if _parse_time(claims[name]) != as_utc(getattr(row, name))
    ]
    if row.signature != signature:
        differing.append("signature")
    if differing:
        raise ValidationRefusedError(
            f"token {claims['token_id']} does not match the one issued "
            f"({', '.join(differing)} differ)"
        )
    return row


def _parse_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return as_utc(moment)


def _consume(conn: Connection, token_id: str, now: datetime) -> None:
    """Mark the token used, only if nobody did first: the database arbitrates replays."""
    result = conn.execute(
        update(execution_tokens)
        .where(execution_tokens.c.token_id == token_id, execution_tokens.c.used_at.is_(None))
        .values(used_at=now)
    )
    if result.rowcount != 1:
        raise ValidationRefusedError(f"token {token_id} was already used")
