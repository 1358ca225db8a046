"""What the pdsno_controller role must leave on live hosts: controllers that
are validated, ready over TLS, sandboxed, back after kill -9 with the same
identity, and whose secrets are nowhere a user or log can see them.

side_effect.yml upgraded with rc broken, and rolled back: both run 0.1.0.
"""

from __future__ import annotations

import json
import time

import pytest
import testinfra

UNIT = "pdsno-controller.service"
CA = "/etc/pdsno/certs/ca.crt"
IDENTITY = "/var/lib/pdsno/identity.json"


@pytest.fixture(scope="module")
def hosts(request):
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory, sudo=True)
        for name in ("gc", "rc")
    }


@pytest.fixture(scope="module")
def gc(hosts):
    return hosts["gc"]


@pytest.fixture(scope="module")
def rc(hosts):
    return hosts["rc"]


@pytest.fixture(scope="module")
def settings(gc):
    return gc.ansible.get_variables()


def address(host) -> str:
    return host.ansible.get_variables()["ansible_host"]


# The hosts have python3, not curl: GET with the CA (or the system's) as trust.
PROBE = """
import ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2] or None)
try:
    answer = urllib.request.urlopen(sys.argv[1], context=ctx, timeout=5)
    print(answer.status); print(answer.read().decode())
except urllib.error.HTTPError as error:
    print(error.code); print(error.read().decode())
except (OSError, ssl.SSLError) as error:
    print(0); print(error)
"""


def get(host, url: str, cafile: str = CA) -> tuple[int, str]:
    result = host.run("python3 -c %s %s %s", PROBE, url, cafile)
    code, _, body = result.stdout.partition("\n")
    return (int(code) if code.strip().isdigit() else 0), body


LOGIN = """
import json, ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
body = json.dumps({"username": sys.argv[3], "password": sys.stdin.read()}).encode()
request = urllib.request.Request(sys.argv[1], body, {"Content-Type": "application/json"})
try:
    answer = urllib.request.urlopen(request, context=ctx, timeout=5)
    print(answer.status); print(answer.read().decode())
except urllib.error.HTTPError as error:
    print(error.code); print(error.read().decode())
"""


def login(host, username: str, password: str) -> tuple[int, str]:
    """POST /api/v1/auth/login over TLS; the password goes through stdin."""
    result = host.run(
        "printf %%s %s | python3 -c %s %s %s %s",
        password,
        LOGIN,
        f"https://{address(host)}:8001/api/v1/auth/login",
        CA,
        username,
    )
    code, _, body = result.stdout.partition("\n")
    return (int(code) if code.strip().isdigit() else 0), body


def ready(host) -> tuple[int, str]:
    """GET /health/ready over TLS, the certificate verified against the CA."""
    return get(host, f"https://{address(host)}:8001/health/ready")


def identity(host) -> dict:
    return json.loads(host.file(IDENTITY).content_string)


@pytest.mark.parametrize("name", ["gc", "rc"])
def test_ready_over_tls_verified_against_the_ca(hosts, name):
    code, body = ready(hosts[name])
    assert code == 200, body
    assert json.loads(body)["status"] == "ready"


def test_a_wrong_ca_is_refused(gc):
    # The system CAs do not know the PDSNO CA: the handshake fails.
    code, body = get(gc, f"https://{address(gc)}:8001/health/ready", cafile="")
    assert code == 0
    assert "CERTIFICATE_VERIFY_FAILED" in body


def test_the_regional_controller_is_validated_under_the_global_one(gc, rc):
    gc_id, rc_id = identity(gc)["controller_id"], identity(rc)["controller_id"]
    assert identity(rc)["parent_id"] == gc_id
    listing = gc.run(
        "systemd-run --quiet --wait --pipe --collect -p User=pdsno -p Group=pdsno "
        "-p 'SupplementaryGroups=pdsno-certs pdsno-certs-controller' "
        "-p LoadCredentialEncrypted=db_password:/etc/pdsno/credentials/db_password.cred "
        "/opt/pdsno/current/bin/pdsno controllers list --config /etc/pdsno/controller.yaml"
    )
    assert listing.rc == 0, listing.stderr
    rows = {row["controller_id"]: row for row in map(json.loads, listing.stdout.splitlines())}
    assert rows[gc_id]["type"] == "global" and rows[gc_id]["status"] == "active"
    assert rows[rc_id]["type"] == "regional" and rows[rc_id]["parent_id"] == gc_id


def test_the_inventory_s_operator_account_logs_in_with_its_role(gc, settings):
    account = settings["pdsno_controller_users"][0]
    code, body = login(gc, account["username"], account["password"])
    assert code == 200, body
    assert json.loads(body)["role"] == account["role"]
    code, body = login(gc, account["username"], account["password"] + "-wrong")
    assert code == 401, body


def test_runs_as_pdsno_from_the_versioned_virtualenv(rc):
    service = rc.service(UNIT)
    assert service.is_running and service.is_enabled
    pid = rc.check_output("systemctl show -p MainPID --value %s", UNIT)
    assert rc.check_output("ps -o user= -p %s", pid) == "pdsno"
    assert rc.file("/opt/pdsno/current").linked_to == "/opt/pdsno/0.1.0"


@pytest.mark.parametrize("name", ["gc", "rc"])
def test_sandbox_scores_at_most_2(hosts, name):
    output = hosts[name].check_output("systemd-analyze security --no-pager %s", UNIT)
    score = float(output.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    print(f"{name}: systemd-analyze security {UNIT}: {score}")
    assert score <= 2.0


@pytest.mark.parametrize("name", ["gc", "rc"])
def test_configuration_is_root_pdsno_0640(hosts, name):
    for path in ("/etc/pdsno/controller.yaml", "/etc/pdsno/logging.yaml"):
        config = hosts[name].file(path)
        assert (config.user, config.group, config.mode) == ("root", "pdsno", 0o640)
    credentials = hosts[name].file("/etc/pdsno/credentials")
    assert (credentials.user, credentials.mode) == ("root", 0o700)


def test_kill_9_is_back_within_10_seconds_with_the_same_id(rc):
    before = identity(rc)["controller_id"]
    pid = rc.check_output("systemctl show -p MainPID --value %s", UNIT)
    rc.run("kill -9 %s", pid)
    started = time.monotonic()
    while time.monotonic() - started < 10:
        if rc.check_output("systemctl show -p MainPID --value %s", UNIT) not in ("0", pid):
            code, _ = ready(rc)
            if code == 200:
                break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    print(f"kill -9: serving again after {elapsed:.1f} s")
    assert elapsed < 10
    assert identity(rc)["controller_id"] == before


@pytest.mark.parametrize("name", ["gc", "rc"])
def test_secrets_are_nowhere_to_be_seen(hosts, settings, name):
    """Read on the host, searched here: the values never reach a command line."""
    host = hosts[name]
    secrets = {
        "the master key": settings["pdsno_controller_master_key"],
        "the database password": settings["postgresql_password"],
    }
    places = {
        "systemctl show": f"systemctl show {UNIT}",
        "/proc/*/environ": "cat /proc/[0-9]*/environ | tr '\\0' '\\n'",
        "ps": "ps -eo args",
        "the journal": "journalctl --no-pager -o cat",
        "the unit file": f"systemctl cat {UNIT}",
        "the configuration": "cat /etc/pdsno/controller.yaml /etc/pdsno/logging.yaml",
    }
    for place, command in places.items():
        text = host.run(command).stdout
        assert text, f"nothing read from {place} on {name}"
        for what, secret in secrets.items():
            assert secret not in text, f"{what} is in {place} on {name}"
