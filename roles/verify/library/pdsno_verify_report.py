#!/usr/bin/python
"""Judge the PDSNO checklist results and write the reports on the control node."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: pdsno_verify_report
short_description: Judge the checklist results, apply waivers, write JSON, JUnit, Markdown
description:
  - Runs on the control node. Merges the host, probe and control-node results
    of roles/verify, decides each item's status on each host (pass, fail,
    waived, not_applicable, with the reason), applies the waivers (an expired
    waiver is a failure) and writes one JSON file per host, a JUnit XML file
    and a Markdown table item x host into I(report_dir).
  - Writes only into I(report_dir), on the control node.
options:
  checklist:
    description: The items (id, title, severity, applies_to, stands_for).
    type: list
    elements: dict
    required: true
  hosts:
    description: Each checked host with name, groups and results.
    type: list
    elements: dict
    required: true
  unreachable:
    description: Hosts of the play that could not be checked; each of their items fails.
    type: list
    elements: str
    default: []
  probe_missing:
    description: Why the probes did not run (empty when they did); each probe check fails with it.
    type: str
    default: ""
  waivers:
    description: Waived item IDs, each with id, reason, expires (YYYY-MM-DD) and optional hosts.
    type: list
    elements: dict
    default: []
  severity_threshold:
    description: Items failing at or above this severity are blocking; none blocks nothing.
    type: str
    default: critical
    choices: [low, medium, high, critical, none]
  report_dir:
    description: Directory on the control node for the reports.
    type: path
    required: true
  title:
    description: What was verified, for the report headings.
    type: str
    default: PDSNO deployment
author: PDSNO Platform engineers
"""

RETURN = r"""
counts:
  description: Item x host cells by status.
  returned: always
  type: dict
blocking:
  description: Failing cells at or above the severity threshold, as "ID on host (severity)".
  returned: always
  type: list
markdown:
  description: Path of the Markdown summary.
  returned: always
  type: str
"""

SEVERITIES = ["low", "medium", "high", "critical"]
CONTROL = "control-node"


def check_waivers(waivers: list[dict], ids: set[str]) -> list[str]:
    errors = []
    for number, waiver in enumerate(waivers, start=1):
        where = f"waiver {number} ({waiver.get('id', 'no id')})"
        if waiver.get("id") not in ids:
            errors.append(f"{where}: id must be one of {min(ids)} .. {max(ids)}")
        if not str(waiver.get("reason", "")).strip():
            errors.append(f"{where}: reason is empty")
        try:
            date.fromisoformat(str(waiver.get("expires")))
        except ValueError:
            errors.append(
                f"{where}: expires must be a date YYYY-MM-DD, got {waiver.get('expires')!r}"
            )
    return errors


def judge(checks: list[dict]) -> tuple[str, str]:
    failed = [c for c in checks if c["status"] == "fail"]
    passed = [c for c in checks if c["status"] == "pass"]
    if failed:
        return "fail", "; ".join(f"{c['name']}: {c['reason']}" for c in failed)
    if passed:
        return "pass", "; ".join(f"{c['name']}: {c['reason']}" for c in passed)
    if checks:
        return "not_applicable", "; ".join(c["reason"] for c in checks)
    return "not_applicable", "no check of this item applies to this host's groups"


def missing_probes(item: dict, groups: list[str], why: str) -> list[dict]:
    return [
        {
            "item": item["id"],
            "check": f"{item['id']}.{n}",
            "name": c["name"],
            "status": "fail",
            "reason": f"not probed: {why}",
        }
        for n, c in enumerate(item.get("checks", []), start=1)
        if c.get("where") == "probe" and set(groups) & set(c.get("groups", item["applies_to"]))
    ]


def apply_waiver(cell: dict, waivers: list[dict], host: str, today: date) -> None:
    for waiver in waivers:
        if waiver["id"] != cell["id"] or (waiver.get("hosts") and host not in waiver["hosts"]):
            continue
        expires = date.fromisoformat(str(waiver["expires"]))
        if expires < today:
            cell["status"] = "fail"
            cell["reason"] = f"waiver expired on {expires}: {waiver['reason']}; {cell['reason']}"
        elif cell["status"] == "fail":
            cell["status"] = "waived"
            cell["reason"] = (
                f"waived until {expires}: {waiver['reason']}; failing: {cell['reason']}"
            )
        else:
            cell["reason"] += f" (a waiver until {expires} exists and is not needed)"
        return


