"""Bad input to the pgbackrest role fails before any change, naming the variable,
and never shows the repository's passphrase."""

import json

import pytest
import yaml

PASSPHRASE = "pytest-passphrase-that-must-never-show"  # noqa: S105 (a test value)
GOOD = {"pgbackrest_cipher_pass": PASSPHRASE}


def inventory_with(tmp_path, host_vars: dict):
    host = {
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        **host_vars,
    }
    inventory = {
        "all": {
            "children": {
                "pdsno_controllers": {"hosts": {}},
                "pdsno_databases": {"hosts": {"localhost": host}},
                "pdsno_backup_hosts": {"hosts": {"localhost": None}},
            }
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return str(path)


def assert_failed_early(result, tmp_path, playbook: str, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output
    assert PASSPHRASE not in output

    (report_path,) = (tmp_path / "reports").glob(f"{playbook}-*.json")
    report = json.loads(report_path.read_text())
    assert report["changed_total"] == 0
    failed_tasks = [e["task"] for e in report["events"] if e["outcome"] == "failed"]
    assert len(failed_tasks) == 1
    task_name = failed_tasks[0].split(" : ")[-1]
    assert task_name.startswith(("Validating arguments", "Check ")), task_name


@pytest.mark.parametrize(
    ("host_vars", "expected"),
    [
        ({"pgbackrest_cipher_pass": None}, "pgbackrest_cipher_pass"),
        ({"pgbackrest_cipher_pass": ""}, "pgbackrest_cipher_pass (the repository's encryption"),
        ({"pgbackrest_cipher_pass": "too-short"}, "pgbackrest_cipher_pass (the repository's"),
        ({"pgbackrest_retention_full": 0}, "pgbackrest_retention_full (0)"),
        ({"pgbackrest_retention_full": "two"}, "pgbackrest_retention_full"),
        ({"pgbackrest_retention_diff": -1}, "pgbackrest_retention_diff (-1)"),
        ({"pgbackrest_retention_full_type": "forever"}, "pgbackrest_retention_full_type"),
        ({"pgbackrest_port": 70000}, "pgbackrest_port (70000)"),
        ({"pgbackrest_stanza": "nib; rm"}, "pgbackrest_stanza (nib; rm)"),
        ({"pgbackrest_repo_path": "backups"}, "pgbackrest_repo_path is backups"),
        ({"pgbackrest_full_on_calendar": "daily; rm -rf /"}, "pgbackrest_full_on_calendar"),
        ({"pgbackrest_restore_hosts": ["nib-02"]}, "unknown: nib-02"),
    ],
)
def test_bad_variable_fails_before_any_change(run_ansible, tmp_path, host_vars, expected):
    merged = {**GOOD, **host_vars}
    host_vars = {name: value for name, value in merged.items() if value is not None}
    result = run_ansible(
        "ansible-playbook", "-i", inventory_with(tmp_path, host_vars), "playbooks/backup.yml"
    )
    assert_failed_early(result, tmp_path, "backup", expected)


@pytest.mark.parametrize(
    ("extra_vars", "expected"),
    [
        *(
            ({"pgbackrest_restore_target_time": target_time}, "pgbackrest_restore_target_time")
            for target_time in ["yesterday", "2026-12-03 16:20:00", "2026-12-03 16:20:00+00; DROP"]
        ),
        # Before the check, a host outside the inventory matched no host and
        # the playbook ended green having restored nothing.
        ({"restore_nib_host": "nib-02"}, "an inventory host (nib-02)"),
        ({"restore_nib_switch_controllers": True}, ") needs restore_nib_host"),
        ({"restore_nib_switch_controllers": "maybe"}, "switch_controllers (true or false"),
    ],
)
def test_bad_restore_input_fails_before_any_change(run_ansible, tmp_path, extra_vars, expected):
    result = run_ansible(
        "ansible-playbook",
        "-i",
        inventory_with(tmp_path, GOOD),
        "playbooks/restore_nib.yml",
        "-e",
        json.dumps(extra_vars),
    )
    assert_failed_early(result, tmp_path, "restore_nib", expected)
