"""Each per-concern tag of the base role works alone on the converged hosts.

playbooks/base.yml --tags <tag>, for each tag of roles/base/tasks/main.yml
one at a time: it must succeed and change nothing (issue 9, defect 1).

Before each run the package lists look a day old and one index is missing,
as when the mirror moved on since the last refresh: the role refreshes them,
and must report that without counting it as a change (issue 9, defect 2).
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "_shared"))
from playbook_runs import assert_ran_and_changed_nothing, role_tags, run_playbook, tail


@pytest.mark.parametrize("tag", role_tags("base"))
def test_tag_works_alone_and_changes_nothing(host, tag):
    aged = host.run(
        "rm -f /var/lib/apt/lists/*bookworm-updates_InRelease"
        " && touch -d '2 days ago' /var/lib/apt/lists"
    )
    assert aged.rc == 0, aged.stderr
    limit = host.backend.get_hostname()
    result = run_playbook("playbooks/base.yml", "--tags", tag, "--limit", limit)
    assert_ran_and_changed_nothing(result)
    if tag == "base_packages":
        assert "Refreshed the apt package lists" in result.stdout, tail(result)