def short(text: str, limit: int = 140) -> str:
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cell_text(text: str, limit: int) -> str:
    """Text for a Markdown table cell."""
    return short(text, limit).replace("|", "\\|")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "checklist": {"type": "list", "elements": "dict", "required": True},
            "hosts": {"type": "list", "elements": "dict", "required": True},
            "waivers": {"type": "list", "elements": "dict", "default": []},
            "unreachable": {"type": "list", "elements": "str", "default": []},
            "probe_missing": {"type": "str", "default": ""},
            "severity_threshold": {
                "type": "str",
                "default": "critical",
                "choices": [*SEVERITIES, "none"],
            },
            "report_dir": {"type": "path", "required": True},
            "title": {"type": "str", "default": "PDSNO deployment"},
        },
        supports_check_mode=True,
    )
    p = module.params
    items = p["checklist"]
    errors = check_waivers(p["waivers"], {i["id"] for i in items})
    if errors:
        module.fail_json(msg="the waivers file is invalid: " + "; ".join(errors))
    today = datetime.now(UTC).date()
    threshold = (
        SEVERITIES.index(p["severity_threshold"]) if p["severity_threshold"] != "none" else 99
    )

    hosts = p["hosts"]
    cells: dict[str, dict[str, dict]] = {}
    for item in items:
        row = cells.setdefault(item["id"], {})
        for host in hosts:
            if not set(host["groups"]) & set(item["applies_to"]):
                continue
            checks = [r for r in host["results"] if r["item"] == item["id"]]
            if p["probe_missing"].strip() and host["name"] != CONTROL:
                checks += missing_probes(item, host["groups"], p["probe_missing"].strip())
            status, reason = judge(checks)
            if host["name"] in p["unreachable"]:
                status, reason = "fail", "host unreachable: not checked"
            cell = {"id": item["id"], "status": status, "reason": reason, "checks": checks}
            apply_waiver(cell, p["waivers"], host["name"], today)
            row[host["name"]] = cell

    counts = {"pass": 0, "fail": 0, "waived": 0, "not_applicable": 0}
    blocking = []
    for item in items:
        for name, cell in cells[item["id"]].items():
            counts[cell["status"]] += 1
            if cell["status"] == "fail" and SEVERITIES.index(item["severity"]) >= threshold:
                blocking.append(f"{item['id']} on {name} ({item['severity']})")
        if not cells[item["id"]]:
            counts["not_applicable"] += 1

    out = Path(p["report_dir"])
    (out / "hosts").mkdir(parents=True, exist_ok=True)
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    for host in hosts:
        document = {
            "host": host["name"],
            "groups": host["groups"],
            "generated": generated,
            "items": [
                {
                    "id": i["id"],
                    "title": i["title"],
                    "severity": i["severity"],
                    **{k: v for k, v in cells[i["id"]][host["name"]].items() if k != "id"},
                }
                for i in items
                if host["name"] in cells[i["id"]]
            ],
        }
        with (out / "hosts" / f"{host['name']}.json").open("w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
            f.write("\n")

    # JUnit: one test case per item and host; waived and not applicable are skipped.
    suite = ET.Element("testsuite", name="pdsno-verify", timestamp=generated)
    for item in items:
        name = f"{item['id']} {item['title']}"
        row = cells[item["id"]] or {"inventory": None}
        for host, cell in row.items():
            case = ET.SubElement(suite, "testcase", classname=f"pdsno-verify.{host}", name=name)
            if cell is None:
                reason = f"no host of {', '.join(item['applies_to'])} among the hosts checked"
                ET.SubElement(case, "skipped", message=f"not applicable: {reason}")
            elif cell["status"] == "fail":
                failure = ET.SubElement(
                    case, "failure", message=short(cell["reason"], 300), type=item["severity"]
                )
                failure.text = cell["reason"]
            elif cell["status"] in ("waived", "not_applicable"):
                message = f"{cell['status']}: {short(cell['reason'], 300)}"
                ET.SubElement(case, "skipped", message=message)
            else:
                ET.SubElement(case, "system-out").text = cell["reason"]
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
    suite.set("errors", "0")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    ET.ElementTree(root).write(out / "junit.xml", encoding="UTF-8", xml_declaration=True)

    # Markdown: the table item x host, then every finding in full.
    columns = [h["name"] for h in hosts]
    lines = [
        f"# PDSNO security checklist: {p['title']}",
        "",
        f"Generated {generated}. Severity threshold: {p['severity_threshold']}. "
        f"Cells: {counts['pass']} pass, {counts['fail']} fail, {counts['waived']} waived, "
        f"{counts['not_applicable']} not applicable.",
        "",
        "| item | severity | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    labels = {"pass": "pass", "fail": "**FAIL**", "waived": "waived", "not_applicable": "n/a"}
    findings = []
    for item in items:
        row = cells[item["id"]]
        values = []
        for name in columns:
            cell = row.get(name)
            if cell is None:
                values.append("")
                continue
            values.append(f"{labels[cell['status']]}: {cell_text(cell['reason'], 90)}")
            if cell["status"] != "pass":
                label = labels[cell["status"]]
                findings.append(f"- {item['id']} on {name}: {label}: {short(cell['reason'], 4000)}")
        title = item["title"] + (
            f" (checked by: {item['stands_for']})" if item.get("stands_for") else ""
        )
        if not row:
            groups = ", ".join(item["applies_to"])
            findings.append(
                f"- {item['id']}: not applicable: no host of {groups} among the hosts checked"
            )
            title += f" (n/a: no host of {groups} among the hosts checked)"
        lines.append(
            f"| {item['id']} {cell_text(title, 160)} | {item['severity']} | "
            + " | ".join(values)
            + " |"
        )
    lines += ["", "An empty cell: the item does not apply to the host's groups.", ""]
    if blocking:
        lines += (
            [f"## Blocking (at or above {p['severity_threshold']})", ""]
            + [f"- {b}" for b in blocking]
            + [""]
        )
    lines += ["## Findings", ""] + (findings or ["None: every applicable item passes."]) + [""]
    markdown = str(out / "summary.md")
    Path(markdown).write_text("\n".join(lines), encoding="utf-8")
    summary = {
        "generated": generated,
        "threshold": p["severity_threshold"],
        "counts": counts,
        "blocking": blocking,
        "markdown": markdown,
        "cells": {i: {h: c["status"] for h, c in row.items()} for i, row in cells.items()},
    }
    with (out / "summary.json").open("w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    module.exit_json(
        changed=False,
        counts=counts,
        blocking=blocking,
        markdown=markdown,
        junit=str(out / "junit.xml"),
        cells=summary["cells"],
    )


if __name__ == "__main__":
    main()
