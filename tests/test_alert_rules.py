"""The Prometheus alerting rules load, and each alert fires when it should and
only then (monitoring/alerts.test.yml), as promtool judges them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is missing: the alert rule tests need it. Run `make deps` "
            "(it installs the apt package prometheus, which ships promtool).",
            pytrace=False,
        )
    return subprocess.run(
        [binary, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_alert_rules_are_valid():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_fires_and_stays_quiet_as_the_unit_tests_expect():
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_exercised_firing_and_not_firing():
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts >= {
        "PdsnoCertificateExpiringSoon",
        "PdsnoControllerDown",
        "PdsnoMetricsAbsent",
        "PdsnoHighHttpErrorRate",
        "PdsnoAuthLockouts",
        "PdsnoProposalsStuckWaiting",
        "PdsnoSecretKeyTooOld",
        "PdsnoBackupTooOld",
        "PdsnoBackupVerifyFailed",
    }
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert firing == alerts, alerts - firing
    assert quiet == alerts, alerts - quiet
