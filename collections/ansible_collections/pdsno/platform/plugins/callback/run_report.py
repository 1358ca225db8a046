# Copyright: PDSNO Platform engineers
# Apache License 2.0
"""Write a JSON report of a playbook run."""

from __future__ import annotations

DOCUMENTATION = r"""
name: run_report
type: aggregate
short_description: Write a JSON report of each playbook run
description:
  - Records, per host, the counts of ok, changed, failed, skipped and
    unreachable tasks, and lists every changed or failed task with its host.
  - Writes them to C(<report_dir>/<playbook>-<UTC time>.json) when the run
    ends and prints that path, so that an operator can prove a second run
    changed nothing or see what a run did.
requirements:
  - enable in ansible.cfg (callbacks_enabled)
options:
  report_dir:
    description: Directory the reports are written to; created if missing.
    default: reports
    type: path
    env:
      - name: PDSNO_REPORT_DIR
    ini:
      - section: callback_run_report
        key: report_dir
"""

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pdsno.platform.run_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._playbook_name = "playbook"
        self._started = time.monotonic()
        self._events: list[dict[str, Any]] = []

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._playbook_name = Path(playbook._file_name).stem
        self._started = time.monotonic()

    def _record(self, result: Any, outcome: str) -> None:
        self._events.append(
            {
                "host": result._host.get_name(),
                "task": result._task.get_name(),
                "action": result._task.action,
                "outcome": outcome,
                "msg": str(result._result.get("msg", ""))[:500] if outcome != "changed" else "",
            }
        )

    def v2_runner_on_ok(self, result: Any) -> None:
        if result._result.get("changed", False):
            self._record(result, "changed")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            self._record(result, "failed")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = {
            host: {
                key: summary[key]
                for key in (
                    "ok",
                    "changed",
                    "failures",
                    "unreachable",
                    "skipped",
                    "rescued",
                    "ignored",
                )
                if key in summary
            }
            for host in sorted(stats.processed)
            for summary in [stats.summarize(host)]
        }
        report = {
            "playbook": self._playbook_name,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_seconds": round(time.monotonic() - self._started, 1),
            "hosts": hosts,
            "changed_total": sum(h.get("changed", 0) for h in hosts.values()),
            "failed_total": sum(
                h.get("failures", 0) + h.get("unreachable", 0) for h in hosts.values()
            ),
            "events": self._events,
        }
        report_dir = Path(self.get_option("report_dir"))
        report_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = report_dir / f"{self._playbook_name}-{stamp}.json"
        suffix = 1
        while path.exists():  # two runs within one second
            suffix += 1
            path = report_dir / f"{self._playbook_name}-{stamp}-{suffix}.json"
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        self._display.display(
            f"Run report: {path} (changed={report['changed_total']}, "
            f"failed={report['failed_total']})"
        )
