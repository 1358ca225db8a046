"""Operators log in: argon2id passwords, sessions, lockout, revocation, the CLI.

In-process (TestClient) against the real app on a real NIB, once on SQLite
and once on PostgreSQL. `build_api` is shared with test_rbac.py and
test_route_permissions.py.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from pdsno import audit
from pdsno.api.app import create_app
from pdsno.approval.classifier import RuleClassifier
from pdsno.approval.executor import load_executor
from pdsno.approval.workflow import ApprovalWorkflow
from pdsno.auth import api_keys, sessions, users
from pdsno.cli import main
from pdsno.clock import as_utc, utcnow
from pdsno.config import AuthSettings, Settings
from pdsno.context import ControllerContext
from pdsno.identity import bootstrap
from pdsno.messaging.dispatcher import Dispatcher
from pdsno.nib.schema import events
from pdsno.nib.schema import sessions as sessions_table
from pdsno.nib.schema import users as users_table
from pdsno.security.keys import SigningKey, sha256_hex

PASSWORD = "correct horse battery staple"  # noqa: S105  # a test password
WRONG = "not the password at all"


@dataclass
class Api:
    """The operator API of a global controller, in process, and helpers to call it."""

    client: TestClient
    ctx: ControllerContext
    engine: Engine

    def key(
        self, role: str, *, region: str | None = None, scopes: list[str] | None = None
    ) -> dict[str, str]:
        with self.engine.begin() as conn:
            key = api_keys.create(conn, name=f"{role}-key", role=role, region=region, scopes=scopes)
        return {"X-API-Key": key}

    def user(self, username: str, role: str, *, region: str | None = None) -> None:
        with self.engine.begin() as conn:
            users.create(conn, username=username, password=PASSWORD, role=role, region=region)

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        return self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )

    def session(self, username: str) -> dict[str, str]:
        response = self.login(username)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def user_row(self, username: str) -> Any:
        with self.engine.connect() as conn:
            return users.get(conn, username)

    def events(self, event_type: str) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(
                select(events).where(events.c.event_type == event_type).order_by(events.c.seq)
            ).all()


def build_api(engine: Engine, **auth: Any) -> tuple[Api, httpx.Client]:
    """A global controller's context on `engine` (no background threads) and its API app.

    These tests change sessions and keys in the NIB behind the API's back, so
    the cache of verified credentials is off unless a test sets it.
    """
    auth.setdefault("cache_seconds", 0)
    settings = Settings(
        type="global",
        db_url=str(engine.url),
        tls={"enabled": False, "allow_insecure_http": True},
        auth=AuthSettings(**auth),
        # Rate limits (pdsno.api.middleware) would get in the way of counting failed
        # logins and of calling every route in turn.
        limits={
            "rate_per_second": 10_000.0,
            "burst": 10_000,
            "login_rate_per_second": 10_000.0,
            "login_burst": 10_000,
        },
    )
    signer = SigningKey.generate()
    with engine.begin() as conn:
        identity = bootstrap.register_root(
            conn, name="gc-test", public_key=signer.public_key_b64, url=None, signer=signer
        )
    http = httpx.Client(base_url="http://127.0.0.1:9", timeout=1)
    dispatcher = Dispatcher(engine, sender_id=identity.controller_id, signer=signer, http=http)
    workflow = ApprovalWorkflow(
        engine=engine,
        identity=identity,
        signer=signer,
        settings=settings.approval,
        classifier=RuleClassifier.default(),
        executor=load_executor("nib-recorder"),
        messenger=dispatcher,
    )
    ctx = ControllerContext(settings, engine, identity, signer, workflow, dispatcher)
    client = TestClient(create_app(ctx, surface="api"), base_url="http://127.0.0.1")
    return Api(client, ctx, engine), http


@pytest.fixture
def api(nib_engine) -> Iterator[Api]:
    built, http = build_api(nib_engine)
    with built.client:
        yield built
    http.close()


# ---- logging in ---------------------------------------------------------------


def test_login_me_logout(api):
    api.user("alice", "operator", region="region-a")
    response = api.login("alice")
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["cache-control"] == "no-store"
    assert body["token_type"] == "bearer"  # noqa: S105
    assert (body["username"], body["role"], body["region"]) == ("alice", "operator", "region-a")
    bearer = {"Authorization": f"Bearer {body['token']}"}

    me = api.client.get("/api/v1/auth/me", headers=bearer)
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "alice" and me.json()["kind"] == "session"
    assert "devices:write" in me.json()["permissions"]
    assert "events:read" not in me.json()["permissions"]

    # Only the SHA-256 of the token is stored.
    with api.engine.connect() as conn:
        (row,) = conn.execute(select(sessions_table)).all()
    assert row.token_hash == sha256_hex(body["token"].encode())
    assert body["token"] not in row

    assert api.client.post("/api/v1/auth/logout", headers=bearer).status_code == 204
    after = api.client.get("/api/v1/auth/me", headers=bearer)
    assert after.status_code == 401 and "revoked" in after.json()["detail"]
    assert [e.subject for e in api.events("auth.login")] == ["alice"]
    assert [e.subject for e in api.events("auth.logout")] == ["alice"]


def test_passwords_are_stored_as_argon2id_hashes_only(api):
    api.user("bob", "auditor")
    row = api.user_row("bob")
    assert row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in str(tuple(row))
    assert PasswordHasher().verify(row.password_hash, PASSWORD)
    # Nor is it in the audit trail.
    with api.engine.connect() as conn:
        assert all(PASSWORD not in str(tuple(e)) for e in conn.execute(select(events)))


def test_a_hash_made_with_other_parameters_is_redone_at_login(api):
    api.user("carol", "operator")
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    with api.engine.begin() as conn:
        conn.execute(
            update(users_table).where(users_table.c.username == "carol").values(password_hash=weak)
        )
    assert api.login("carol").status_code == 200
    rehashed = api.user_row("carol").password_hash
    assert rehashed != weak and not users.HASHER.check_needs_rehash(rehashed)
    assert PasswordHasher().verify(rehashed, PASSWORD)
    assert api.events("auth.login")[-1].payload["rehashed"] is True
    # Up to date now: the next login leaves it alone.
    assert api.login("carol").status_code == 200
    assert api.user_row("carol").password_hash == rehashed


def test_session_lifetime_is_bounded_by_the_setting(nib_engine):
    with pytest.raises(ValueError):
        AuthSettings(session_ttl_seconds=8 * 3600 + 1)
    short, http = build_api(nib_engine, session_ttl_seconds=600)
    with short.client:
        short.user("dave", "approver")
        before = utcnow()
        body = short.login("dave").json()
    http.close()
    expires = as_utc(datetime.fromisoformat(body["expires_at"]))
    assert timedelta(seconds=599) <= expires - before <= timedelta(seconds=605)
    with nib_engine.connect() as conn:
        (row,) = conn.execute(select(sessions_table)).all()
    assert as_utc(row.expires_at) - as_utc(row.created_at) == timedelta(seconds=600)


def test_an_expired_session_is_refused(api):
    api.user("erin", "operator")
    bearer = api.session("erin")
    assert api.client.get("/api/v1/devices", headers=bearer).status_code == 200
    with api.engine.begin() as conn:
        conn.execute(update(sessions_table).values(expires_at=utcnow() - timedelta(seconds=1)))
    refused = api.client.get("/api/v1/devices", headers=bearer)
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    assert refused.headers["www-authenticate"].startswith("Bearer")


def test_an_admin_revokes_a_users_sessions(api):
    api.user("frank", "operator")
    first, second = api.session("frank"), api.session("frank")
    operator = api.key("operator")
    refused = api.client.delete("/api/v1/auth/users/frank/sessions", headers=operator)
    assert refused.status_code == 403 and "sessions:revoke" in refused.json()["detail"]

    admin = api.key("admin")
    revoked = api.client.delete("/api/v1/auth/users/frank/sessions", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json() == {"username": "frank", "revoked": 2}
    for bearer in (first, second):
        after = api.client.get("/api/v1/auth/me", headers=bearer)
        assert after.status_code == 401 and "revoked" in after.json()["detail"]
    assert api.client.delete("/api/v1/auth/users/nobody/sessions", headers=admin).status_code == 404
    assert api.events("auth.sessions_revoked")[-1].actor == "admin-key"
    # A new login still works.
    assert api.login("frank").status_code == 200


def test_logout_needs_a_session_not_an_api_key(api):
    response = api.client.post("/api/v1/auth/logout", headers=api.key("operator"))
    assert response.status_code == 400 and "apikey revoke" in response.json()["detail"]


def test_missing_or_bad_credentials_are_401(api):
    url = "/api/v1/devices"
    api.user("gina", "operator")
    good_session = api.session("gina")
    good_key = api.key("operator")
    cases = {
        "none": {},
        "bad bearer": {"Authorization": "Bearer pdsno-s-notarealtoken"},
        "malformed bearer": {"Authorization": "Bearer x"},
        "basic": {"Authorization": "Basic Z2luYTpwdw=="},
        "bad key": {"X-API-Key": "pdsno_0000_bad"},
        "both": {**good_session, **good_key},
    }
    for case, headers in cases.items():
        response = api.client.get(url, headers=headers)
        assert response.status_code == 401, case
        assert response.headers["www-authenticate"].startswith("Bearer"), case
    assert api.client.get(url, headers=good_session).status_code == 200
    assert api.client.get(url, headers=good_key).status_code == 200


def test_a_disabled_user_can_neither_log_in_nor_use_a_session(api):
    api.user("hank", "operator")
    bearer = api.session("hank")
    with api.engine.begin() as conn:
        assert users.disable(conn, "hank") == 1
    assert api.client.get("/api/v1/auth/me", headers=bearer).status_code == 401
    refused = api.login("hank")
    assert refused.status_code == 401 and refused.json()["detail"] == users.LOGIN_REFUSED
    assert api.events("auth.login_failed")[-1].payload["reason"] == "disabled"


# ---- lockout ----------------------------------------------------------------------


class SpyHasher(PasswordHasher):
    """Records which hashes logins verify against."""

    def __init__(self) -> None:
        super().__init__()
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


def test_five_failures_lock_the_account_until_the_lock_time_passes(api, monkeypatch):
    api.user("ivan", "operator")
    spy = SpyHasher()
    monkeypatch.setattr(users, "HASHER", spy)
    threshold = api.ctx.settings.auth.lockout_threshold
    assert threshold == 5
    for _ in range(threshold):
        refused = api.login("ivan", WRONG)
        assert refused.status_code == 401
        assert refused.json()["detail"] == users.LOGIN_REFUSED
    failures = api.events("auth.login_failed")
    assert [e.payload["failures"] for e in failures] == [1, 2, 3, 4, 5]
    assert {e.payload["reason"] for e in failures} == {"wrong_password"}
    (locked,) = api.events("auth.locked")
    assert locked.subject == "ivan" and locked.payload["failures"] == 5
    row = api.user_row("ivan")
    assert as_utc(row.locked_until) > utcnow() + timedelta(seconds=800)

    # Locked: even the right password is refused, with the same answer, and
    # the password is not checked against the user's hash.
    spy.verified.clear()
    during = api.login("ivan", PASSWORD)
    assert during.status_code == 401 and during.json()["detail"] == users.LOGIN_REFUSED
    assert row.password_hash not in spy.verified
    assert len(spy.verified) == 1, "the decoy check spends the same hashing time"
    assert api.events("auth.login_failed")[-1].payload["reason"] == "locked"
    assert len(api.events("auth.locked")) == 1

    # The lock time passes.
    with api.engine.begin() as conn:
        conn.execute(
            update(users_table)
            .where(users_table.c.username == "ivan")
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )
    assert api.login("ivan", PASSWORD).status_code == 200
    row = api.user_row("ivan")
    assert row.failed_logins == 0 and row.locked_until is None
    assert api.events("auth.login")[-1].subject == "ivan"


def test_a_short_lock_from_the_settings_ends_by_itself(nib_engine):
    quick, http = build_api(nib_engine, lockout_threshold=2, lockout_seconds=1)
    with quick.client:
        quick.user("judy", "operator")
        assert quick.login("judy", WRONG).status_code == 401
        assert quick.login("judy", WRONG).status_code == 401
        assert quick.login("judy").status_code == 401, "locked"
        time.sleep(1.2)  # past the one-second lock
        assert quick.login("judy").status_code == 200
    http.close()


def test_a_success_resets_the_failure_count(api):
    api.user("kim", "operator")
    for _ in range(4):
        assert api.login("kim", WRONG).status_code == 401
    assert api.user_row("kim").failed_logins == 4
    assert api.login("kim").status_code == 200
    assert api.user_row("kim").failed_logins == 0
    for _ in range(4):
        assert api.login("kim", WRONG).status_code == 401
    assert api.login("kim").status_code == 200, "four failures after a success do not lock"
    assert api.events("auth.locked") == []


def test_an_unknown_user_gets_the_same_answer_and_costs_a_hash(api, monkeypatch):
    api.user("lena", "operator")
    spy = SpyHasher()
    monkeypatch.setattr(users, "HASHER", spy)
    wrong_password = api.login("lena", WRONG)
    unknown = api.login("nobody-here", WRONG)
    assert wrong_password.status_code == unknown.status_code == 401
    assert wrong_password.json() == unknown.json() == {"detail": users.LOGIN_REFUSED}
    assert len(spy.verified) == 2, "both spent one argon2 verification"
    failed = api.events("auth.login_failed")
    assert [(e.subject, e.payload["reason"]) for e in failed] == [
        ("lena", "wrong_password"),
        ("nobody-here", "unknown_user"),
    ]
    # Unknown users are never locked, and nothing is stored for them.
    for _ in range(6):
        assert api.login("nobody-here", WRONG).json() == {"detail": users.LOGIN_REFUSED}
    with api.engine.connect() as conn:
        assert [r.username for r in conn.execute(select(users_table))] == ["lena"]


def test_audit_chain_stays_intact_through_logins(api):
    api.user("mia", "operator")
    for _ in range(6):
        api.login("mia", WRONG)
    assert audit.verify(api.engine).intact


# ---- the CLI ----------------------------------------------------------------------


def run_cli(monkeypatch, capsys, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse refusing the arguments
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_user_commands(nib_engine, nib_url, monkeypatch, capsys):
    db = ["--db-url", nib_url]
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "user",
        "create",
        "--username",
        "nora",
        "--role",
        "approver",
        "--region",
        "region-a",
        *db,
        stdin=PASSWORD + "\n",
    )
    assert code == 0 and "created user nora" in out
    with nib_engine.connect() as conn:
        row = users.get(conn, "nora")
    assert (row.role, row.region) == ("approver", "region-a")
    assert row.password_hash.startswith("$argon2id$")
    assert users.HASHER.verify(row.password_hash, PASSWORD)

    # Twice at a terminal: they must match.
    monkeypatch.setattr("sys.stdin", Terminal())
    typed = iter(["first password 123", "second password 456"])
    monkeypatch.setattr("getpass.getpass", lambda _prompt="": next(typed))
    code, _, err = run_cli(monkeypatch, capsys, "user", "passwd", "--username", "nora", *db)
    assert code == 1 and "differ" in err
    typed = iter(["a new password 789"] * 2)
    code, out, _ = run_cli(monkeypatch, capsys, "user", "passwd", "--username", "nora", *db)
    assert code == 0 and "changed" in out

    short = run_cli(monkeypatch, capsys, "user", "passwd", "--username", "nora", *db, stdin="x\n")
    assert short[0] == 1 and "at least 12" in short[2]
    reserved = run_cli(
        monkeypatch,
        capsys,
        "user",
        "create",
        "--username",
        "ctl",
        "--role",
        "controller",
        *db,
        stdin=PASSWORD + "\n",
    )
    assert reserved[0] == 2, "argparse refuses the reserved role"
    again = run_cli(
        monkeypatch,
        capsys,
        "user",
        "create",
        "--username",
        "nora",
        "--role",
        "operator",
        *db,
        stdin=PASSWORD + "\n",
    )
    assert again[0] == 1 and "already exists" in again[2]

    # Lock, unlock, sessions, disable.
    with nib_engine.begin() as conn:
        conn.execute(
            update(users_table)
            .where(users_table.c.username == "nora")
            .values(failed_logins=3, locked_until=utcnow() + timedelta(hours=1))
        )
        user_id = users.get(conn, "nora").user_id
        sessions.create(conn, user_id, ttl_seconds=600)
        sessions.create(conn, user_id, ttl_seconds=600)
    assert run_cli(monkeypatch, capsys, "user", "unlock", "--username", "nora", *db)[0] == 0
    with nib_engine.connect() as conn:
        row = users.get(conn, "nora")
    assert row.failed_logins == 0 and row.locked_until is None

    code, out, _ = run_cli(monkeypatch, capsys, "session", "revoke", "--username", "nora", *db)
    assert code == 0 and "ended 2 session(s)" in out
    code, out, _ = run_cli(monkeypatch, capsys, "user", "disable", "--username", "nora", *db)
    assert code == 0 and "disabled nora" in out
    code, out, _ = run_cli(monkeypatch, capsys, "user", "list", *db)
    assert code == 0 and '"disabled": true' in out and "argon2" not in out
    assert run_cli(monkeypatch, capsys, "user", "enable", "--username", "nora", *db)[0] == 0
    with nib_engine.connect() as conn:
        assert not users.get(conn, "nora").disabled
    missing = run_cli(monkeypatch, capsys, "user", "unlock", "--username", "ghost", *db)
    assert missing[0] == 1 and "no user ghost" in missing[2]

    with nib_engine.connect() as conn:
        kinds = [
            e.event_type
            for e in conn.execute(select(events).order_by(events.c.seq))
            if e.event_type.startswith(("user.", "auth."))
        ]
    assert kinds == [
        "user.created",
        "user.password_changed",
        "user.unlocked",
        "auth.sessions_revoked",
        "user.disabled",
        "user.enabled",
    ]
    assert audit.verify(nib_engine).intact


def test_refusals_and_locks_are_counted_for_metrics(nib_engine):
    quick, http = build_api(nib_engine, lockout_threshold=2)
    counted: list[str] = []

    class Recorder:
        def count_login_failure(self) -> None:
            counted.append("failure")

        def count_lockout(self) -> None:
            counted.append("lockout")

    quick.ctx.metrics = Recorder()  # what the runtime sets when metrics are on
    with quick.client:
        quick.user("olaf", "operator")
        quick.login("olaf", WRONG)
        quick.login("olaf", WRONG)
        quick.login("nobody", WRONG)
        quick.login("olaf")  # locked
    http.close()
    assert (counted.count("failure"), counted.count("lockout")) == (4, 1)


def test_a_revocation_made_elsewhere_applies_within_the_cache_time(nib_engine):
    api, _ = build_api(nib_engine, cache_seconds=0.5)
    client = api.client
    headers = api.key("auditor")
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    with nib_engine.begin() as conn:  # another controller revokes it
        api_keys.revoke(conn, headers["X-API-Key"].split("_")[1])
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200, "cached"
    time.sleep(0.6)
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 401
