"""Bad input to the base role fails before any change, naming the variable."""

import json

import pytest
import yaml


def inventory_with(tmp_path, host_vars: dict):
    inventory = {
        "all": {
            "children": {
                "pdsno_controllers": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_become": False,
                            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                            **host_vars,
                        }
                    }
                }
            }
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return str(path)


@pytest.mark.parametrize(
    ("host_vars", "expected"),
    [
        ({"base_apt_cache_valid_time": "an hour"}, "base_apt_cache_valid_time"),
        ({"base_journald_storage": "disk"}, "base_journald_storage"),
        ({"base_timesync_ntp_servers": {"a": 1}}, "base_timesync_ntp_servers"),
        ({"base_journald_system_max_use": "half the disk"}, "base_journald_system_max_use"),
        ({"base_sysctl_overrides": {"net.ipv4.ip_forward": 1}}, "forwarding"),
    ],
)
def test_bad_variable_fails_before_any_change(run_ansible, tmp_path, host_vars, expected):
    result = run_ansible(
        "ansible-playbook", "-i", inventory_with(tmp_path, host_vars), "playbooks/base.yml"
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output

    (report_path,) = (tmp_path / "reports").glob("base-*.json")
    report = json.loads(report_path.read_text())
    assert report["changed_total"] == 0
    failed_tasks = [e["task"] for e in report["events"] if e["outcome"] == "failed"]
    # The check, then the playbook's last play stopping the host for it
    # (playbooks/failed_concerns.yml).
    assert len(failed_tasks) == 2, failed_tasks
    assert failed_tasks[1] == "Fail the hosts on which a concern failed, naming it"
    task_name = failed_tasks[0].split(" : ")[-1]
    assert task_name.startswith(("Validating arguments", "Check ")), task_name
