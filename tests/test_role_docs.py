"""Every role documents its variables, and its README agrees with its spec."""

from pathlib import Path

import pytest
import yaml
from role_variables_table import BEGIN, END, render  # tools/, on pythonpath (pyproject)

ROLES = sorted(p.parent for p in (Path(__file__).resolve().parent.parent / "roles").glob("*/meta"))


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_readme_table_matches_argument_specs(role):
    readme = (role / "README.md").read_text()
    table = readme.partition(BEGIN)[2].partition(END)[0].strip()
    assert table == render(role), (
        f"{role.name}/README.md is behind its argument_specs.yml: "
        f"run python tools/role_variables_table.py roles/{role.name} --write"
    )


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_every_default_is_specified_and_prefixed(role):
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    options = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"][
        "main"
    ]["options"]
    assert set(defaults) <= set(options), f"undocumented: {set(defaults) - set(options)}"
    assert all(name.startswith(f"{role.name}_") for name in options)
    for name, option in options.items():
        if name in defaults and "default" in option:
            assert option["default"] == defaults[name], f"{name}: spec and defaults disagree"
