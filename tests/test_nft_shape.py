"""roles/firewall/files/pdsno-nft-shape in a network namespace of its own.

The firewall role loads its ruleset again when the running table's shape
differs from the one it recorded. Traffic must not change the shape (the
per-source meters fill as clients connect: the full stack's idempotence
failed on db1 and log1 when it did), while a rule or an address added by
hand must.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[1] / "roles/firewall/files/pdsno-nft-shape"

RULESET = """
table inet shape_test {
  set postgresql_v4 { type ipv4_addr; flags interval; elements = { 10.0.0.5 } }
  set postgresql_meter_v4 { type ipv4_addr; size 65535; flags dynamic,timeout; timeout 1m; }
  chain input {
    type filter hook input priority filter; policy drop;
    tcp dport 5432 ip saddr @postgresql_v4 ct state new \\
      update @postgresql_meter_v4 { ip saddr limit rate over 5/second burst 10 packets } drop
    tcp dport 5432 ip saddr @postgresql_v4 accept
  }
}
"""

SCRIPT = f"""
set -e
nft -f - <<'EOF'
{RULESET}
EOF
shape() {{ python3 {HELPER} shape_test; }}
loaded=$(shape)
nft add element inet shape_test postgresql_meter_v4 '{{ 10.0.0.5 timeout 30s }}'
[ "$(shape)" = "$loaded" ] && echo meter-entry:same || echo meter-entry:differs
nft add element inet shape_test postgresql_v4 '{{ 10.0.0.99 }}'
[ "$(shape)" = "$loaded" ] && echo hand-added-address:same || echo hand-added-address:differs
nft delete element inet shape_test postgresql_v4 '{{ 10.0.0.99 }}'
nft add rule inet shape_test input tcp dport 31337 accept
[ "$(shape)" = "$loaded" ] && echo hand-made-rule:same || echo hand-made-rule:differs
nft delete table inet shape_test
python3 {HELPER} shape_test 2>/dev/null || echo "missing-table:$?"
"""


def run_in_own_netns() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def outcome() -> list[str]:
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        pytest.skip("nft is not installed (Debian package nftables)")
    probe = subprocess.run(
        ["unshare", "--net", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"no network namespace for the test: {probe.stderr.strip()}")
    result = run_in_own_netns()
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_meter_entry_leaves_the_shape_alone(outcome):
    assert "meter-entry:same" in outcome


def test_an_address_added_by_hand_changes_the_shape(outcome):
    assert "hand-added-address:differs" in outcome


def test_a_rule_added_by_hand_changes_the_shape(outcome):
    assert "hand-made-rule:differs" in outcome


def test_a_missing_table_exits_3(outcome):
    assert "missing-table:3" in outcome
