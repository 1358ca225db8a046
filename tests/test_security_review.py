"""Issue 11: the seven defects a review found, each reproduced as the attack it allows.

Every test here failed on commit 0f77613 (before the fixes) and passes after.
The wider checks of each class of defect live next to the code they cover:
the route walk by a principal of another region (test_route_permissions.py),
the property test of the classifier (test_classifier.py).
"""

from __future__ import annotations

import secrets
import threading

import pytest
from sqlalchemy import select, update
from test_auth import build_api
from test_middleware import asgi_client, controller_app, new_sqlite_nib, run
from test_workflow import RecordingMessenger, register

from pdsno.approval import tokens
from pdsno.approval.classifier import RuleClassifier
from pdsno.approval.executor import load_executor
from pdsno.approval.workflow import ApprovalWorkflow
from pdsno.auth import api_keys
from pdsno.config import ApprovalSettings, ControllerType
from pdsno.errors import PermissionDeniedError, ValidationRefusedError
from pdsno.identity import bootstrap
from pdsno.identity.state import Identity
from pdsno.nib import devices
from pdsno.nib.cache import TTLCache
from pdsno.nib.schema import config_proposals, controllers, events
from pdsno.security.keys import SigningKey, config_hash


def hierarchy(engine, **approval):
    """GC, RC and LC rows of region r1, a device, and the workflows of the LC and the RC."""
    keys = {name: SigningKey.generate() for name in ("gc-1", "rc-r1-2", "lc-r1-3")}
    register(engine, "gc-1", "global", None, keys["gc-1"])
    rc = register(engine, "rc-r1-2", "regional", "gc-1", keys["rc-r1-2"])
    lc = register(engine, "lc-r1-3", "local", "rc-r1-2", keys["lc-r1-3"])
    with engine.begin() as conn:
        devices.create(conn, device_id="sw-1", name="switch 1", region="r1", status="active")

    def workflow(identity: Identity) -> ApprovalWorkflow:
        return ApprovalWorkflow(
            engine=engine,
            identity=identity,
            signer=keys[identity.controller_id],
            settings=ApprovalSettings(**approval),
            classifier=RuleClassifier.default(),
            executor=load_executor("nib-recorder"),
            messenger=RecordingMessenger(),
        )

    return workflow(lc), workflow(rc), keys


# --- 1. HIGH: a HIGH statement hidden behind a line break is rated LOW and executed --------


@pytest.mark.parametrize(
    "hidden",
    [
        "description uplink\nrouter bgp 65000\n neighbor 10.0.0.1 remote-as 666",
        "description x\raaa new-model",
    ],
)
def test_a_high_statement_behind_a_line_break_is_never_auto_approved(nib_engine, hidden):
    lc, _, _ = hierarchy(nib_engine)
    proposal = lc.submit(device_id="sw-1", config_lines=[hidden], submitted_by="ops")
    assert proposal["sensitivity"] == "high", proposal
    assert proposal["status"] == "pending", "a HIGH change waits for the GC's approver"
    with nib_engine.connect() as conn:
        assert devices.get(conn, "sw-1")["config_version"] == 0


def test_the_api_refuses_control_characters_in_config_lines_naming_the_line(nib_engine):
    api, http = build_api(nib_engine)
    try:
        with api.client:
            response = api.client.post(
                "/api/v1/proposals",
                headers=api.key("admin"),
                json={
                    "device_id": "sw-1",
                    "config_lines": ["description ok", "description uplink\nrouter bgp 65000"],
                },
            )
    finally:
        http.close()
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(problem["loc"][-2:] == ["config_lines", 1] for problem in problems), problems
    assert "U+000A" in response.text


# --- 2. MEDIUM: a principal bound to a region reaches other regions ---------------------


def test_a_region_bound_admin_cannot_publish_a_global_policy_or_read_other_regions(nib_engine):
    api, http = build_api(nib_engine)
    now = api.ctx.identity
    try:
        with api.client:
            register(nib_engine, "rc-r2-9", "regional", now.controller_id, SigningKey.generate())
            with nib_engine.begin() as conn:
                conn.execute(
                    update(controllers)
                    .where(controllers.c.controller_id == "rc-r2-9")
                    .values(region="r2")
                )
            r1_admin = api.key("admin", region="r1")
            published = api.client.post(
                "/api/v1/policies",
                headers=r1_admin,
                json={"policy_id": "p-1", "body": {"max_vlan": 100}},
            )
            api.client.post(
                "/api/v1/auth/login", json={"username": "nobody", "password": "wrong-password"}
            )
            seen = api.client.get("/api/v1/events", headers=r1_admin, params={"limit": 1000})
            listed = api.client.get("/api/v1/controllers", headers=r1_admin)
    finally:
        http.close()
    assert published.status_code == 403, published.text
    assert seen.status_code == 200
    assert {event["region"] for event in seen.json()} <= {"r1"}, seen.json()
    assert {row["region"] for row in listed.json()} <= {"r1"}, listed.json()


