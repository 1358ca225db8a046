"""Bad input to the postgresql role fails before any change, naming the variable,
and never shows the password."""

import json

import pytest
import yaml

PASSWORD = "pytest-password-that-must-never-show"  # noqa: S105 (a test value)
GOOD = {"postgresql_password": PASSWORD}


def inventory_with(tmp_path, host_vars: dict):
    inventory = {
        "all": {
            "children": {
                "pdsno_controllers": {"hosts": {}},
                "pdsno_databases": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_become": False,
                            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
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


def assert_failed_early(
    result, tmp_path, playbook: str, expected: str, *, concern_playbook: bool = True
) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output
    assert PASSWORD not in output

    (report_path,) = (tmp_path / "reports").glob(f"{playbook}-*.json")
    report = json.loads(report_path.read_text())
    assert report["changed_total"] == 0
    failed_tasks = [e["task"] for e in report["events"] if e["outcome"] == "failed"]
    if concern_playbook:
        # The check, then the playbook's last play stopping the host for it
        # (playbooks/failed_concerns.yml).
        assert len(failed_tasks) == 2, failed_tasks
        assert failed_tasks[1] == "Fail the hosts on which a concern failed, naming it"
    else:
        assert len(failed_tasks) == 1, failed_tasks
    task_name = failed_tasks[0].split(" : ")[-1]
    assert task_name.startswith(("Validating arguments", "Check ")), task_name


@pytest.mark.parametrize(
    ("host_vars", "expected"),
    [
        ({"postgresql_password": None}, "postgresql_password"),
        ({"postgresql_password": "short"}, "postgresql_password must be at least 16"),
        ({"postgresql_database": "NIB-prod"}, "postgresql_database (NIB-prod)"),
        ({"postgresql_user": "postgres"}, "cannot be the superuser postgres"),
        ({"postgresql_port": "fivefourthreetwo"}, "postgresql_port"),
        ({"postgresql_port": 70000}, "postgresql_port is 70000"),
        ({"postgresql_listen_addresses": ["*"]}, "no wildcard"),
        ({"postgresql_listen_addresses": ["0.0.0.0"]}, "no wildcard"),  # noqa: S104
        ({"postgresql_client_groups": ["pdsno_controlers"]}, "names pdsno_controlers"),
        ({"postgresql_extra_client_networks": ["10.0.0.1/24"]}, "Offending entry: 10.0.0.1/24"),
        ({"postgresql_extra_client_networks": ["300.0.0.0/8"]}, "Offending entry: 300.0.0.0/8"),
        ({"postgresql_clientcert": "required"}, "postgresql_clientcert"),
        ({"postgresql_ssl_min_protocol_version": "TLSv1"}, "postgresql_ssl_min_protocol_version"),
        ({"postgresql_ssl_ciphers": "HIGH'; ssl = off"}, "postgresql_ssl_ciphers"),
        ({"postgresql_log_statement": "everything"}, "postgresql_log_statement"),
        ({"postgresql_log_line_prefix": "%m "}, "postgresql_log_line_prefix must"),
        ({"postgresql_tls_key": "certs/postgresql.key"}, "postgresql_tls_key is certs/"),
        ({"postgresql_settings": {"ssl": False}}, "Offending entry: ssl"),
        ({"postgresql_settings": {"listen_addresses": "*"}}, "Offending entry: listen_addresses"),
        ({"postgresql_settings": {"work_mem": ["8MB"]}}, "Offending entry: work_mem"),
    ],
)
def test_bad_variable_fails_before_any_change(run_ansible, tmp_path, host_vars, expected):
    merged = {**GOOD, **host_vars}
    host_vars = {name: value for name, value in merged.items() if value is not None}
    result = run_ansible(
        "ansible-playbook", "-i", inventory_with(tmp_path, host_vars), "playbooks/postgresql.yml"
    )
    assert_failed_early(result, tmp_path, "postgresql", expected)
