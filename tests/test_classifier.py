"""The sensitivity classifier: ordering, the shipped rules, and refusing bad rule files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdsno.approval.classifier import Classification, RuleClassifier, Sensitivity
from pdsno.errors import ConfigurationError

LOW, MEDIUM, HIGH = Sensitivity.LOW, Sensitivity.MEDIUM, Sensitivity.HIGH


@pytest.fixture(scope="module")
def shipped() -> RuleClassifier:
    return RuleClassifier.default()


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


# --- Sensitivity ---------------------------------------------------------------


def test_sensitivity_orders_by_rank_not_alphabet() -> None:
    assert LOW < MEDIUM < HIGH
    assert HIGH > LOW and HIGH >= HIGH and LOW <= MEDIUM
    assert sorted([HIGH, LOW, MEDIUM]) == [LOW, MEDIUM, HIGH]
    assert [member.rank for member in (LOW, MEDIUM, HIGH)] == [0, 1, 2]


def test_sensitivity_compares_with_its_string_values() -> None:
    assert HIGH > "low"
    assert "high" > LOW  # noqa: SIM300 - the reflected comparison must use the rank too
    assert MEDIUM == "medium"


def test_highest_picks_the_most_sensitive() -> None:
    assert Sensitivity.highest(LOW, HIGH, MEDIUM) is HIGH
    assert Sensitivity.highest("low", "MEDIUM") is MEDIUM
    assert Sensitivity.highest(LOW) is LOW
    with pytest.raises(ValueError, match="at least one"):
        Sensitivity.highest()


# --- the shipped rules -----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected", "rule"),
    [
        ("router bgp 65000", HIGH, "routing-protocol"),
        ("no router ospf 1", HIGH, "routing-protocol"),
        ("ROUTER ISIS core", HIGH, "routing-protocol"),
        (" neighbor 192.0.2.1 remote-as 65001", HIGH, "bgp-neighbor"),
        ("aaa new-model", HIGH, "aaa"),
        ("tacacs-server host 192.0.2.9", HIGH, "authentication"),
        ("enable secret 9 $9$abc", HIGH, "authentication"),
        ("username admin privilege 15 secret 9 $9$x", HIGH, "privileged-user"),
        ("crypto key generate rsa modulus 2048", HIGH, "crypto-keys"),
        ("no ip access-list extended EDGE-IN", HIGH, "acl-removal"),
        ("no access-list 10", HIGH, "acl-removal"),
        (" shutdown", HIGH, "interface-shutdown"),
        ("reload in 5", HIGH, "reload"),
        ("write erase", HIGH, "erase"),
        ("erase startup-config", HIGH, "erase"),
        ("snmp-server community s3cret RW", HIGH, "snmp-write-community"),
        ("line vty 0 4", HIGH, "management-access"),
        ("interface GigabitEthernet0/1", MEDIUM, "interface"),
        (" ip address 192.0.2.1 255.255.255.0", MEDIUM, "interface-address"),
        (" no shutdown", MEDIUM, "interface-enable"),
        ("vlan 20", MEDIUM, "vlan"),
        (" switchport access vlan 20", MEDIUM, "interface"),
        ("ip route 0.0.0.0 0.0.0.0 192.0.2.254", MEDIUM, "static-route"),
        ("access-list 10 permit 192.0.2.0 0.0.0.255", MEDIUM, "acl-entry"),
        (" permit tcp any any eq 443", MEDIUM, "acl-entry"),
        ("ntp server 192.0.2.123", MEDIUM, "ntp"),
        ("snmp-server community public RO", MEDIUM, "snmp"),
        (" description uplink to core", LOW, "description"),
        ("logging host 192.0.2.50", LOW, "logging"),
        ("snmp-server location rack 4", LOW, "snmp-location-contact"),
        ("snmp-server contact noc@example.net", LOW, "snmp-location-contact"),
        ("banner motd ^C authorised use only ^C", LOW, "banner"),
        ("!", LOW, "comment-or-blank"),
    ],
)
def test_shipped_rules_rate_typical_lines(
    shipped: RuleClassifier, line: str, expected: Sensitivity, rule: str
) -> None:
    result = shipped.classify([line])
    assert result.sensitivity is expected
    assert rule in result.matched_rules


def test_unknown_lines_get_the_default_medium(shipped: RuleClassifier) -> None:
    assert shipped.default_sensitivity is MEDIUM
    result = shipped.classify(["hostname edge-7"])
    assert result == Classification(MEDIUM, [], ["hostname edge-7"])


def test_the_highest_line_decides(shipped: RuleClassifier) -> None:
    result = shipped.classify(["interface GigabitEthernet0/1", " description uplink", " shutdown"])
    assert result.sensitivity is HIGH
    assert result.matched_rules == ["interface", "description", "interface-shutdown"]


def test_an_unknown_line_is_not_diluted_by_harmless_ones(shipped: RuleClassifier) -> None:
    result = shipped.classify([" description uplink", "hostname edge-7"])
    assert result.sensitivity is MEDIUM
    assert result.unmatched_lines == ["hostname edge-7"]


def test_only_harmless_lines_are_low(shipped: RuleClassifier) -> None:
    result = shipped.classify(["interface Gi0/1", " description x", "!"])
    assert result.sensitivity is MEDIUM  # entering an interface is itself medium
    assert shipped.classify([" description x", "logging buffered 16384", "!"]).sensitivity is LOW


def test_an_empty_change_gets_the_default(shipped: RuleClassifier) -> None:
    assert shipped.classify([]) == Classification(MEDIUM, [], [])


# --- rule files --------------------------------------------------------------------


def test_from_file_loads_an_operator_file(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
default: HIGH
rules:
  - name: descriptions
    sensitivity: Low
    pattern: '^\\s*description\\b'
""",
    )
    classifier = RuleClassifier.from_file(path)
    assert classifier.default_sensitivity is HIGH
    assert classifier.classify(["DESCRIPTION x"]).sensitivity is LOW
    assert classifier.classify(["anything else"]).sensitivity is HIGH
    assert RuleClassifier.load(path).default_sensitivity is HIGH
    assert RuleClassifier.load(None).rules == RuleClassifier.default().rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- just\n- a list\n", r"must hold a mapping"),
        ("default: medium\n", r"missing key 'rules'"),
        ("rules: []\n", r"missing key 'default'"),
        ("default: urgent\nrules: []\n", r"default: unknown sensitivity 'urgent'"),
        (
            "default: low\nrules:\n  - {name: bgp, sensitivity: critical, pattern: bgp}\n",
            r"rule 1 'bgp': sensitivity: unknown sensitivity 'critical'",
        ),
        (
            "default: low\nrules:\n  - {name: ok, sensitivity: low, pattern: x}\n"
            "  - {name: broken, sensitivity: high, pattern: 'router (bgp'}\n",
            r"rule 2 'broken': pattern: invalid regular expression",
        ),
        (
            "default: low\nrules:\n  - {name: nopattern, sensitivity: high}\n",
            r"rule 1 'nopattern': missing key 'pattern'",
        ),
        (
            "default: low\nrules:\n  - {sensitivity: high, pattern: x}\n",
            r"rule 1: missing key 'name'",
        ),
        (
            "default: low\nrules:\n  - {name: a, sensitivity: high, pattern: x, sensitive: 1}\n",
            r"rule 1 'a': sensitive: Extra inputs are not permitted",
        ),
        (
            "default: low\nrules:\n  - {name: a, sensitivity: high, pattern: x}\n"
            "  - {name: a, sensitivity: low, pattern: y}\n",
            r"rule name 'a' is used twice",
        ),
        ("default: low\nrules: [\n", r"is not valid YAML"),
    ],
)
def test_bad_rule_files_are_refused_with_file_rule_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write_rules(tmp_path, text)
    with pytest.raises(ConfigurationError, match=expected) as caught:
        RuleClassifier.from_file(path)
    assert str(path) in str(caught.value)