# --- 3. MEDIUM: the rate limiter is bypassed by forged keys, and a known key is starved -----


def test_forged_keys_get_no_fresh_burst_and_a_known_key_cannot_be_starved(tmp_path_factory):
    url = new_sqlite_nib(tmp_path_factory)
    with controller_app(url, limits={"burst": 5, "rate_per_second": 0.01}) as (app, ctx):
        with ctx.engine.begin() as conn:
            victim_key = api_keys.create(conn, name="automation", role="auditor", region=None)
        key_id = victim_key.split("_")[1]

        async def scenario() -> tuple[list[int], list[int]]:
            async with asgi_client(app, client=("192.0.2.66", 1)) as attacker:
                forged = [
                    (
                        await attacker.get(
                            "/api/v1/devices",
                            headers={"X-API-Key": f"pdsno_{secrets.token_hex(8)}_x"},
                        )
                    ).status_code
                    for _ in range(50)
                ]
            async with asgi_client(app, client=("192.0.2.67", 1)) as attacker2:
                for _ in range(20):
                    await attacker2.get(
                        "/api/v1/devices", headers={"X-API-Key": f"pdsno_{key_id}_wrong"}
                    )
            async with asgi_client(app, client=("192.0.2.10", 1)) as victim:
                own = [
                    (
                        await victim.get("/api/v1/devices", headers={"X-API-Key": victim_key})
                    ).status_code
                    for _ in range(3)
                ]
            return forged, own

        forged, own = run(scenario())
    assert forged.count(429) >= 45, f"forged keys refused {forged.count(429)} of 50"
    assert own == [200, 200, 200], own


# --- 4. LOW: an execution token is not bound to its proposal --------------------------------


def test_the_token_of_one_proposal_does_not_execute_another(nib_engine):
    lc, _, keys = hierarchy(nib_engine, auto_approve_low=False)
    lines = ["logging trap 4"]
    first = lc.submit(device_id="sw-1", config_lines=lines, submitted_by="ops")["proposal_id"]
    second = lc.submit(device_id="sw-1", config_lines=lines, submitted_by="ops")["proposal_id"]
    with nib_engine.begin() as conn:
        conn.execute(update(config_proposals).values(status="approved"))
        token = tokens.issue(
            conn,
            proposal_id=first,
            device_id="sw-1",
            config_hash=config_hash(lines),
            issuer_id="rc-r1-2",
            signer=keys["rc-r1-2"],
            ttl_seconds=600,
        )
    with pytest.raises(ValidationRefusedError, match=f"proposal {first}"):
        lc.execute(second, token)
    assert lc.get(second)["status"] == "approved"


# --- 5. LOW: a logged-out session keeps working from the credential cache -------------------


def test_a_session_read_before_logout_is_not_cached_after_it(nib_engine):
    api, http = build_api(nib_engine, cache_seconds=30)
    try:
        with api.client:
            api.user("alice", "operator")
            headers = api.session("alice")
            token = headers["Authorization"].removeprefix("Bearer ")
            cache = api.ctx.auth_cache = TTLCache(max_entries=100, ttl_seconds=30)
            from pdsno.auth import sessions
            from pdsno.security.keys import sha256_hex

            def read_then_logout_commits():
                with nib_engine.connect() as conn:
                    principal = sessions.authenticate(conn, token)
                # The logout commits (and clears the cache) while this request
                # still holds the session it read.
                done = threading.Thread(
                    target=lambda: api.client.post("/api/v1/auth/logout", headers=headers)
                )
                done.start()
                done.join()
                return principal

            cache.get_or_load(sha256_hex(token.encode()), read_then_logout_commits)
            after = api.client.get("/api/v1/auth/me", headers=headers)
    finally:
        http.close()
    assert after.status_code == 401, after.text


# --- 6. LOW: the joining controller's URL is neither signed nor validated -------------------


def join_request(key: SigningKey, token: str, url: str | None) -> bootstrap.JoinRequest:
    return bootstrap.JoinRequest(
        token=token,
        controller_type=ControllerType.REGIONAL,
        region="r1",
        name="rc-one",
        public_key=key.public_key_b64,
        url=url,
    )


