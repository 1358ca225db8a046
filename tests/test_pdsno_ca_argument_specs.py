"""Bad input to the pdsno_ca role fails before any change, naming the variable."""

import json

import pytest
import yaml

PASSPHRASE = "pytest-passphrase-that-must-never-show"  # noqa: S105 (a test value)


def inventory_with(tmp_path, host_vars: dict):
    inventory = {
        "all": {
            "children": {
                "pdsno_ca": {"hosts": {}},
                "pdsno_controllers": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_become": False,
                            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                            "pdsno_ca_dir": str(tmp_path / "ca"),
                            "pdsno_cert_dir": str(tmp_path / "certs"),
                            "pdsno_trust_bundle": str(tmp_path / "certs" / "ca.crt"),
                            **host_vars,
                        }
                    }
                },
            }
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return str(path)


@pytest.mark.parametrize(
    ("host_vars", "expected"),
    [
        ({}, "pdsno_ca_passphrase"),
        ({"pdsno_ca_passphrase": "short"}, "pdsno_ca_passphrase must be at least 12"),
        ({"pdsno_ca_leaf_key_type": "dsa"}, "pdsno_ca_leaf_key_type"),
        ({"pdsno_ca_authority_key_type": "ed448"}, "pdsno_ca_authority_key_type"),
        ({"pdsno_ca_leaf_key_curve": "brainpoolP256r1"}, "pdsno_ca_leaf_key_curve"),
        ({"pdsno_ca_leaf_lifetime_days": 400}, "pdsno_ca_leaf_lifetime_days is 400"),
        (
            {"pdsno_ca_leaf_lifetime_days_by_service": {"mosquitto": 730}},
            "pdsno_ca_leaf_lifetime_days_by_service",
        ),
        (
            {"pdsno_ca_leaf_key_type": "rsa", "pdsno_ca_leaf_key_size": 1024},
            "pdsno_ca_leaf_key_size is 1024",
        ),
        (
            {"pdsno_ca_authority_key_type": "rsa", "pdsno_ca_authority_key_size": 1024},
            "pdsno_ca_authority_key_size is 1024",
        ),
        (
            {"pdsno_ca_leaf_lifetime_days": 30, "pdsno_ca_renew_before_days": 30},
            "pdsno_ca_renew_before_days is 30",
        ),
        ({"pdsno_ca_authority_lifetime_days": 36500}, "pdsno_ca_authority_lifetime_days"),
        ({"pdsno_ca_services": ["nginx"]}, "pdsno_ca_services"),
        ({"pdsno_ca_host": "nowhere"}, "pdsno_ca_host is nowhere"),
        ({"pdsno_ca_current": "ca1", "pdsno_ca_trusted": ["ca1"]}, "pdsno_ca_trusted"),
        ({"pdsno_ca_extra_sans": ["bad name; rm -rf"]}, "pdsno_ca_extra_sans"),
    ],
)
def test_bad_variable_fails_before_any_change(run_ansible, tmp_path, host_vars, expected):
    host_vars = {"pdsno_ca_passphrase": PASSPHRASE, **host_vars} if host_vars else {}
    result = run_ansible(
        "ansible-playbook", "-i", inventory_with(tmp_path, host_vars), "playbooks/ca.yml"
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output
    assert PASSPHRASE not in output

    (report_path,) = (tmp_path / "reports").glob("ca-*.json")
    report = json.loads(report_path.read_text())
    assert report["changed_total"] == 0
    failed_tasks = [e["task"] for e in report["events"] if e["outcome"] == "failed"]
    # The check, then the playbook's last play stopping the host for it
    # (playbooks/failed_concerns.yml).
    assert len(failed_tasks) == 2, failed_tasks
    assert failed_tasks[1] == "Fail the hosts on which a concern failed, naming it"
    task_name = failed_tasks[0].split(" : ")[-1]
    assert task_name.startswith(("Validating arguments", "Check ")), task_name
    assert not (tmp_path / "ca").exists()
    assert not (tmp_path / "certs").exists()
