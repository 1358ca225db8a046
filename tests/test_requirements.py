"""requirements.yml must name the collection versions that are really used."""

import json

import yaml


def test_requirements_yml_matches_the_installed_collections(run_ansible, repo_root):
    pinned = {
        entry["name"]: entry["version"]
        for entry in yaml.safe_load((repo_root / "requirements.yml").read_text())["collections"]
    }
    listing = run_ansible("ansible-galaxy", "collection", "list", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    installed: dict[str, str] = {}
    for collections in json.loads(listing.stdout).values():
        for name, details in collections.items():
            installed.setdefault(name, details["version"])
    mismatched = {
        name: (version, installed.get(name))
        for name, version in pinned.items()
        if installed.get(name) != version
    }
    assert not mismatched, f"pinned vs installed: {mismatched}"