def test_the_join_url_is_signed_and_must_be_https(nib_engine):
    signer = SigningKey.generate()
    with nib_engine.begin() as conn:
        parent = bootstrap.register_root(
            conn, name="gc", public_key=signer.public_key_b64, url=None, signer=signer
        )
        token = bootstrap.create_token(
            conn,
            controller_type=ControllerType.REGIONAL,
            region="r1",
            ttl=__import__("datetime").timedelta(minutes=5),
            created_by="test",
        )
    child = SigningKey.generate()
    # Plain http (execution tokens in clear) and internal addresses are refused.
    for url in ("http://rc-one.example:8002", "https://user@169.254.169.254/latest/"):
        with pytest.raises(ValidationRefusedError, match="url"), nib_engine.begin() as conn:
            bootstrap.open_challenge(conn, join_request(child, token, url), parent=parent)
    # The URL is part of what the child signs: one swapped on the way is refused.
    with nib_engine.begin() as conn:
        nonce, _ = bootstrap.open_challenge(
            conn, join_request(child, token, "https://attacker.example:8002"), parent=parent
        )
    claims = bootstrap.challenge_claims(
        nonce, join_request(child, "", "https://rc-one.example:8002")
    )
    with pytest.raises(ValidationRefusedError, match="signature"), nib_engine.begin() as conn:
        bootstrap.register(
            conn, nonce=nonce, signature=child.sign(claims), parent=parent, signer=signer
        )
    with nib_engine.connect() as conn:
        assert (
            conn.execute(select(controllers).where(controllers.c.name == "rc-one")).first() is None
        )


# --- 7. LOW: one admin submits and approves the same change ---------------------------------


def test_the_submitter_cannot_approve_their_own_medium_change(nib_engine):
    lc, rc, _ = hierarchy(nib_engine)
    pid = lc.submit(device_id="sw-1", config_lines=["vlan 20"], submitted_by="alice")["proposal_id"]
    rc.review(pid, from_controller="lc-r1-3")
    assert rc.get(pid)["status"] == "awaiting_regional"
    with pytest.raises(PermissionDeniedError, match="separation of duties"):
        rc.decide(pid, approve=True, operator="alice", reason="looks fine")
    assert rc.get(pid)["status"] == "awaiting_regional"
    with nib_engine.connect() as conn:
        refused = conn.execute(
            select(events).where(events.c.event_type == "proposal.decision_refused")
        ).all()
    assert [row.subject for row in refused] == [pid]
    assert rc.decide(pid, approve=True, operator="bob", reason="ok")["status"] == "approved"


def test_anchored_names_refuse_a_trailing_line_break():
    """The same class as finding 1: `^...$` with re.match accepts "name\\n"."""
    from pdsno.auth import users
    from pdsno.errors import PdsnoError
    from pdsno.security import secrets as secret_store

    with pytest.raises(PdsnoError, match="invalid username"):
        users.check_username("alice\n")
    assert not secret_store.SECRET_ID.fullmatch("db/password\n")


@pytest.mark.parametrize(
    ("url", "require_https", "hosts", "refused"),
    [
        ("https://rc-one.example:8002", True, None, None),
        ("https://rc-one.example:8002/", True, ["rc-one.example"], None),
        ("https://10.0.0.5:8002", True, ["rc-one.example", "10.0.0.5"], None),
        ("http://rc-one.example:8002", False, None, None),
        ("http://rc-one.example:8002", True, None, "must be https"),
        ("gopher://rc-one.example", True, None, "must be https"),
        ("https://a:b@rc-one.example", True, None, "no user or password"),
        ("https://rc-one.example/admin?x=1", True, None, "no path or query"),
        ("https://:8002", True, None, "no host"),
        ("https://rc-one.example:99999", True, None, "not a valid URL"),
        ("https://169.254.169.254:8002", True, ["rc-one.example"], "not a name of"),
    ],
)
def test_join_urls(url, require_https, hosts, refused):
    if refused is None:
        bootstrap.check_join_url(url, require_https=require_https, certificate_hosts=hosts)
        return
    with pytest.raises(ValidationRefusedError, match=refused):
        bootstrap.check_join_url(url, require_https=require_https, certificate_hosts=hosts)


def test_the_names_of_the_joiners_certificate_come_from_the_asgi_tls_extension():
    from fastapi import Request
    from tlsutil import CertificateAuthority

    from pdsno.api.routes.hierarchy import _client_certificate_hosts

    issued = CertificateAuthority.create().issue("rc-one", hosts=("rc-one.example", "10.0.0.5"))
    scope = {
        "type": "http",
        "extensions": {"tls": {"client_cert_chain": [issued.cert_pem.decode()]}},
    }
    assert sorted(_client_certificate_hosts(Request(scope))) == ["10.0.0.5", "rc-one.example"]
    assert _client_certificate_hosts(Request({"type": "http"})) is None
