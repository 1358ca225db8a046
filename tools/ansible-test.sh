#!/usr/bin/env bash
# ansible-test on the pdsno.platform collection, with the Python of .venv and
# no network but PyPI:
#   sanity: every sanity test, run with the tools installed here (--local);
#   units:  tests/unit of the collection, in a virtualenv ansible-test makes
#           with its own requirements (pytest-xdist among them).
#
# ansible-test gives each sanity test a virtualenv of its own and bootstraps
# pip into it with a script it downloads from ci-files.testing.ansible.com,
# which is out of reach here. The script it would download (get-pip) is pip
# running from its own wheel; this writes the same thing, from the wheel on
# PyPI, where ansible-test looks for a cached copy.
#   usage: tools/ansible-test.sh sanity|units [ansible-test options...]
set -euo pipefail
command=${1:?usage: tools/ansible-test.sh sanity|units [options...]}
shift
cd "$(dirname "$0")/.."
collection=collections/ansible_collections/pdsno/platform
python=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

pip_version=$(python3 - <<'PY'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
import sys
print(get_venv_packages(NativePythonConfig(version=f"{sys.version_info[0]}.{sys.version_info[1]}"))["pip"])
PY
)
cache=$HOME/.ansible/test/cache
bootstrap=$cache/get_pip_${pip_version//./_}.py
if [ ! -s "$bootstrap" ]; then
  mkdir -p "$cache"
  python3 -m pip download -q --no-deps --only-binary=:all: --dest "$cache" "pip==$pip_version"
  cat >"$bootstrap.tmp" <<PY
# Written by tools/ansible-test.sh in place of ansible-test's get-pip
# download: pip $pip_version installs itself, and the packages asked, from its wheel.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pip-$pip_version-py3-none-any.whl"))
from pip._internal.cli.main import main  # noqa: E402

arguments = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall", *arguments]))
PY
  mv "$bootstrap.tmp" "$bootstrap"
fi

cd "$collection"
case $command in
  sanity) exec ansible-test sanity --local --python "$python" "$@" ;;
  units) exec ansible-test units --venv --requirements --python "$python" "$@" ;;
  *) echo "error: tools/ansible-test.sh runs sanity or units, not $command" >&2; exit 2 ;;
esac
