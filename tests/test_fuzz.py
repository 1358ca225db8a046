"""Fuzzing a running controller: the API answers bad input with a 4xx, never a 500.

A real global controller (TLS, its own process), once on SQLite and once on
PostgreSQL:

- schemathesis generates requests from the OpenAPI each listener serves
  (the operator API with an admin key, the peer listener with a client
  certificate of the CA) and checks every answer: no server error, a status
  code, a content type and a body that the schema documents. Bounded by
  FUZZ_SECONDS per listener and backend.
- hypothesis strategies for what generic fuzzers rarely produce: lone
  surrogates, NUL and other control characters, NaN and Infinity, integers
  beyond 64 bits, and correctly signed peer messages with wrong bodies.

Each run's figures (requests, server errors, schema violations) are written
to FUZZ_REPORT_DIR (default: the test's temporary directory) and printed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hierarchy import ControllerProcess, controller_settings, issue_once, pdsno_ok, peer_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select

from pdsno.messaging.envelope import seal
from pdsno.nib.schema import message_nonces
from pdsno.security.keys import SigningKey

FUZZ_SECONDS = int(os.environ.get("PDSNO_FUZZ_SECONDS", "30"))
HYPOTHESIS_EXAMPLES = int(os.environ.get("PDSNO_FUZZ_EXAMPLES", "50"))
# What schemathesis checks on every answer (issue 16), plus the Allow header of a 405.
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
    )
)
REGION = "eu-west"
FUZZ_SETTINGS = settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def controller(request, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A running global controller, an admin key, and clients for both listeners."""
    workdir: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "postgresql":
        db_url = request.getfixturevalue("postgres_server").create_database()
    else:
        db_url = f"sqlite:///{workdir / 'nib.db'}"
    pdsno_ok("db", "upgrade", "--db-url", db_url)
    settings_ = controller_settings(
        workdir,
        "gc-fuzz",
        "global",
        db_url,
        # The fuzzer is one client sending as fast as it can: rate limits
        # would answer most of it with 429 and test nothing else.
        limits={"rate_limit_enabled": False},
        http={"docs_enabled": False},
    )
    process = ControllerProcess("gc-fuzz", workdir, settings_)
    process.start()
    key = pdsno_ok(
        "apikey", "create", "--name", "fuzz-admin", "--role", "admin", "--db-url", db_url
    )
    cert, cert_key = issue_once(workdir, "fuzzer", server=False)
    engine = create_engine(db_url)
    api = httpx.Client(base_url=process.url, verify=process.verify, headers={"X-API-Key": key})
    peer = httpx.Client(base_url=process.peer_url, verify=peer_client(workdir, "fuzzer"))
    try:
        yield {
            "backend": request.param,
            "process": process,
            "workdir": workdir,
            "db_url": db_url,
            "engine": engine,
            "key": key,
            "ca": workdir / "pki" / "ca.crt",
            "cert": cert,
            "cert_key": cert_key,
            "api": api,
            "peer": peer,
        }
    finally:
        api.close()
        peer.close()
        engine.dispose()
        process.stop()


def assert_alive(controller: dict[str, Any]) -> None:
    process: ControllerProcess = controller["process"]
    assert process.process is not None and process.process.poll() is None, "controller died"
    assert controller["api"].get("/health/live").status_code == 200


# ---- schemathesis over the served OpenAPI ----------------------------------


def schemathesis_run(
    controller: dict[str, Any], listener: str, report_dir: Path
) -> subprocess.CompletedProcess[str]:
    process: ControllerProcess = controller["process"]
    base = process.url if listener == "api" else process.peer_url
    config = report_dir / "schemathesis.toml"
    # Credentials by the schemes the schema names (APIKeyHeader): an operation
    # that takes a session only (logout) gets none, as a key cannot log out.
    # A body over the size cap is refused with 413 before it is parsed: a
    # rejection like 422, so it counts as one for schema-violating data.
    config.write_text(
        '[auth.openapi.APIKeyHeader]\napi_key = "${PDSNO_FUZZ_API_KEY}"\n\n'
        "[checks.negative_data_rejection]\n"
        "expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]\n"
    )
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(config),
        "run",
        f"{base}/openapi.json",
        "--checks",
        CHECKS,
        "--max-time",
        str(FUZZ_SECONDS),
        "--max-examples",
        "200",
        # One worker: with two, hypothesis's lambda descriptions (ast.parse in
        # threads) crash schemathesis on Python 3.11 now and then.
        "--workers",
        "1",
        "--seed",
        "16",
        "--continue-on-failure",
        "--request-timeout",
        "10",
        "--tls-verify",
        str(controller["ca"]),
        "--report",
        "json,har",
        "--report-json-path",
        str(report_dir / "run.json"),
        "--report-har-path",
        str(report_dir / "requests.har"),
        "--output-truncate",
        "true",
    ]
    if listener == "peer":  # the peer listener wants a client certificate of the CA
        command += ["--request-cert", str(controller["cert"])]
        command += ["--request-cert-key", str(controller["cert_key"])]
    return subprocess.run(
        command,
        cwd=report_dir,  # where schemathesis keeps its example database
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS * 4 + 120,
        check=False,
        env={
            **os.environ,
            "NO_COLOR": "1",
            "SCHEMATHESIS_TELEMETRY": "false",
            "PDSNO_FUZZ_API_KEY": controller["key"],
        },
    )