def test_a_missing_rules_file_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="rules_file"):
        RuleClassifier.from_file(tmp_path / "absent.yaml")


def test_the_shipped_file_is_valid_and_commented() -> None:
    text = (
        Path(__file__)
        .resolve()
        .parents[1]
        .joinpath("pdsno", "data", "classifier_rules.yaml")
        .read_text()
    )
    assert text.lstrip().startswith("#")
    classifier = RuleClassifier.from_text(text)
    assert {rule.sensitivity for rule in classifier.rules} == {LOW, MEDIUM, HIGH}


# --- a HIGH statement hidden anywhere never yields LOW (issue 11, finding 1) ---------

# Statements the shipped rules rate HIGH, and harmless ones they rate LOW.
HIGH_STATEMENTS = [
    "router bgp 65000",
    " neighbor 10.0.0.1 remote-as 666",
    "aaa new-model",
    "enable secret 0 hunter2",
    "line vty 0 4",
    " transport input telnet",
    "no ip access-list extended MGMT",
    " shutdown",
    "reload",
    "crypto key generate rsa",
    "snmp-server community private rw",
    "username root privilege 15 secret x",
    "boot system flash:evil.bin",
    " redistribute static",
]
LOW_STATEMENTS = ["description uplink", " logging host 192.0.2.9", "!", "", "banner motd x"]
# Everything a device, a terminal or str.splitlines() may take as the end of a statement,
# and other characters the API refuses.
SEPARATORS = [
    "\n",
    "\r",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
    "\x00",
    "\x1b",
    "\t",
    "\u200b",
    "\u202e",
]


