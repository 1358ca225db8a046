"""GC, RC and LC as three real processes on loopback, sharing one NIB.

Each test module run happens once on SQLite and once on PostgreSQL. Every
connection is TLS with certificates of a test CA: the API, the peer listeners
(mutual TLS), and the MQTT broker (a client certificate required).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from hierarchy import (
    ControllerProcess,
    controller_settings,
    issue_once,
    pdsno,
    pdsno_ok,
    peer_client,
    pki,
    wait_for,
)
from sqlalchemy import create_engine, select, text, update
from tlsutil import TlsMosquitto, client_context

from pdsno.clock import as_utc
from pdsno.nib.schema import controllers, events, execution_tokens
from pdsno.security.keys import SigningKey, verify_signature

REGION = "region-a"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory):
    """A running GC, RC and LC, API keys for each role, and the NIB URL."""
    workdir: Path = tmp_path_factory.mktemp(f"hierarchy-{request.param}")
    broker = TlsMosquitto(pki(workdir)).start()
    request.addfinalizer(broker.stop)
    if request.param == "postgresql":
        db_url = request.getfixturevalue("postgres_server").create_database()
    else:
        db_url = f"sqlite:///{workdir / 'nib.db'}"
    db = ["--db-url", db_url]
    pdsno_ok("db", "upgrade", *db)

    mqtt_port = broker.port
    gc = ControllerProcess(
        "gc1", workdir, controller_settings(workdir, "gc1", "global", db_url, mqtt_port=mqtt_port)
    )
    gc.start()
    rc = ControllerProcess(
        "rc1",
        workdir,
        controller_settings(
            workdir,
            "rc1",
            "regional",
            db_url,
            region=REGION,
            parent_url=gc.peer_url,
            mqtt_port=mqtt_port,
        ),
        env={
            "PDSNO_BOOTSTRAP_TOKEN": pdsno_ok(
                "token", "create", "--region", REGION, "--type", "regional", *db
            )
        },
    )
    rc.start()
    lc = ControllerProcess(
        "lc1",
        workdir,
        controller_settings(
            workdir,
            "lc1",
            "local",
            db_url,
            region=REGION,
            parent_url=rc.peer_url,
            mqtt_port=mqtt_port,
        ),
        env={
            "PDSNO_BOOTSTRAP_TOKEN": pdsno_ok(
                "token", "create", "--region", REGION, "--type", "local", *db
            )
        },
    )
    lc.start()
    keys = {
        role: pdsno_ok("apikey", "create", "--name", f"{role}-1", "--role", role, *db)
        for role in ("admin", "operator", "approver", "auditor")
    }
    yield {
        "gc": gc,
        "rc": rc,
        "lc": lc,
        "db_url": db_url,
        "db": db,
        "keys": keys,
        "workdir": workdir,
        "backend": request.param,
        "broker": broker,
        # Test clients: the API verified against the test CA; the peer
        # listeners also want a client certificate of that CA.
        "tls": client_context(workdir / "pki" / "ca.crt"),
        "peer_tls": peer_client(workdir),
    }
    for process in (lc, rc, gc):
        process.stop()


def api(stack, controller: str, role: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{stack[controller].url}/api/v1",
        headers={"X-API-Key": stack["keys"][role]},
        timeout=10,
        verify=stack["tls"],
    )


def nib_rows(db_url: str, table) -> list[dict]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c[0]))]
    finally:
        engine.dispose()


# ---- identity and validation -------------------------------------------------


def test_controllers_get_persistent_ids_in_a_hierarchy(stack):
    gc, rc, lc = (stack[name].identity() for name in ("gc", "rc", "lc"))
    assert gc["controller_id"].startswith("gc-")
    assert rc["controller_id"].startswith(f"rc-{REGION}-")
    assert lc["controller_id"].startswith(f"lc-{REGION}-")
    assert rc["parent_id"] == gc["controller_id"]
    assert lc["parent_id"] == rc["controller_id"]
    listed = {c["controller_id"]: c for c in api(stack, "gc", "auditor").get("/controllers").json()}
    assert listed[lc["controller_id"]]["parent_id"] == rc["controller_id"]
    # Controllers call each other over HTTPS, at their peer listeners.
    for name, identity in (("gc", gc), ("rc", rc), ("lc", lc)):
        assert listed[identity["controller_id"]]["url"] == stack[name].peer_url
        assert stack[name].peer_url.startswith("https://")


def test_gc_restart_keeps_its_id_and_a_new_rc_gets_a_fresh_one(stack):
    before = nib_rows(stack["db_url"], controllers)
    gc = stack["gc"]
    old_id = gc.identity()["controller_id"]
    gc.stop()
    gc.start()
    assert gc.identity()["controller_id"] == old_id

    workdir = stack["workdir"]
    token = pdsno_ok("token", "create", "--region", "region-b", "--type", "regional", *stack["db"])
    rc2 = ControllerProcess(
        "rc2",
        workdir,
        controller_settings(
            workdir, "rc2", "regional", stack["db_url"], region="region-b", parent_url=gc.peer_url
        ),
        env={"PDSNO_BOOTSTRAP_TOKEN": token},
    )
    rc2.start()
    rc2.stop()
    after = nib_rows(stack["db_url"], controllers)
    new_id = rc2.identity()["controller_id"]
    assert new_id not in {row["controller_id"] for row in before}
    assert max(row["seq"] for row in after) > max(row["seq"] for row in before)
    unchanged = {row["controller_id"]: row["public_key"] for row in before}
    assert {
        r["controller_id"]: r["public_key"] for r in after if r["controller_id"] in unchanged
    } == unchanged


def join_attempt(stack, token: str, *, region: str = REGION, sign_with: SigningKey | None = None):
    """Both steps of a join against the GC; returns the refusal detail or the new ID."""
    key = SigningKey.generate()
    gc_api = httpx.Client(
        base_url=f"{stack['gc'].peer_url}/api/v1", timeout=10, verify=stack["peer_tls"]
    )
    claims = {
        "controller_type": "regional",
        "region": region,
        "name": "intruder",
        "public_key": key.public_key_b64,
    }
    challenge = gc_api.post("/validation/challenge", json={"token": token, **claims})
    if challenge.status_code != 200:
        return challenge.status_code, challenge.json()["detail"]
    nonce = challenge.json()["nonce"]
    signature = (sign_with or key).sign({"nonce": nonce, **claims, "url": None})
    registered = gc_api.post("/validation/register", json={"nonce": nonce, "signature": signature})
    return registered.status_code, registered.json().get("detail") or registered.json()


def test_a_replayed_token_is_refused(stack):
    token = pdsno_ok("token", "create", "--region", REGION, "--type", "regional", *stack["db"])
    assert join_attempt(stack, token)[0] == 201
    status, detail = join_attempt(stack, token)
    assert status == 403 and "already used" in detail


def test_an_expired_token_is_refused(stack):
    token = pdsno_ok(
        "token", "create", "--region", REGION, "--type", "regional", "--ttl", "1s", *stack["db"]
    )
    time.sleep(1.5)  # past the token's one-second lifetime
    status, detail = join_attempt(stack, token)
    assert status == 403 and "expired" in detail


def test_a_wrong_region_token_is_refused(stack):
    token = pdsno_ok("token", "create", "--region", "region-z", "--type", "regional", *stack["db"])
    status, detail = join_attempt(stack, token, region=REGION)
    assert status == 403 and "region region-z, not region-a" in detail


def test_a_wrong_type_token_is_refused(stack):
    token = pdsno_ok("token", "create", "--region", REGION, "--type", "local", *stack["db"])
    status, detail = join_attempt(stack, token)
    assert status == 403 and "local controller" in detail


def test_a_forged_signature_is_refused_and_the_token_stays_unused(stack):
    token = pdsno_ok("token", "create", "--region", REGION, "--type", "regional", *stack["db"])
    status, detail = join_attempt(stack, token, sign_with=SigningKey.generate())
    assert status == 403 and "signature does not match" in detail
    assert join_attempt(stack, token)[0] == 201, "a refused join must not use up the token"


def test_refusals_are_audited(stack):
    events = (
        api(stack, "gc", "auditor")
        .get("/events", params={"event_type": "validation.refused", "limit": 1000})
        .json()
    )
    reasons = " | ".join(e["payload"]["reason"] for e in events)
    assert "already used" in reasons and "signature does not match" in reasons


def test_a_forged_message_is_refused(stack):
    rc_id = stack["rc"].identity()["controller_id"]
    lc_id = stack["lc"].identity()["controller_id"]
    from pdsno.messaging.envelope import seal

    envelope = seal(
        "proposal.review",
        {"proposal_id": "x"},
        sender_id=lc_id,
        recipient_id=rc_id,
        signer=SigningKey.generate(),
    )
    response = httpx.post(
        f"{stack['rc'].peer_url}/api/v1/messages",
        json=envelope,
        timeout=10,
        verify=stack["peer_tls"],
    )
    assert response.status_code == 403
    assert "bad signature" in response.json()["detail"]


# ---- approvals ----------------------------------------------------------------


@pytest.fixture(scope="module")
def device(stack):
    response = api(stack, "lc", "operator").post(
        "/devices",
        json={
            "device_id": "edge-1",
            "name": "edge router 1",
            "region": REGION,
            "vendor": "acme",
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


def submit(stack, device, lines):
    response = api(stack, "lc", "operator").post(
        "/proposals", json={"device_id": device["device_id"], "config_lines": lines}
    )
    assert response.status_code == 202, response.text
    return response.json()


def proposal_status(stack, controller, proposal_id):
    return api(stack, controller, "auditor").get(f"/proposals/{proposal_id}").json()["status"]


MEDIUM = ["interface GigabitEthernet0/1", " ip address 192.0.2.1 255.255.255.0"]
HIGH = ["router bgp 65001", " neighbor 192.0.2.2 remote-as 65002"]


def test_medium_proposal_is_approved_at_the_rc_and_executed(stack, device):
    proposal = submit(stack, device, MEDIUM)
    pid = proposal["proposal_id"]
    wait_for(
        lambda: proposal_status(stack, "rc", pid) == "awaiting_regional", what="the RC's review"
    )
    assert (
        api(stack, "gc", "approver").post(f"/proposals/{pid}/approve", json={}).status_code == 409
    ), "a MEDIUM proposal is not the GC's to decide"
    decided = api(stack, "rc", "approver").post(
        f"/proposals/{pid}/approve", json={"reason": "planned change"}
    )
    assert decided.status_code == 200, decided.text
    wait_for(lambda: proposal_status(stack, "lc", pid) == "executed", what="execution")
    current = api(stack, "lc", "auditor").get(f"/devices/{device['device_id']}").json()
    assert current["current_config"] == MEDIUM


def test_high_proposal_waits_for_an_operator_at_the_gc(stack, device):
    pid = submit(stack, device, HIGH)["proposal_id"]
    wait_for(
        lambda: proposal_status(stack, "gc", pid) == "awaiting_global", what="escalation to the GC"
    )
    assert (
        api(stack, "rc", "approver").post(f"/proposals/{pid}/approve", json={}).status_code == 409
    ), "the RC cannot approve a HIGH proposal"
    assert proposal_status(stack, "lc", pid) == "awaiting_global"
    assert (
        api(stack, "gc", "operator").post(f"/proposals/{pid}/approve", json={}).status_code == 403
    ), "an operator without the approver role cannot approve"
    approved = api(stack, "gc", "approver").post(f"/proposals/{pid}/approve", json={})
    assert approved.status_code == 200, approved.text
    wait_for(lambda: proposal_status(stack, "lc", pid) == "executed", what="execution")


def test_an_execution_token_with_a_different_config_is_refused(stack, device):
    pid = submit(stack, device, [*MEDIUM, " description uplink"])["proposal_id"]
    wait_for(lambda: proposal_status(stack, "rc", pid) == "awaiting_regional", what="review")
    api(stack, "rc", "approver").post(f"/proposals/{pid}/approve", json={})
    wait_for(lambda: proposal_status(stack, "lc", pid) == "executed", what="execution")
    (token,) = [t for t in nib_rows(stack["db_url"], execution_tokens) if t["proposal_id"] == pid]
    # What the LC received: the signed claims, times as the ISO text that was signed.
    presented = {
        k: as_utc(v).isoformat() if isinstance(v, datetime) else v
        for k, v in token.items()
        if k != "used_at"
    }
    response = api(stack, "lc", "operator").post(
        f"/proposals/{pid}/execute",
        json={
            "token": presented,
            "config_lines": ["no router bgp 65001"],
        },
    )
    assert response.status_code == 403, response.text
    assert "configuration differs" in response.json()["detail"]


def test_devices_filter_and_optimistic_concurrency(stack, device):
    client = api(stack, "lc", "operator")
    created = client.post(
        "/devices",
        json={
            "device_id": "core-9",
            "name": "core 9",
            "region": "region-b",
            "status": "maintenance",
        },
    )
    assert created.status_code == 201
    assert (
        client.post(
            "/devices", json={"device_id": "core-9", "name": "again", "region": "region-b"}
        ).status_code
        == 409
    )
    in_b = client.get("/devices", params={"region": "region-b"}).json()
    assert [d["device_id"] for d in in_b] == ["core-9"]
    in_maintenance = client.get("/devices", params={"status": "maintenance"}).json()
    assert {d["device_id"] for d in in_maintenance} == {"core-9"}

    first = client.patch("/devices/core-9", json={"version": 1, "status": "active"})
    assert first.status_code == 200 and first.json()["version"] == 2
    stale = client.patch("/devices/core-9", json={"version": 1, "name": "lost update"})
    assert stale.status_code == 409 and "read it again" in stale.json()["detail"]


def test_requests_without_or_with_a_wrong_key_are_refused(stack):
    url = f"{stack['lc'].url}/api/v1/devices"
    tls = stack["tls"]
    assert httpx.get(url, timeout=5, verify=tls).status_code == 401
    bad_key = {"X-API-Key": "pdsno_0000_bad"}
    assert httpx.get(url, headers=bad_key, timeout=5, verify=tls).status_code == 401
    auditor = api(stack, "lc", "auditor")
    refused = auditor.post("/devices", json={"device_id": "x", "name": "x", "region": "region-a"})
    assert refused.status_code == 403 and "devices:write" in refused.json()["detail"]


def test_bad_input_gets_a_4xx_with_a_reason(stack):
    client = api(stack, "lc", "operator")
    response = client.post("/devices", json={"device_id": "bad id!", "name": "", "region": "A"})
    assert response.status_code == 422
    assert {error["loc"][-1] for error in response.json()["detail"]} >= {"device_id", "region"}
    assert client.get("/proposals/does-not-exist").status_code == 404


# ---- policies, events, audit --------------------------------------------------


def test_a_global_policy_is_acknowledged_by_the_controllers_below(stack):
    published = api(stack, "gc", "admin").post(
        "/policies", json={"policy_id": "change-window", "body": {"weekday": "tue", "hours": 2}}
    )
    assert published.status_code == 201, published.text
    below = {stack[name].identity()["controller_id"] for name in ("rc", "lc")}

    def acknowledged():
        for policy in api(stack, "gc", "auditor").get("/policies").json():
            if policy["policy_id"] == "change-window":
                return below <= set(policy["acknowledged_by"])
        return False

    wait_for(acknowledged, what="acknowledgements from the RC and the LC")


def test_a_local_controller_cannot_publish_policy(stack):
    response = api(stack, "lc", "admin").post("/policies", json={"policy_id": "x", "body": {}})
    assert response.status_code == 403


def test_events_reach_an_mqtt_subscriber(stack, device):
    broker = stack["broker"]
    received: list[dict] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{stack['backend']}")
    cert_file, key_file = issue_once(stack["workdir"], "subscriber", server=False)
    client.tls_set_context(client_context(stack["workdir"] / "pki" / "ca.crt", cert_file, key_file))
    client.on_connect = lambda c, *_: c.subscribe("pdsno/v1/#", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, msg: received.append(
        {"topic": msg.topic, **json.loads(msg.payload)}
    )
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        pid = submit(stack, device, ["interface Gi0/2", " description spare"])["proposal_id"]
        wait_for(lambda: proposal_status(stack, "rc", pid) == "awaiting_regional", what="review")
        api(stack, "rc", "approver").post(f"/proposals/{pid}/approve", json={})

        def executed_event():
            return [
                e
                for e in received
                if e["event_type"] == "proposal.executed" and e["body"]["proposal_id"] == pid
            ]

        (event,) = wait_for(executed_event, what="the proposal.executed event")
        assert event["topic"] == f"pdsno/v1/{REGION}/proposal/executed"
        lc_key = stack["lc"].identity()["credential"]["claims"]["public_key"]
        unsigned = {k: v for k, v in event.items() if k not in ("signature", "topic")}
        assert verify_signature(lc_key, unsigned, event["signature"])
    finally:
        client.loop_stop()
        client.disconnect()


def test_audit_rows_cannot_be_updated_in_place(stack):
    engine = create_engine(stack["db_url"])
    try:
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(update(events).where(events.c.seq == 1).values(actor="x"))
    finally:
        engine.dispose()


# Last: it breaks the chain on purpose.
def test_tampering_with_one_audit_row_is_detected(stack):
    assert pdsno("audit", "verify", *stack["db"]).returncode == 0
    engine = create_engine(stack["db_url"])
    with engine.begin() as conn:
        target = conn.execute(select(events.c.seq).order_by(events.c.seq).offset(3).limit(1))
        seq = target.scalar_one()
        # The append-only triggers stop an ordinary UPDATE; an attacker with
        # owner rights drops them first, which is what verify must catch.
        if stack["backend"] == "postgresql":
            conn.execute(text("ALTER TABLE events DISABLE TRIGGER events_append_only"))
        else:
            conn.execute(text("DROP TRIGGER events_no_update"))
        conn.execute(update(events).where(events.c.seq == seq).values(actor="someone-else"))
    engine.dispose()
    result = pdsno("audit", "verify", *stack["db"])
    assert result.returncode == 1
    assert f"BROKEN at event {seq}" in result.stderr