def summarize(report_dir: Path) -> dict[str, Any]:
    """Requests and their statuses (from the HAR), failures by kind (from the run report)."""
    har = json.loads((report_dir / "requests.har").read_text())
    statuses = Counter(entry["response"]["status"] for entry in har["log"]["entries"])
    run = json.loads((report_dir / "run.json").read_text())
    failures = Counter()
    for failure in run["failures"]:
        failures[f"{failure['code']} {failure['title']}"] += failure.get("count", 1)
    return {
        "requests": sum(statuses.values()),
        "test_cases": run["test_cases"]["generated"],
        "server_errors": sum(n for status, n in statuses.items() if status >= 500),
        # Every other failure is the API answering what its schema does not say.
        "schema_violations": sum(n for kind, n in failures.items() if "ST101" not in kind),
        "statuses": dict(sorted(statuses.items())),
        "failures": dict(failures),
        "seconds": round(run["running_time"], 1),
    }


@pytest.mark.parametrize("listener", ["api", "peer"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(controller, listener, tmp_path):
    report_dir = Path(os.environ.get("FUZZ_REPORT_DIR", tmp_path))
    report_dir = report_dir / f"{controller['backend']}-{listener}"
    report_dir.mkdir(parents=True, exist_ok=True)
    result = schemathesis_run(controller, listener, report_dir)
    summary = summarize(report_dir)
    summary |= {"backend": controller["backend"], "listener": listener}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nfuzz {controller['backend']}/{listener}: {json.dumps(summary)}")
    assert summary["requests"] > 100, result.stdout[-3000:] + result.stderr[-2000:]
    assert summary["server_errors"] == 0, result.stdout[-6000:]
    assert summary["schema_violations"] == 0, result.stdout[-6000:]
    assert summary["failures"] == {}, result.stdout[-6000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert_alive(controller)


# ---- targeted strategies ---------------------------------------------------

# Text a JSON encoder can carry but the NIB cannot hold, mixed with ordinary text.
nasty_characters = st.one_of(
    st.characters(categories=["Cs"]),  # lone surrogates
    st.characters(categories=["Cc"]),  # NUL and the other control characters
    st.sampled_from(["\x00", "\ud800", "\udfff", "\u2028", "\ufeff"]),
    st.characters(codec="utf-8"),
)
nasty_text = st.text(nasty_characters, min_size=1, max_size=40)
huge_integers = st.one_of(
    st.integers(min_value=2**31 - 2, max_value=2**31 + 2),
    st.integers(min_value=2**63 - 2, max_value=2**63 + 2),
    st.integers(min_value=-(2**64), max_value=-1),
    st.integers(min_value=2**64, max_value=2**80),
)
nasty_numbers = st.one_of(
    huge_integers, st.sampled_from([math.nan, math.inf, -math.inf]), st.floats()
)
nasty_scalars = st.one_of(st.none(), st.booleans(), nasty_numbers, nasty_text, st.text())
nasty_json = st.recursive(
    nasty_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(nasty_text, children, max_size=4)
    ),
    max_leaves=12,
)


def encode(document: Any) -> bytes:
    """JSON as a careless client writes it: NaN and Infinity as words, lone
    surrogates as \\u escapes (ensure_ascii)."""
    return json.dumps(document, allow_nan=True, ensure_ascii=True).encode()


def assert_4xx_or_success(response: httpx.Response, what: str) -> None:
    """Not a server error; a refusal is JSON that says why."""
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), what
        assert response.json()["detail"], what


def post_json(client: httpx.Client, path: str, document: Any) -> httpx.Response:
    return client.post(path, content=encode(document), headers={"Content-Type": "application/json"})


@FUZZ_SETTINGS
@given(
    device=st.fixed_dictionaries(
        {},
        optional={
            "device_id": nasty_text,
            "name": nasty_text,
            "region": nasty_text,
            "status": st.one_of(st.none(), nasty_text),
            "vendor": nasty_scalars,
            "management_address": nasty_scalars,
        },
    ),
    version=st.one_of(huge_integers, nasty_scalars),
)
def test_devices_refuse_what_the_nib_cannot_hold(controller, device, version):
    api = controller["api"]
    assert_4xx_or_success(post_json(api, "/api/v1/devices", device), f"POST {device!r}")
    patch = {**{k: v for k, v in device.items() if k != "device_id"}, "version": version}
    response = api.patch(
        "/api/v1/devices/sw-fuzz",
        content=encode(patch),
        headers={"Content-Type": "application/json"},
    )
    assert_4xx_or_success(response, f"PATCH {patch!r}")


@FUZZ_SETTINGS
@given(policy_id=st.one_of(st.just("fuzz-policy"), nasty_text), body=nasty_json)
def test_policies_take_strict_json_only(controller, policy_id, body):
    response = post_json(
        controller["api"], "/api/v1/policies", {"policy_id": policy_id, "body": body}
    )
    assert_4xx_or_success(response, f"POST /policies {body!r}")


@FUZZ_SETTINGS
@given(username=nasty_text, password=st.one_of(nasty_text, nasty_scalars))
def test_login_refuses_undecodable_credentials(controller, username, password):
    response = post_json(
        controller["api"], "/api/v1/auth/login", {"username": username, "password": password}
    )
    assert_4xx_or_success(response, f"login {username!r}")
    assert response.status_code != 200


def url_text(value: str) -> str:
    """Percent-encoded as a client would, lone surrogates as their raw bytes."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


TEXT_URLS = [
    "GET /api/v1/devices?status={}",
    "GET /api/v1/devices?region={}",
    "GET /api/v1/proposals?status={}",
    "GET /api/v1/events?event_type={}",
    "GET /api/v1/devices/{}",
    "PATCH /api/v1/devices/{}",
    "GET /api/v1/proposals/{}",
    "GET /api/v1/controllers/{}",
    "DELETE /api/v1/auth/users/{}/sessions",
]
NUMBER_URLS = [
    "GET /api/v1/devices?offset={}",
    "GET /api/v1/devices?limit={}",
    "GET /api/v1/proposals?limit={}",
    "GET /api/v1/events?after_seq={}",
    "GET /api/v1/events?limit={}",
]


@FUZZ_SETTINGS
@given(
    request=st.one_of(
        st.tuples(st.sampled_from(TEXT_URLS), nasty_text.map(url_text)),
        st.tuples(st.sampled_from(NUMBER_URLS), huge_integers.map(str)),
    )
)
def test_urls_with_nasty_text_and_huge_numbers(controller, request):
    template, value = request
    method, url = template.format(value).split(" ", 1)
    body = {"content": b'{"version": 1}'} if method == "PATCH" else {}
    response = controller["api"].request(
        method, url, headers={"Content-Type": "application/json"}, **body
    )
    assert_4xx_or_success(response, f"{method} {url}")


@pytest.fixture(scope="module")
def child(controller) -> dict[str, Any]:
    """A regional controller admitted over the peer listener, as a real one joins."""
    key = SigningKey.generate()
    token = pdsno_ok(
        "token",
        "create",
        "--region",
        REGION,
        "--type",
        "regional",
        "--db-url",
        controller["db_url"],
    )
    request = {
        "token": token,
        "controller_type": "regional",
        "region": REGION,
        "name": "rc-fuzz",
        "public_key": key.public_key_b64,
    }
    peer = controller["peer"]
    challenge = peer.post("/api/v1/validation/challenge", json=request)
    assert challenge.status_code == 200, challenge.text
    nonce = challenge.json()["nonce"]
    claims = {k: request[k] for k in ("controller_type", "region", "name", "public_key")}
    admitted = peer.post(
        "/api/v1/validation/register",
        # The joining controller's URL is part of what it signs (none here).
        json={"nonce": nonce, "signature": key.sign({"nonce": nonce, **claims, "url": None})},
    )
    assert admitted.status_code == 201, admitted.text
    return {"id": admitted.json()["controller_id"], "key": key}


def nonces_of(controller: dict[str, Any], sender_id: str) -> int:
    with controller["engine"].connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(message_nonces)
            .where(message_nonces.c.sender_id == sender_id)
        ).scalar_one()


message_types = st.sampled_from(
    ["proposal.review", "proposal.escalate", "proposal.approved", "policy.published"]
)
wrong_bodies = st.one_of(
    st.just({}),
    st.dictionaries(
        st.sampled_from(["proposal_id", "policy_id", "policy_version", "token", "extra"]),
        nasty_json,
        max_size=3,
    ),
    st.fixed_dictionaries({"proposal_id": st.one_of(huge_integers, nasty_text)}),
    st.fixed_dictionaries({"policy_id": st.just("p"), "policy_version": nasty_numbers}),
)


@FUZZ_SETTINGS
@given(message_type=message_types, body=wrong_bodies)
def test_signed_messages_with_wrong_bodies_record_nothing(controller, child, message_type, body):
    """Signed by a registered controller, so only the body can be wrong:
    refused before the nonce is recorded, or by the handler, which leaves
    it unused too."""
    peer_gc = controller["process"].identity()["controller_id"]
    before = nonces_of(controller, child["id"])
    try:
        envelope = seal(
            message_type, body, sender_id=child["id"], recipient_id=peer_gc, signer=child["key"]
        )
    except ValueError:  # NaN or a lone surrogate: nothing can sign it, so nobody sends it
        envelope = seal(
            message_type, {}, sender_id=child["id"], recipient_id=peer_gc, signer=child["key"]
        )
        envelope["body"] = body
    response = post_json(controller["peer"], "/api/v1/messages", envelope)
    assert_4xx_or_success(response, f"{message_type} {body!r}")
    assert response.status_code >= 400, f"{message_type} {body!r} was accepted"
    assert nonces_of(controller, child["id"]) == before, f"{message_type} {body!r} left a nonce"
