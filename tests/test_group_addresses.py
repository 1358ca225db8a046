"""pdsno.platform.group_addresses: the source addresses the firewall and pg_hba share."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

PLUGIN = (
    Path(__file__).resolve().parent.parent
    / "collections/ansible_collections/pdsno/platform/plugins/filter/group_addresses.py"
)
_spec = importlib.util.spec_from_file_location("group_addresses", PLUGIN)
assert _spec is not None and _spec.loader is not None
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)
group_addresses = plugin.group_addresses

GROUPS = {
    "pdsno_controllers": ["rc1", "gc1"],
    "pdsno_databases": ["db1"],
    "pdsno_backup_hosts": ["bk1", "gc1"],
}
HOSTVARS = {
    "gc1": {"ansible_host": "10.0.0.11"},
    "rc1": {
        "ansible_host": "rc1.example.net",
        "ansible_facts": {"default_ipv4": {"address": "10.0.0.12"}},
    },
    "db1": {"ansible_host": "2001:db8::31"},
    "bk1": {"ansible_host": "10.0.0.51", "pdsno_source_addresses": ["10.1.0.51", "2001:db8::51"]},
}


def test_ansible_host_when_an_ip_else_the_default_ipv4_fact():
    assert group_addresses(["pdsno_controllers"], GROUPS, HOSTVARS) == [
        {"host": "gc1", "address": "10.0.0.11", "family": 4},
        {"host": "rc1", "address": "10.0.0.12", "family": 4},
    ]


def test_ipv6_inventory_address_has_family_6():
    assert group_addresses(["pdsno_databases"], GROUPS, HOSTVARS) == [
        {"host": "db1", "address": "2001:db8::31", "family": 6}
    ]


def test_override_replaces_the_inventory_address_and_hosts_are_listed_once():
    entries = group_addresses(["pdsno_backup_hosts", "pdsno_controllers"], GROUPS, HOSTVARS)
    assert [(e["host"], e["address"]) for e in entries] == [
        ("bk1", "10.1.0.51"),
        ("bk1", "2001:db8::51"),
        ("gc1", "10.0.0.11"),
        ("rc1", "10.0.0.12"),
    ]


def test_override_may_be_one_string():
    hostvars = {"gc1": {"ansible_host": "10.0.0.11", "pdsno_source_addresses": "10.9.9.9"}}
    assert group_addresses(["g"], {"g": ["gc1"]}, hostvars)[0]["address"] == "10.9.9.9"


def test_missing_group_is_tolerated():
    assert group_addresses(["pdsno_backup_hosts_not_here"], GROUPS, HOSTVARS) == []


def test_host_without_any_address_is_listed_empty_for_the_caller_to_name():
    hostvars = {"x1": {"ansible_host": "x1.example.net"}}
    assert group_addresses(["g"], {"g": ["x1"]}, hostvars) == [
        {"host": "x1", "address": "", "family": 0}
    ]


def test_invalid_override_fails_naming_host_and_variable():
    hostvars = {"gc1": {"ansible_host": "10.0.0.11", "pdsno_source_addresses": ["10.0.0.300"]}}
    with pytest.raises(Exception, match=r"pdsno_source_addresses of host gc1 .*10\.0\.0\.300"):
        group_addresses(["g"], {"g": ["gc1"]}, hostvars)


def test_through_ansible_with_real_hostvars(run_ansible, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "children": {
                        "pdsno_controllers": {
                            "hosts": {
                                "gc1": {"ansible_host": "10.0.0.11"},
                                "rc1": {"ansible_host": "10.0.0.12"},
                            }
                        },
                        "pdsno_backup_hosts": {
                            "hosts": {"bk1": {"pdsno_source_addresses": "10.1.0.51"}}
                        },
                    }
                }
            }
        )
    )
    expression = (
        "{{ ['pdsno_controllers', 'pdsno_backup_hosts', 'absent']"
        " | pdsno.platform.group_addresses(groups, hostvars) | map(attribute='address') }}"
    )
    result = run_ansible(
        "ansible",
        "localhost",
        "-i",
        str(inventory),
        "-m",
        "ansible.builtin.debug",
        "-a",
        f"msg={expression}",
        "-o",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(result.stdout.partition(" => ")[2])
    assert payload["msg"] == ["10.1.0.51", "10.0.0.11", "10.0.0.12"]
