"""Each per-concern tag of the pdsno_ca role works alone on the converged hosts.

playbooks/ca.yml --tags <tag>, for each tag of roles/pdsno_ca/tasks/main.yml
one at a time: it must succeed and change nothing (issue 9, defect 1).

side_effect.yml leaves ca2 as the current CA, so the runs say so.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "_shared"))
from playbook_runs import assert_ran_and_changed_nothing, role_tags, run_playbook


@pytest.mark.parametrize("tag", role_tags("pdsno_ca"))
def test_tag_works_alone_and_changes_nothing(tag):
    result = run_playbook("playbooks/ca.yml", "--tags", tag, "-e", "pdsno_ca_current=ca2")
    assert_ran_and_changed_nothing(result)
