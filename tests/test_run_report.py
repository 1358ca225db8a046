"""pdsno.platform.run_report: the JSON report a run leaves behind."""

import json


def test_report_counts_changes_per_host_and_names_changed_tasks(run_ansible, tmp_path):
    playbook = tmp_path / "sample.yml"
    playbook.write_text(
        """
- name: Sample
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Something that changes
      ansible.builtin.command: "true"
    - name: Something that does not
      ansible.builtin.command: "true"
      changed_when: false
"""
    )
    result = run_ansible("ansible-playbook", str(playbook))
    assert result.returncode == 0, result.stdout + result.stderr

    reports = list((tmp_path / "reports").glob("sample-*.json"))
    assert len(reports) == 1
    assert f"Run report: {reports[0]}" in result.stdout
    report = json.loads(reports[0].read_text())
    assert report["hosts"]["localhost"]["changed"] == 1
    assert report["hosts"]["localhost"]["ok"] == 2
    assert report["changed_total"] == 1
    assert report["failed_total"] == 0
    assert [event["task"] for event in report["events"]] == ["Something that changes"]


def test_report_records_a_failure(run_ansible, tmp_path):
    playbook = tmp_path / "broken.yml"
    playbook.write_text(
        """
- name: Broken
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Fail on purpose
      ansible.builtin.fail:
        msg: planned failure
"""
    )
    result = run_ansible("ansible-playbook", str(playbook))
    assert result.returncode != 0
    (report_path,) = (tmp_path / "reports").glob("broken-*.json")
    report = json.loads(report_path.read_text())
    assert report["failed_total"] == 1
    assert report["events"][0]["msg"] == "planned failure"
