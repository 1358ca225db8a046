"""roles/verify's report module: statuses, waivers, threshold and the three reports."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parent.parent / "roles/verify/library/pdsno_verify_report.py"

CHECKLIST = [
    {
        "id": "PDSNO-01",
        "title": "TLS",
        "severity": "critical",
        "applies_to": ["ctl"],
        "checks": [{"name": "unit"}, {"name": "tls", "where": "probe"}],
    },
    {
        "id": "PDSNO-06",
        "title": "Firewall",
        "severity": "critical",
        "applies_to": ["ctl", "db"],
        "checks": [{"name": "nft"}],
    },
    {
        "id": "PDSNO-11",
        "title": "Audit",
        "severity": "high",
        "applies_to": ["db"],
        "checks": [{"name": "log"}],
    },
    {
        "id": "PDSNO-19",
        "title": "Dependencies",
        "severity": "high",
        "applies_to": ["control"],
        "checks": [{"name": "scan", "where": "control"}],
    },
    {
        "id": "PDSNO-22",
        "title": "Backup",
        "severity": "critical",
        "applies_to": ["backup"],
        "checks": [{"name": "pgbackrest"}],
    },
]


def result(item: str, name: str, status: str, reason: str) -> dict:
    return {"item": item, "check": f"{item}.1", "name": name, "status": status, "reason": reason}


def run(tmp_path: Path, **params) -> dict:
    args = {
        "checklist": CHECKLIST,
        "hosts": [
            {
                "name": "gc1",
                "groups": ["ctl"],
                "results": [
                    result("PDSNO-01", "unit", "pass", "active"),
                    result("PDSNO-01", "tls", "pass", "TLSv1.2 only"),
                    result("PDSNO-06", "nft", "fail", "table inet pdsno absent"),
                ],
            },
            {
                "name": "db1",
                "groups": ["db"],
                "results": [
                    result("PDSNO-06", "nft", "pass", "policy drop"),
                    result("PDSNO-11", "log", "fail", "no journal upload"),
                ],
            },
            {
                "name": "control-node",
                "groups": ["control"],
                "results": [
                    result("PDSNO-19", "scan", "fail", "no scan step"),
                ],
            },
        ],
        "report_dir": str(tmp_path / "out"),
        **params,
    }
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    answer = subprocess.run(
        [sys.executable, str(MODULE), str(argfile)], capture_output=True, text=True, check=False
    )
    return json.loads(answer.stdout)


def test_statuses_and_threshold(tmp_path):
    out = run(tmp_path)
    assert out["cells"]["PDSNO-01"] == {"gc1": "pass"}
    assert out["cells"]["PDSNO-06"] == {"gc1": "fail", "db1": "pass"}
    assert out["cells"]["PDSNO-22"] == {}  # no host of its groups: not applicable
    assert out["blocking"] == ["PDSNO-06 on gc1 (critical)"]  # high failures do not block
    assert run(tmp_path, severity_threshold="high")["blocking"] == [
        "PDSNO-06 on gc1 (critical)",
        "PDSNO-11 on db1 (high)",
        "PDSNO-19 on control-node (high)",
    ]
    assert run(tmp_path, severity_threshold="none")["blocking"] == []


def test_waivers_valid_expired_and_unneeded(tmp_path):
    out = run(
        tmp_path,
        waivers=[
            {
                "id": "PDSNO-06",
                "reason": "firewall lands next week",
                "expires": "2999-01-01",
                "hosts": ["gc1"],
            },
            {"id": "PDSNO-11", "reason": "old excuse", "expires": "2000-01-01"},
            {"id": "PDSNO-01", "reason": "not needed", "expires": "2999-01-01"},
        ],
    )
    assert out["cells"]["PDSNO-06"] == {"gc1": "waived", "db1": "pass"}
    assert out["cells"]["PDSNO-11"] == {"db1": "fail"}  # an expired waiver is a failure
    assert out["cells"]["PDSNO-01"] == {"gc1": "pass"}
    assert out["blocking"] == []
    db1 = json.loads((tmp_path / "out/hosts/db1.json").read_text())
    audit = next(i for i in db1["items"] if i["id"] == "PDSNO-11")
    assert audit["reason"].startswith("waiver expired on 2000-01-01: old excuse")


@pytest.mark.parametrize(
    "waiver",
    [
        {"id": "PDSNO-99", "reason": "x", "expires": "2999-01-01"},
        {"id": "PDSNO-06", "reason": "", "expires": "2999-01-01"},
        {"id": "PDSNO-06", "reason": "x", "expires": "soon"},
    ],
)
def test_bad_waiver_refused(tmp_path, waiver):
    out = run(tmp_path, waivers=[waiver])
    assert out.get("failed") and "waivers file is invalid" in out["msg"]


def test_missing_probes_and_unreachable_hosts_fail(tmp_path):
    out = run(tmp_path, probe_missing="no probe host", unreachable=["db1"])
    assert out["cells"]["PDSNO-01"] == {"gc1": "fail"}
    assert out["cells"]["PDSNO-06"]["db1"] == "fail"
    gc1 = json.loads((tmp_path / "out/hosts/gc1.json").read_text())
    tls = next(i for i in gc1["items"] if i["id"] == "PDSNO-01")
    assert "not probed: no probe host" in tls["reason"]


def test_reports_written(tmp_path):
    run(tmp_path)
    # Our own output, just written.
    suite = ET.parse(tmp_path / "out/junit.xml").getroot().find("testsuite")  # noqa: S314
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "3", "1")
    markdown = (tmp_path / "out/summary.md").read_text()
    assert (
        "| PDSNO-06 Firewall | critical | **FAIL**: nft: table inet pdsno absent | pass:"
        in markdown
    )
    assert "PDSNO-22: not applicable: no host of backup" in markdown
