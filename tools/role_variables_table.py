"""Render a role's variables table from its meta/argument_specs.yml.

argument_specs.yml is the single source of a role's variables; each role
README carries the rendered table between two markers, and
tests/test_role_docs.py fails when a README falls behind its spec.

    python tools/role_variables_table.py roles/base          # print the table
    python tools/role_variables_table.py roles/base --write  # update README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

BEGIN = "<!-- BEGIN VARIABLES (tools/role_variables_table.py) -->"
END = "<!-- END VARIABLES -->"


def describe(option: dict) -> str:
    text = option.get("description", "")
    if isinstance(text, list):
        text = " ".join(text)
    if "choices" in option:
        text += " One of: " + ", ".join(f"`{choice}`" for choice in option["choices"]) + "."
    return text.replace("|", "\\|").replace("\n", " ").strip()


def type_of(option: dict) -> str:
    kind = option.get("type", "str")
    if kind == "list" and "elements" in option:
        return f"list of {option['elements']}"
    return kind


def default_of(option: dict) -> str:
    if option.get("required"):
        return "**required**"
    if "default" not in option:
        return "unset"
    return f"`{json.dumps(option['default'])}`"


def render(role: Path) -> str:
    spec = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    rows = ["| variable | type | default | description |", "|---|---|---|---|"]
    rows += [
        f"| `{name}` | {type_of(option)} | {default_of(option)} | {describe(option)} |"
        for name, option in options.items()
    ]
    return "\n".join(rows)


def with_table(readme: str, table: str) -> str:
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README has no {BEGIN} ... {END} markers")
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", type=Path)
    parser.add_argument("--write", action="store_true", help="update the role's README.md")
    args = parser.parse_args(argv)
    table = render(args.role)
    if not args.write:
        print(table)
        return 0
    readme = args.role / "README.md"
    readme.write_text(with_table(readme.read_text(), table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
