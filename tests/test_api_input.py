"""Bad input gets a 4xx that names what is wrong, never a 500, and changes nothing.

One test per defect of issue 16 (found by fuzzing), plus the smaller
findings. In-process (TestClient, server exceptions turned into 500s as a
client sees them) against the real app on a real NIB, once on SQLite and once
on PostgreSQL: several defects showed only on one backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nib_rows import add_device, add_proposal
from sqlalchemy import func, select, update
from test_auth import PASSWORD, Api, build_api

from pdsno.api.app import create_app
from pdsno.config import ControllerType
from pdsno.identity import bootstrap
from pdsno.identity.state import Identity
from pdsno.messaging.envelope import SIGNED_FIELDS, seal
from pdsno.nib.schema import config_proposals, devices, events, message_nonces, policies
from pdsno.security.keys import SigningKey, verify_signature

HUGE = 2**63


@dataclass
class Child:
    """A regional controller admitted by the test's global controller."""

    identity: Identity
    key: SigningKey


@dataclass
class Controller:
    """Both listeners of one global controller, and an admin's credentials."""

    api: Api
    client: TestClient  # the operator API
    peer: TestClient  # the peer listener
    admin: dict[str, str]

    def count(self, table: Any) -> int:
        with self.api.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()

    def post_raw(self, path: str, body: str, headers: dict[str, str] | None = None):
        """POST a JSON text as is: json= cannot carry lone surrogates or NaN."""
        return self.client.post(
            path,
            content=body.encode("utf-8"),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def join_child(self, region: str = "eu-west") -> Child:
        ctx = self.api.ctx
        key = SigningKey.generate()
        request = bootstrap.JoinRequest(
            token="",
            controller_type=ControllerType.REGIONAL,
            region=region,
            name="rc-test",
            public_key=key.public_key_b64,
            url=None,
        )
        with ctx.engine.begin() as conn:
            token = bootstrap.create_token(
                conn,
                controller_type=ControllerType.REGIONAL,
                region=region,
                ttl=timedelta(minutes=5),
                created_by="test",
            )
            request = bootstrap.JoinRequest(**{**request.__dict__, "token": token})
            nonce, _ = bootstrap.open_challenge(conn, request, parent=ctx.identity)
        with ctx.engine.begin() as conn:
            identity = bootstrap.register(
                conn,
                nonce=nonce,
                signature=key.sign(bootstrap.challenge_claims(nonce, request)),
                parent=ctx.identity,
                signer=ctx.signer,
            )
        return Child(identity, key)

    def envelope(self, child: Child, message_type: str, body: dict[str, Any]) -> dict[str, Any]:
        return seal(
            message_type,
            body,
            sender_id=child.identity.controller_id,
            recipient_id=self.api.ctx.identity.controller_id,
            signer=child.key,
        )


def resign(envelope: dict[str, Any], key: SigningKey, **changes: Any) -> dict[str, Any]:
    """The same envelope (same nonce) with `changes`, signed again by `key`."""
    unsigned = {field: envelope.get(field) for field in SIGNED_FIELDS} | changes
    return {**unsigned, "signature": key.sign(unsigned)}


@pytest.fixture
def controller(nib_engine) -> Iterator[Controller]:
    built, http = build_api(nib_engine)
    ctx = built.ctx
    client = TestClient(
        create_app(ctx, surface="api"), base_url="http://127.0.0.1", raise_server_exceptions=False
    )
    peer = TestClient(
        create_app(ctx, surface="peer"), base_url="http://127.0.0.1", raise_server_exceptions=False
    )
    with client, peer:
        yield Controller(built, client, peer, built.key("admin"))
    http.close()


def new_device(controller: Controller, device_id: str = "sw-1") -> dict[str, Any]:
    response = controller.client.post(
        "/api/v1/devices",
        json={"device_id": device_id, "name": "switch one", "region": "eu-west"},
        headers=controller.admin,
    )
    assert response.status_code == 201, response.text
    return response.json()


def assert_refused(response, *, status: int = 422, naming: str | None = None) -> None:
    """A 4xx with a JSON body that says why (and names `naming` when given)."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    if naming is not None:
        assert naming in json.dumps(detail), detail


# ---- 1. null into a NOT NULL column ---------------------------------------


@pytest.mark.parametrize("field", ["name", "status"])
def test_null_for_a_column_that_refuses_null_is_a_422(controller, field):
    device = new_device(controller)
    response = controller.client.patch(
        f"/api/v1/devices/{device['device_id']}",
        json={"version": device["version"], field: None},
        headers=controller.admin,
    )
    assert_refused(response, naming=field)
    after = controller.client.get(
        f"/api/v1/devices/{device['device_id']}", headers=controller.admin
    ).json()
    assert after == device


def test_null_is_still_accepted_where_the_column_allows_it(controller):
    device = new_device(controller)
    response = controller.client.patch(
        f"/api/v1/devices/{device['device_id']}",
        json={"version": device["version"], "vendor": None, "management_address": None},
        headers=controller.admin,
    )
    assert response.status_code == 200, response.text
    assert response.json()["vendor"] is None


# ---- 2. integers without bounds -------------------------------------------


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        (f"/api/v1/devices?offset={HUGE}", "offset"),
        (f"/api/v1/events?after_seq={HUGE}", "after_seq"),
        (f"/api/v1/devices?limit={HUGE}", "limit"),
    ],
)
def test_a_query_integer_beyond_the_database_range_is_a_422(controller, path, parameter):
    assert_refused(controller.client.get(path, headers=controller.admin), naming=parameter)


@pytest.mark.parametrize("version", [HUGE, 2**31, -1, 0])
def test_a_version_beyond_the_database_range_is_a_422(controller, version):
    device = new_device(controller)
    response = controller.client.patch(
        f"/api/v1/devices/{device['device_id']}",
        json={"version": version, "name": "renamed"},
        headers=controller.admin,
    )
    assert_refused(response, naming="version")


# ---- 3. a lone surrogate in a validated text field ------------------------


def test_a_lone_surrogate_in_a_device_name_is_a_422(controller):
    response = controller.post_raw(
        "/api/v1/devices",
        '{"device_id": "sw-9", "name": "a\\udc80", "region": "eu-west"}',
        controller.admin,
    )
    assert_refused(response)
    assert controller.count(devices) == 0


def test_a_lone_surrogate_in_a_login_username_is_a_422(controller):
    response = controller.post_raw(
        "/api/v1/auth/login", '{"username": "a\\udc80", "password": "whatever-it-is"}'
    )
    assert_refused(response)


def test_a_lone_surrogate_on_the_peer_listener_is_a_422(controller):
    child = controller.join_child()
    envelope = controller.envelope(child, "proposal.review", {"proposal_id": "p"})
    raw = json.dumps({**envelope, "sender": "rc-\udc80"})  # ensure_ascii: the \\u escape
    response = controller.peer.post(
        "/api/v1/messages", content=raw.encode(), headers={"Content-Type": "application/json"}
    )
    assert_refused(response)
    challenge = json.dumps(
        {
            "token": "pdsno-bt-" + "x" * 20,
            "controller_type": "regional",
            "region": "eu-west",
            "name": "rc-\ud800",
            "public_key": child.key.public_key_b64,
        }
    )
    response = controller.peer.post(
        "/api/v1/validation/challenge",
        content=challenge.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert_refused(response)
    assert controller.count(message_nonces) == 0


def test_undecodable_bytes_in_a_body_are_a_422_that_echoes_nothing(controller):
    response = controller.client.post(
        "/api/v1/devices",
        content=b'{"device_id": "sw-9", "name": "a\xff\xfe", "region": "eu-west"}',
        headers={"Content-Type": "application/json", **controller.admin},
    )
    assert_refused(response)
    response = controller.client.post(
        "/api/v1/devices",
        content=b"\xff\xfe not json",
        headers={"Content-Type": "text/plain", **controller.admin},
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")


# ---- 4. a lone surrogate in a policy body ---------------------------------


def test_a_lone_surrogate_in_a_policy_body_is_a_422(controller):
    response = controller.post_raw(
        "/api/v1/policies", '{"policy_id": "s", "body": {"k": "\\ud800"}}', controller.admin
    )
    assert_refused(response)
    response = controller.post_raw(
        "/api/v1/policies", '{"policy_id": "s", "body": {"\\udfff": 1}}', controller.admin
    )
    assert_refused(response)
    assert controller.count(policies) == 0


def test_a_surrogate_pair_is_a_character_like_any_other(controller):
    response = controller.post_raw(
        "/api/v1/policies", '{"policy_id": "s", "body": {"k": "\\ud83d\\ude00"}}', controller.admin
    )
    assert response.status_code == 201, response.text
    assert response.json()["body"] == {"k": "\U0001f600"}


# ---- 5. a lone surrogate in a password ------------------------------------


def test_a_lone_surrogate_in_a_password_is_a_422(controller):
    controller.api.user("alice", "operator")
    response = controller.post_raw(
        "/api/v1/auth/login", '{"username": "alice", "password": "pass\\udc80word"}'
    )
    assert_refused(response)
    assert controller.api.login("alice", PASSWORD).status_code == 200


# ---- 6. NaN or Infinity in a policy body ----------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_and_infinity_are_not_json(controller, number):
    response = controller.post_raw(
        "/api/v1/policies", f'{{"policy_id": "p1", "body": {{"x": {number}}}}}', controller.admin
    )
    assert_refused(response)
    assert controller.count(policies) == 0


def test_a_published_policy_verifies_against_its_signature(controller):
    response = controller.post_raw(
        "/api/v1/policies",
        '{"policy_id": "p1", "body": {"x": 1.5, "y": [1, "z"]}}',
        controller.admin,
    )
    assert response.status_code == 201, response.text
    policy = response.json()
    claims = {
        k: policy[k]
        for k in ("policy_id", "policy_version", "scope", "region", "issuer_id", "body")
    }
    assert verify_signature(controller.api.ctx.signer.public_key_b64, claims, policy["signature"])


# ---- 7. a NUL character in a text field -----------------------------------


def test_a_nul_character_anywhere_is_a_4xx(controller):
    new_device(controller)
    controller.api.user("alice", "operator")
    admin = controller.admin
    client = controller.client
    answers = {
        "login": controller.post_raw(
            "/api/v1/auth/login", '{"username": "a\\u0000b", "password": "whatever-it-is"}'
        ),
        "device name": controller.post_raw(
            "/api/v1/devices",
            '{"device_id": "sw-2", "name": "a\\u0000b", "region": "eu-west"}',
            admin,
        ),
        "devices ?status": client.get("/api/v1/devices?status=a%00b", headers=admin),
        "proposals ?status": client.get("/api/v1/proposals?status=a%00b", headers=admin),
        "device path": client.get("/api/v1/devices/a%00b", headers=admin),
        "device patch path": client.patch(
            "/api/v1/devices/a%00b", json={"version": 1}, headers=admin
        ),
        "proposal path": client.get("/api/v1/proposals/a%00b", headers=admin),
        "controller path": client.get("/api/v1/controllers/a%00b", headers=admin),
        "user sessions": client.delete("/api/v1/auth/users/a%00b/sessions", headers=admin),
        "decision reason": controller.post_raw(
            "/api/v1/proposals/p/approve", '{"reason": "a\\u0000b"}', admin
        ),
        "register nonce": controller.peer.post(
            "/api/v1/validation/register",
            json={"nonce": "a\u0000" + "b" * 62, "signature": "s" * 88},
        ),
    }
    child = controller.join_child()
    envelope = controller.envelope(child, "proposal.review", {"proposal_id": "p"})
    answers["message sender"] = controller.peer.post(
        "/api/v1/messages", json={**envelope, "sender": "rc\u0000x"}
    )
    answers["message nonce"] = controller.peer.post(
        "/api/v1/messages", json=resign(envelope, child.key, nonce="n\u0000" + "0" * 30)
    )
    wrong = {name: (r.status_code, r.text[:200]) for name, r in answers.items()}
    wrong = {name: answer for name, answer in wrong.items() if not 400 <= answer[0] < 500}
    assert wrong == {}
    assert controller.count(devices) == 1
    assert controller.count(message_nonces) == 0


# ---- 8. peer message bodies -----------------------------------------------


@pytest.fixture
def escalated(controller) -> str:
    """A proposal the GC waits on, as a regional controller leaves it before escalating."""
    with controller.api.engine.begin() as conn:
        add_device(conn, "sw-1")
        proposal_id = add_proposal(
            conn,
            "sw-1",
            ["hostname x"],
            origin_id=controller.api.ctx.identity.controller_id,
            sensitivity="high",
        )
        conn.execute(
            update(config_proposals)
            .where(config_proposals.c.proposal_id == proposal_id)
            .values(status="awaiting_global")
        )
    return proposal_id


@pytest.mark.parametrize(
    ("body", "naming"),
    [
        ({}, "proposal_id"),
        ({"proposal_id": 7}, "proposal_id"),
        ({"proposal_id": None}, "proposal_id"),
        ({"proposal_id": "x", "extra": 1}, "extra"),
    ],
)
def test_a_signed_message_with_a_wrong_body_records_nothing(controller, escalated, body, naming):
    child = controller.join_child()
    events_before = controller.count(events)
    envelope = controller.envelope(child, "proposal.escalate", body)
    assert_refused(controller.peer.post("/api/v1/messages", json=envelope), naming=naming)
    assert controller.count(message_nonces) == 0
    assert controller.count(events) == events_before
    # The sender corrects the body and sends again, with the same nonce: not a replay.
    corrected = resign(envelope, child.key, body={"proposal_id": escalated})
    response = controller.peer.post("/api/v1/messages", json=corrected)
    assert response.status_code == 202, response.text
    assert controller.count(message_nonces) == 1
    # Now it is one.
    again = controller.peer.post("/api/v1/messages", json=corrected)
    assert_refused(again, status=403, naming="replayed")


@pytest.mark.parametrize(
    ("message_type", "body", "naming"),
    [
        ("proposal.review", {}, "proposal_id"),
        ("proposal.approved", {"proposal_id": "p"}, "token"),
        ("proposal.approved", {"proposal_id": "p", "token": {"token_id": "t"}}, "signature"),
        ("policy.published", {"policy_id": "p"}, "policy_version"),
        ("policy.published", {"policy_id": "p", "policy_version": HUGE}, "policy_version"),
        ("no.such.type", {}, "message_type"),
    ],
)
def test_each_message_type_has_its_body_checked(controller, message_type, body, naming):
    child = controller.join_child()
    envelope = controller.envelope(child, message_type, body)
    assert_refused(controller.peer.post("/api/v1/messages", json=envelope), naming=naming)
    assert controller.count(message_nonces) == 0


def test_a_message_its_handler_refuses_leaves_its_nonce_unused(controller):
    child = controller.join_child()
    envelope = controller.envelope(child, "proposal.escalate", {"proposal_id": "nowhere"})
    response = controller.peer.post("/api/v1/messages", json=envelope)
    assert_refused(response, status=404, naming="nowhere")
    assert controller.count(message_nonces) == 0


# ---- also found ------------------------------------------------------------


def test_timestamps_carry_their_utc_offset_on_every_backend(controller):
    device = new_device(controller)
    for stamp in (device["created_at"], device["updated_at"]):
        assert stamp.endswith("+00:00") or stamp.endswith("Z"), stamp
    listed = controller.client.get("/api/v1/events", headers=controller.admin).json()
    assert listed, "the admin key's creation is an event"
    assert all(e["created_at"].endswith(("+00:00", "Z")) for e in listed)
    controllers = controller.client.get("/api/v1/controllers", headers=controller.admin).json()
    assert all(c["created_at"].endswith(("+00:00", "Z")) for c in controllers)


def test_the_documented_422_body_is_the_one_served(controller):
    schema = controller.client.get("/openapi.json").json()
    served = controller.client.get("/api/v1/devices?limit=0", headers=controller.admin)
    assert served.status_code == 422
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            documented = operation["responses"].get("422")
            assert documented is not None, f"{method.upper()} {path} documents no 422"
            ref = documented["content"]["application/json"]["schema"]["$ref"]
            model = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
            assert model["properties"]["detail"]["type"] == "array", (method, path, model)
    detail = served.json()["detail"]
    assert isinstance(detail, list)
    assert set(detail[0]) == {"type", "loc", "msg"}


def test_logout_with_an_api_key_matches_the_contract(controller):
    schema = controller.client.get("/openapi.json").json()
    security = schema["paths"]["/api/v1/auth/logout"]["post"]["security"]
    schemes = {name for requirement in security for name in requirement}
    response = controller.client.post("/api/v1/auth/logout", headers=controller.admin)
    if "APIKeyHeader" in schemes:
        assert response.status_code == 204, response.text
    else:
        assert response.status_code in (400, 401, 403), response.text
        assert "apikey revoke" in response.json()["detail"]


def test_a_405_lists_every_method_of_the_path(controller):
    response = controller.client.put("/api/v1/devices", headers=controller.admin)
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed, response.headers["allow"]
    response = controller.client.delete("/api/v1/devices/sw-1", headers=controller.admin)
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "PATCH"} <= allowed, response.headers["allow"]
