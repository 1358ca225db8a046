"""Each per-concern tag of the mosquitto role works alone on the converged hosts.

playbooks/mosquitto.yml --tags <tag>, for each tag of roles/mosquitto/tasks/main.yml
one at a time: it must succeed and change nothing (issue 9, defect 1).
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "_shared"))
from playbook_runs import assert_ran_and_changed_nothing, role_tags, run_playbook


@pytest.mark.parametrize("tag", role_tags("mosquitto"))
def test_tag_works_alone_and_changes_nothing(tag):
    result = run_playbook("playbooks/mosquitto.yml", "--tags", tag)
    assert_ran_and_changed_nothing(result)
