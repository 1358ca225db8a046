"""Joining the hierarchy: bootstrap token, challenge, signed answer, allocated ID.

A regional controller joins the global one, a local controller its regional
one, in two requests:

1. `open_challenge`: the child presents a bootstrap token and the public key
   it will use; the parent checks the token (known, unused, unexpired, for
   this controller type and region) and answers a nonce with a short TTL.
2. `register`: the child returns the nonce signed with its private key. The
   parent checks the signature, then in one transaction uses up the token,
   consumes the challenge, allocates a controller ID that is never reused,
   stores the controller row and its audit event, and signs a credential.

The child's `url` (its peer listener, where the parent later POSTs signed
envelopes and execution tokens) is part of what the child signs, and must be
a plain `https://host[:port]` URL: no credentials, path, query or fragment,
and never `http://` while TLS is on. The parent reaches it only through its
TLS client context (the PDSNO CA, host name checked), so a URL naming a host
without a PDSNO certificate for that name fails before a byte is sent. When
the server hands the joiner's client certificate to the app (the ASGI `tls`
extension), the URL's host must also be one of that certificate's names.

Every refusal raises ValidationRefusedError with the reason; callers record
it in the audit trail in a transaction of its own.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, func, select, update
from sqlalchemy.exc import IntegrityError

from pdsno import audit
from pdsno.clock import as_utc, utcnow
from pdsno.config import ControllerType
from pdsno.errors import ConfigurationError, ValidationRefusedError
from pdsno.identity.state import Identity
from pdsno.nib.schema import bootstrap_tokens, challenges, controllers
from pdsno.security.keys import SigningKey, sha256_hex, verify_signature

TOKEN_PREFIX = "pdsno-bt-"  # noqa: S105 (a marker, not a secret)
CHALLENGE_TTL = timedelta(seconds=60)
ID_PREFIX = {"global": "gc", "regional": "rc", "local": "lc"}


def token_hash(token: str) -> str:
    return sha256_hex(token.encode())


def create_token(
    conn: Connection,
    *,
    controller_type: ControllerType,
    region: str | None,
    ttl: timedelta,
    created_by: str,
) -> str:
    """A new single-use token; only its hash is stored, so it is shown once."""
    if controller_type is ControllerType.GLOBAL:
        raise ValidationRefusedError("the global controller joins nobody: no token for it")
    if not region:
        raise ValidationRefusedError(f"a {controller_type} token must name its region")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    conn.execute(
        bootstrap_tokens.insert().values(
            token_hash=token_hash(token),
            controller_type=controller_type.value,
            region=region,
            created_by=created_by,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    audit.append(
        conn,
        "bootstrap_token.created",
        actor=created_by,
        region=region,
        payload={"controller_type": controller_type.value, "expires_at": (now + ttl).isoformat()},
    )
    return token


@dataclass(frozen=True)
class JoinRequest:
    token: str
    controller_type: ControllerType
    region: str | None
    name: str
    public_key: str
    url: str | None


def challenge_claims(nonce: str, request: JoinRequest) -> dict[str, Any]:
    """What the child signs to prove it holds the private key of `public_key`: every
    field the parent stores and acts on, the URL it will send messages to among them."""
    return {
        "nonce": nonce,
        "controller_type": request.controller_type.value,
        "region": request.region,
        "name": request.name,
        "public_key": request.public_key,
        "url": request.url,
    }


def check_join_url(
    url: str | None, *, require_https: bool, certificate_hosts: Collection[str] | None = None
) -> None:
    """Refuse a peer URL the parent must not send to (ValidationRefusedError naming `url`).

    `certificate_hosts`: the DNS names and IP addresses of the joiner's client
    certificate, when the server makes it known; the URL's host must be one.
    """
    if url is None:
        return
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValidationRefusedError(f"url {url!r} is not a valid URL: {error}") from None
    allowed = ("https",) if require_https else ("https", "http")
    if parts.scheme not in allowed:
        raise ValidationRefusedError(
            f"url {url!r}: the peer listener must be https://host:port"
            + ("" if require_https else " (or http:// while TLS is off)")
        )
    if parts.username is not None or parts.password is not None:
        raise ValidationRefusedError(f"url {url!r}: no user or password in a peer URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValidationRefusedError(
            f"url {url!r}: a peer URL is scheme, host and port only, no path or query"
        )
    host = parts.hostname
    if not host:
        raise ValidationRefusedError(f"url {url!r}: no host")
    if port is not None and not 0 < port < 65536:
        raise ValidationRefusedError(f"url {url!r}: port out of range")
    if certificate_hosts is not None and _normal_host(host) not in {
        _normal_host(name) for name in certificate_hosts
    }:
        names = ", ".join(sorted(certificate_hosts)) or "none"
        raise ValidationRefusedError(
            f"url {url!r}: host {host} is not a name of the joining controller's "
            f"certificate ({names})"
        )


def _normal_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host.lower().rstrip(".")


def _check_token(row: Any, request: JoinRequest) -> None:
    if row is None:
        raise ValidationRefusedError("unknown bootstrap token")
    if row.used_at is not None:
        raise ValidationRefusedError("bootstrap token already used (replayed token)")
    if as_utc(row.expires_at) <= utcnow():
        raise ValidationRefusedError(f"bootstrap token expired at {as_utc(row.expires_at)}")
    if row.controller_type != request.controller_type.value:
        raise ValidationRefusedError(
            f"bootstrap token is for a {row.controller_type} controller, "
            f"not a {request.controller_type.value} one"
        )
    if row.region != request.region:
        raise ValidationRefusedError(
            f"bootstrap token is for region {row.region}, not {request.region}"
        )


def open_challenge(
    conn: Connection,
    request: JoinRequest,
    *,
    parent: Identity,
    require_https: bool = True,
    certificate_hosts: Collection[str] | None = None,
) -> tuple[str, Any]:
    """Check the token, the hierarchy and the URL, then hand out a nonce to sign."""
    check_join_url(request.url, require_https=require_https, certificate_hosts=certificate_hosts)
    expected_child = {"global": "regional", "regional": "local"}.get(parent.controller_type)
    if request.controller_type.value != expected_child:
        raise ValidationRefusedError(
            f"a {parent.controller_type} controller admits {expected_child or 'no'} "
            f"controllers, not {request.controller_type.value} ones"
        )
    if parent.controller_type == "regional" and request.region != parent.region:
        raise ValidationRefusedError(
            f"this regional controller serves region {parent.region}, not {request.region}"
        )
    row = conn.execute(
        select(bootstrap_tokens).where(bootstrap_tokens.c.token_hash == token_hash(request.token))
    ).one_or_none()
    _check_token(row, request)
    nonce = secrets.token_hex(32)
    now = utcnow()
    conn.execute(
        challenges.insert().values(
            nonce=nonce,
            token_hash=token_hash(request.token),
            controller_type=request.controller_type.value,
            region=request.region,
            name=request.name,
            public_key=request.public_key,
            url=request.url,
            created_at=now,
            expires_at=now + CHALLENGE_TTL,
        )
    )
    return nonce, now + CHALLENGE_TTL


def _allocate_controller(
    conn: Connection,
    *,
    controller_type: str,
    region: str | None,
    name: str,
    public_key: str,
    parent_id: str | None,
    url: str | None,
) -> str:
    """Insert the row, then name it after its never-reused sequence number."""
    now = utcnow()
    placeholder = "pending-" + secrets.token_hex(8)
    try:
        with conn.begin_nested():
            result = conn.execute(
                controllers.insert().values(
                    controller_id=placeholder,
                    controller_type=controller_type,
                    region=region,
                    name=name,
                    public_key=public_key,
                    parent_id=parent_id,
                    url=url,
                    status="active",
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
            )
    except IntegrityError:
        existing = conn.execute(
            select(controllers.c.controller_id).where(controllers.c.public_key == public_key)
        ).scalar_one_or_none()
        raise ValidationRefusedError(
            f"this public key is already registered as {existing}: a controller that lost "
            "its identity file needs a new key"
        ) from None
    seq = result.inserted_primary_key[0]
    parts = [ID_PREFIX[controller_type], region, str(seq)]
    controller_id = "-".join(part for part in parts if part)
    conn.execute(
        update(controllers).where(controllers.c.seq == seq).values(controller_id=controller_id)
    )
    return controller_id


def _credential(
    *,
    controller_id: str,
    controller_type: str,
    region: str | None,
    public_key: str,
    parent_id: str | None,
    signer: SigningKey,
) -> dict[str, Any]:
    claims = {
        "controller_id": controller_id,
        "controller_type": controller_type,
        "region": region,
        "public_key": public_key,
        "parent_id": parent_id,
        "issued_at": utcnow().isoformat(),
    }
    return {"claims": claims, "signature": signer.sign(claims)}


def register(
    conn: Connection, *, nonce: str, signature: str, parent: Identity, signer: SigningKey
) -> Identity:
    """Admit the child that signed `nonce`; all of it commits or none of it."""
    row = conn.execute(select(challenges).where(challenges.c.nonce == nonce)).one_or_none()
    if row is None:
        raise ValidationRefusedError("unknown challenge nonce")
    if row.consumed_at is not None:
        raise ValidationRefusedError("challenge already answered (replayed answer)")
    if as_utc(row.expires_at) <= utcnow():
        raise ValidationRefusedError("challenge expired: ask for a new one")
    request = JoinRequest(
        token="",
        controller_type=ControllerType(row.controller_type),
        region=row.region,
        name=row.name,
        public_key=row.public_key,
        url=row.url,
    )
    if not verify_signature(row.public_key, challenge_claims(nonce, request), signature):
        raise ValidationRefusedError("signature does not match the presented public key")

    now = utcnow()
    used = conn.execute(
        update(bootstrap_tokens)
        .where(bootstrap_tokens.c.token_hash == row.token_hash)
        .where(bootstrap_tokens.c.used_at.is_(None))
        .where(bootstrap_tokens.c.expires_at > now)
        .values(used_at=now)
    )
    if used.rowcount != 1:
        raise ValidationRefusedError("bootstrap token already used or expired")
    conn.execute(update(challenges).where(challenges.c.nonce == nonce).values(consumed_at=now))
    controller_id = _allocate_controller(
        conn,
        controller_type=row.controller_type,
        region=row.region,
        name=row.name,
        public_key=row.public_key,
        parent_id=parent.controller_id,
        url=row.url,
    )
    conn.execute(
        update(bootstrap_tokens)
        .where(bootstrap_tokens.c.token_hash == row.token_hash)
        .values(used_by=controller_id)
    )
    credential = _credential(
        controller_id=controller_id,
        controller_type=row.controller_type,
        region=row.region,
        public_key=row.public_key,
        parent_id=parent.controller_id,
        signer=signer,
    )
    conn.execute(
        update(controllers)
        .where(controllers.c.controller_id == controller_id)
        .values(credential=credential)
    )
    audit.append(
        conn,
        "controller.registered",
        actor=parent.controller_id,
        subject=controller_id,
        region=row.region,
        payload={"controller_type": row.controller_type, "name": row.name},
    )
    return Identity(
        controller_id=controller_id,
        controller_type=row.controller_type,
        region=row.region,
        parent_id=parent.controller_id,
        credential=credential,
    )


def register_root(
    conn: Connection, *, name: str, public_key: str, url: str | None, signer: SigningKey
) -> Identity:
    """The global controller's own row, with a self-signed credential; only one may exist."""
    existing = conn.execute(
        select(controllers.c.controller_id, controllers.c.public_key)
        .where(controllers.c.controller_type == "global")
        .where(controllers.c.status == "active")
    ).first()
    if existing is not None:
        raise ConfigurationError(
            f"The NIB already has a global controller, {existing.controller_id}, with another "
            "key. Restore that controller's identity file and key, or retire it first."
        )
    controller_id = _allocate_controller(
        conn,
        controller_type="global",
        region=None,
        name=name,
        public_key=public_key,
        parent_id=None,
        url=url,
    )
    credential = _credential(
        controller_id=controller_id,
        controller_type="global",
        region=None,
        public_key=public_key,
        parent_id=None,
        signer=signer,
    )
    conn.execute(
        update(controllers)
        .where(controllers.c.controller_id == controller_id)
        .values(credential=credential)
    )
    audit.append(
        conn,
        "controller.registered",
        actor=controller_id,
        subject=controller_id,
        payload={"controller_type": "global", "name": name},
    )
    return Identity(controller_id, "global", None, None, credential)


def count_active(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        select(controllers.c.controller_type, func.count())
        .where(controllers.c.status == "active")
        .group_by(controllers.c.controller_type)
    )
    return {row[0]: row[1] for row in rows}
