"""Bad input to the mosquitto role fails before any change, naming the variable."""

import json

import pytest
import yaml

SECRET = "pytest-mosquitto-password-never-shown"  # noqa: S105 (test-only)


def inventory_with(tmp_path, broker_vars: dict, controllers: dict | None = None):
    controllers = {"rc-1": {"pdsno_region": "eu-west"}} if controllers is None else controllers
    inventory = {
        "all": {
            "children": {
                "pdsno_brokers": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_become": False,
                            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                            **broker_vars,
                        }
                    }
                },
                # Never contacted: the play runs on the broker only and reads
                # the controllers' inventory variables for the ACL.
                "pdsno_controllers": {
                    "children": {
                        "pdsno_global": {"hosts": {"gc-1": {}}},
                        "pdsno_regional": {"hosts": controllers},
                    }
                },
            }
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return str(path)


def user(name="reader", password=SECRET, acl=None):
    return {"name": name, "password": password, "acl": acl or []}


PASSWORDS = {"mosquitto_password_auth": True, "mosquitto_local_listener": True}


@pytest.mark.parametrize(
    ("broker_vars", "controllers", "expected"),
    [
        ({"mosquitto_listener_port": "eighty-eight"}, None, "mosquitto_listener_port"),
        ({"mosquitto_listener_port": 70000}, None, "mosquitto_listener_port (70000)"),
        ({"mosquitto_tls_version": "tlsv1.1"}, None, "mosquitto_tls_version"),
        ({"mosquitto_log_dest": "file"}, None, "mosquitto_log_dest"),
        ({"mosquitto_log_types": ["chatter"]}, None, "mosquitto_log_types"),
        ({"mosquitto_listener_address": "0.0.0.0 1883"}, None, "mosquitto_listener_address"),
        ({"mosquitto_require_certificate": False}, None, "set mosquitto_password_auth true"),
        ({"mosquitto_local_listener": True}, None, "set mosquitto_password_auth true"),
        (
            {"mosquitto_local_listener": True, "mosquitto_local_listener_port": 8883, **PASSWORDS},
            None,
            "differ when mosquitto_local_listener is on",
        ),
        ({**PASSWORDS, "mosquitto_users": []}, None, "mosquitto_users at least one user"),
        ({**PASSWORDS, "mosquitto_users": [{"name": "x"}]}, None, "password"),
        ({**PASSWORDS, "mosquitto_users": [user(password="short")]}, None, 'entry "reader"'),  # noqa: S106
        # A controller's MQTT identity (pdsno_mqtt_identity_prefix + hostname).
        ({**PASSWORDS, "mosquitto_users": [user(name="mqtt:rc-1")]}, None, 'entry "mqtt:rc-1"'),
        ({**PASSWORDS, "mosquitto_users": [user(name="a b")]}, None, 'entry "a b"'),
        (
            {**PASSWORDS, "mosquitto_users": [user(acl=[{"access": "write", "topic": "$SYS/x"}])]},
            None,
            "$SYS topics may only be read",
        ),
        (
            {**PASSWORDS, "mosquitto_users": [user(acl=[{"access": "all", "topic": "a"}])]},
            None,
            "access",
        ),
        ({**PASSWORDS, "mosquitto_users": [user(), user()]}, None, "names a user twice"),
        ({}, {"rc-1": {}}, "Controller rc-1"),
        ({}, {"rc-1": {"pdsno_region": "eu/west"}}, "Controller rc-1"),
        ({}, {"rc-1": {"pdsno_region": "#"}}, "Controller rc-1"),
        ({}, {"rc-1": {"pdsno_region": "global"}}, "Controller rc-1"),
        ({"mosquitto_acl_topic_root": "pdsno/#"}, None, "mosquitto_acl_topic_root"),
        ({"mosquitto_autosave_interval": 1800}, None, "mosquitto_autosave_interval is 1800"),
        ({"mosquitto_persistent_client_expiration": "2 weeks"}, None, "persistent_client_exp"),
        ({"mosquitto_max_connections": 5000}, None, "mosquitto_limit_nofile (4096)"),
        ({"mosquitto_max_packet_size": 10}, None, "mosquitto_max_packet_size (10)"),
        ({"mosquitto_max_queued_messages": 0}, None, "mosquitto_max_queued_messages (0)"),
        ({"pdsno_cert_dir": "certs"}, None, "pdsno_cert_dir (certs)"),
    ],
)
def test_bad_variable_fails_before_any_change(
    run_ansible, tmp_path, broker_vars, controllers, expected
):
    result = run_ansible(
        "ansible-playbook",
        "-i",
        inventory_with(tmp_path, broker_vars, controllers),
        "playbooks/mosquitto.yml",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output
    assert SECRET not in output

    (report_path,) = (tmp_path / "reports").glob("mosquitto-*.json")
    report = json.loads(report_path.read_text())
    assert report["changed_total"] == 0
    failed_tasks = [e["task"] for e in report["events"] if e["outcome"] == "failed"]
    # The check, then the playbook's last play stopping the host for it
    # (playbooks/failed_concerns.yml).
    assert len(failed_tasks) == 2, failed_tasks
    assert failed_tasks[1] == "Fail the hosts on which a concern failed, naming it"
    task_name = failed_tasks[0].split(" : ")[-1]
    assert task_name.startswith(("Validating arguments", "Check ")), task_name