def _disguise(statement: str, draw) -> str:
    """The statement as an attacker might send it: another case, NFKC look-alikes."""
    from hypothesis import strategies as st

    if draw(st.booleans()):
        statement = statement.upper()
    if draw(st.booleans()):  # full-width letters read as ASCII after NFKC
        statement = "".join(
            chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and draw(st.booleans()) else c
            for c in statement
        )
    return statement


def _proposals():
    from hypothesis import strategies as st

    @st.composite
    def proposal(draw) -> list[str]:
        harmless = st.one_of(st.sampled_from(LOW_STATEMENTS), st.text(max_size=20))
        lines = draw(st.lists(harmless, max_size=6))
        hidden = _disguise(draw(st.sampled_from(HIGH_STATEMENTS)), draw)
        where = draw(st.integers(min_value=0, max_value=len(lines)))
        how = draw(st.sampled_from(["own line", "after a separator", "before a separator"]))
        separator = draw(st.sampled_from(SEPARATORS))
        if how == "own line" or not lines:
            lines.insert(where, hidden)
        elif how == "after a separator":
            index = min(where, len(lines) - 1)
            lines[index] = lines[index] + separator + hidden
        else:
            index = min(where, len(lines) - 1)
            lines[index] = hidden + separator + lines[index]
        return lines

    return proposal()


def test_a_high_statement_hidden_anywhere_never_yields_low() -> None:
    from hypothesis import HealthCheck, given, settings

    shipped = RuleClassifier.default()
    tried: list[int] = []

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_proposals())
    def check(lines: list[str]) -> None:
        tried.append(1)
        rating = shipped.classify(lines).sensitivity
        assert rating is not LOW, lines

    check()
    assert len(tried) >= 500, f"only {len(tried)} examples ran"


@pytest.mark.parametrize("separator", SEPARATORS)
def test_each_separator_cuts_a_line_into_statements(shipped: RuleClassifier, separator) -> None:
    result = shipped.classify([f"description uplink{separator}router bgp 65000"])
    assert result.sensitivity is HIGH, separator


def test_a_statement_no_rule_knows_is_medium_even_if_the_default_is_low() -> None:
    lenient = RuleClassifier.from_text(
        "default: low\nrules:\n  - {name: d, sensitivity: low, pattern: '^\\s*description\\b'}\n"
    )
    assert lenient.classify(["description x"]).sensitivity is LOW
    assert lenient.classify(["hostname x"]).sensitivity is MEDIUM
    assert lenient.classify(["description x\x00"]).sensitivity is MEDIUM


def test_the_api_type_refuses_what_the_classifier_would_cut() -> None:
    from pydantic import ValidationError

    from pdsno.api.models import ProposalIn

    for separator in SEPARATORS:
        with pytest.raises(ValidationError, match=f"U\\+{ord(separator[0]):04X}"):
            ProposalIn(device_id="sw-1", config_lines=["ok", f"description x{separator}reload"])
    assert ProposalIn(device_id="sw-1", config_lines=[" description café"]).config_lines
