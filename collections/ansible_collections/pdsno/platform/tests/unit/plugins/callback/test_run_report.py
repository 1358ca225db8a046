"""Unit tests of the pdsno.platform.run_report callback.

The callback is loaded by Ansible's plugin loader (so its documented options
work) and fed the events of a run; Ansible's own AggregateStats counts them.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible.executor.stats import AggregateStats
from ansible.plugins.loader import callback_loader


def event(host: str, task: str, **result: object) -> SimpleNamespace:
    """What the callback reads of a task result: host, task and result dict."""
    return SimpleNamespace(
        _host=SimpleNamespace(get_name=lambda: host),
        _task=SimpleNamespace(get_name=lambda: task, action="ansible.builtin.command"),
        _result=result,
    )


@pytest.fixture
def callback(tmp_path: Path):
    plugin = callback_loader.get("pdsno.platform.run_report")
    assert plugin is not None, "the collection is not on the collections path"
    plugin.set_options(direct={"report_dir": str(tmp_path / "reports")})
    plugin.v2_playbook_on_start(SimpleNamespace(_file_name="/somewhere/site.yml"))
    return plugin


def reports(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "reports").glob("site-*.json"))]


def test_counts_per_host_and_lists_changed_and_failed_tasks(callback, tmp_path: Path) -> None:
    stats = AggregateStats()
    callback.v2_runner_on_ok(event("db1", "Write pg_hba.conf", changed=True))
    stats.increment("ok", "db1")
    stats.increment("changed", "db1")
    callback.v2_runner_on_ok(event("db1", "Read the version", changed=False))
    stats.increment("ok", "db1")
    callback.v2_runner_on_failed(event("broker1", "Start mosquitto", msg="Unable to start"))
    stats.increment("failures", "broker1")
    callback.v2_runner_on_failed(event("broker1", "Probe", msg="ignored"), ignore_errors=True)
    stats.increment("ignored", "broker1")
    callback.v2_playbook_on_stats(stats)

    (report,) = reports(tmp_path)
    assert report["playbook"] == "site"
    assert report["hosts"]["db1"]["ok"] == 2 and report["hosts"]["db1"]["changed"] == 1
    assert report["hosts"]["broker1"]["failures"] == 1
    assert report["changed_total"] == 1 and report["failed_total"] == 1
    assert [(e["host"], e["task"], e["outcome"]) for e in report["events"]] == [
        ("db1", "Write pg_hba.conf", "changed"),
        ("broker1", "Start mosquitto", "failed"),
    ]
    assert report["events"][1]["msg"] == "Unable to start"


def test_unreachable_counts_as_failed(callback, tmp_path: Path) -> None:
    stats = AggregateStats()
    callback.v2_runner_on_unreachable(event("web1", "Gathering Facts", msg="timeout"))
    stats.increment("dark", "web1")
    callback.v2_playbook_on_stats(stats)
    (report,) = reports(tmp_path)
    assert report["failed_total"] == 1
    assert report["events"][0]["outcome"] == "unreachable"


def test_two_runs_in_one_second_keep_both_reports(callback, tmp_path: Path) -> None:
    stats = AggregateStats()
    stats.increment("ok", "db1")
    callback.v2_playbook_on_stats(stats)
    callback.v2_playbook_on_stats(stats)
    assert len(reports(tmp_path)) == 2
