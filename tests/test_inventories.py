"""The shipped inventories have the groups the playbooks target."""

import json

import pytest

CONTROLLER_TIERS = ("pdsno_global", "pdsno_regional", "pdsno_local")


@pytest.mark.parametrize("inventory", ["inventories/lab", "inventories/production.example"])
def test_inventory_has_every_tier_and_regions(run_ansible, inventory):
    result = run_ansible("ansible-inventory", "-i", inventory, "--list")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert set(listing["pdsno_controllers"]["children"]) == set(CONTROLLER_TIERS)
    for group in ("pdsno_brokers", "pdsno_databases", "pdsno_backup_hosts", *CONTROLLER_TIERS):
        assert listing[group]["hosts"], f"{inventory}: {group} has no host"
    hostvars = listing["_meta"]["hostvars"]
    for tier in ("pdsno_regional", "pdsno_local"):
        for host in listing[tier]["hosts"]:
            assert hostvars[host].get("pdsno_region"), f"{host} has no pdsno_region"


def test_lab_hosts_have_distinct_addresses(run_ansible):
    result = run_ansible("ansible-inventory", "-i", "inventories/lab", "--list")
    hostvars = json.loads(result.stdout)["_meta"]["hostvars"]
    addresses = [hostvars[host]["ansible_host"] for host in hostvars]
    assert len(addresses) == len(set(addresses)) >= 5
