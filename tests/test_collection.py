"""The pdsno.platform collection is publishable: its metadata and README are complete."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COLLECTION = REPO / "collections/ansible_collections/pdsno/platform"


def plugin_files() -> list[Path]:
    return sorted(
        path
        for path in (COLLECTION / "plugins").glob("*/*.py")
        if path.name != "__init__.py" and path.parent.name != "module_utils"
    )


def test_readme_lists_every_plugin() -> None:
    readme = (COLLECTION / "README.md").read_text()
    assert plugin_files(), "the collection has no plugin"
    missing = [
        f"{path.parent.name}/{path.name}"
        for path in plugin_files()
        if f"pdsno.platform.{path.stem}" not in readme and f"`{path.stem}`" not in readme
    ]
    assert not missing, f"{COLLECTION / 'README.md'} does not list: {', '.join(missing)}"


def test_galaxy_repository_is_a_url_to_fill_not_a_dead_one() -> None:
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    for key in ("repository", "issues"):
        assert galaxy[key].startswith("https://"), key
        assert "example.invalid" not in galaxy[key], key


def test_collection_builds(tmp_path: Path) -> None:
    result = subprocess.run(
        ["ansible-galaxy", "collection", "build", str(COLLECTION), "--output-path", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (artifact,) = tmp_path.glob("pdsno-platform-*.tar.gz")
    with tarfile.open(artifact) as archive:
        names = archive.getnames()
    for path in plugin_files():
        assert str(path.relative_to(COLLECTION)) in names
    assert not [name for name in names if name.startswith("tests/output")]
