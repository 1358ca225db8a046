"""The verify role's API probes against a real controller with its default
login rate limit (a burst of 5, then one per 5 s per address).

One verify run logs in about 13 times per controller from one address. The
full-stack scenario found PDSNO-12 and PDSNO-13 failing on a sound
deployment because their logins met the API's 429; the probes must wait as
Retry-After says, as any client of the API should.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from hierarchy import ControllerProcess, controller_settings, pdsno_ok

LIBRARY = Path(__file__).resolve().parents[1] / "roles/verify/library/pdsno_verify_probe.py"
spec = importlib.util.spec_from_file_location("pdsno_verify_probe", LIBRARY)
verify_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verify_probe)

AUDITOR = ("verify-auditor", "Verify-auditor-password-1")
LOCKOUT = ("verify-lockout", "Verify-lockout-password-1")


def create_user(db_url: str, username: str, password: str, role: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pdsno.cli",
            "user",
            "create",
            "--db-url",
            db_url,
            "--username",
            username,
            "--role",
            role,
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("probe")
    db_url = f"sqlite:///{workdir / 'nib.db'}"
    pdsno_ok("db", "upgrade", "--db-url", db_url)
    create_user(db_url, *AUDITOR, "auditor")
    create_user(db_url, *LOCKOUT, "operator")
    controller = ControllerProcess(
        "gc1", workdir, controller_settings(workdir, "gc1", "global", db_url)
    )
    controller.start()
    target = {
        "name": "localhost",
        "address": "127.0.0.1",
        "ports": {"api": controller.settings["listen_port"]},
        "groups": ["pdsno_controllers"],
    }
    cadata = (workdir / "pki" / "ca.crt").read_text()
    yield verify_probe.Probe(target, cadata, timeout=5)
    controller.stop()


def test_lockout_and_session_pass_after_the_login_burst_is_spent(probe):
    # What the checks before them leave: the login burst of this address spent.
    for _ in range(5):
        probe.api("POST", "/api/v1/auth/login", {"username": "nobody", "password": "x"})
    credentials = {
        "auditor_username": AUDITOR[0],
        "auditor_password": AUDITOR[1],
        "lockout_username": LOCKOUT[0],
        "lockout_password": LOCKOUT[1],
    }
    result, reason = probe.api_lockout(credentials)
    assert result == verify_probe.PASS, reason
    result, reason = probe.api_session(credentials)
    assert result == verify_probe.PASS, reason
