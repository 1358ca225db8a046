#!/usr/bin/env bash
# `make test`: run every check, go on after a failure so the report is
# complete, and end with one line that counts them all:
#   test: N passed, N failed
# (lint tools, pytest tests, and molecule scenarios, each counted once).
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
failures=()
record() {  # record NAME EXIT_CODE [PASSED_COUNT FAILED_COUNT]
  local name=$1 rc=$2 ok=${3:-1} bad=${4:-0}
  if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; ok=0; fi
  passed=$((passed + ok))
  failed=$((failed + bad))
  [ "$bad" -eq 0 ] || failures+=("$name")
}

for check in "ruff check ." "ruff format --check ." "yamllint --strict ." "ansible-lint --profile production"; do
  echo "=== $check"
  $check
  record "$check" $?
done

echo "=== dependency audit (pip-audit)"
python3 tools/dependency_audit.py --package . requirements-dev.txt ${AUDIT_LOCKS:-}
rc=$?
if [ "$rc" -eq 3 ]; then
  echo "=== dependency audit NOT DONE: vulnerability database unreachable (exit 3); not counted"
else
  record "dependency audit" "$rc"
fi

echo "=== pytest"
junit=$(mktemp)
pytest --junitxml="$junit"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no test: that is a failure" >&2
  record pytest 1
else
  read -r tests bad < <(python3 - "$junit" <<'PY'
import sys
import xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
total, errors, failures, skipped = (int(suite.get(k, 0)) for k in ("tests", "errors", "failures", "skipped"))
print(total - errors - failures - skipped, errors + failures)
PY
)
  record pytest "$rc" "${tests:-0}" "${bad:-1}"
fi
rm -f "$junit"

for scenario in ${SCENARIOS:-$(ls molecule/*/molecule.yml | cut -d/ -f2)}; do
  echo "=== molecule test -s $scenario"
  start=$(date +%s)
  molecule test -s "$scenario"
  rc=$?
  echo "=== molecule $scenario: exit $rc after $(($(date +%s) - start)) s"
  record "molecule $scenario" $rc
done

[ ${#failures[@]} -eq 0 ] || printf 'failed: %s\n' "${failures[@]}"
echo "test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
