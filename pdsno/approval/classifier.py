"""Rating a configuration change as low, medium or high sensitivity.

The rating decides who must approve a change, so the rules are data an
operator can read and adjust (pdsno/data/classifier_rules.yaml, or the file
named by approval.rules_file), not code. Each line of a configuration is rated
on its own: the highest rule it matches, or the file's `default` when it
matches none. The configuration gets the highest rating of its lines, so one
unknown line in a change can never be outweighed by harmless ones.

A device reads statements, not list items: a line break inside an item
("description x\nrouter bgp 1") starts a statement of its own there. So
each item is normalised (NFKC) and cut into statements at every line break
and every other control character before any rule sees it, and the
classifier fails closed: a statement no rule knows, or an item that needed
cutting, is rated at least MEDIUM, whatever the rules file's `default`.
The API refuses such items in the first place (pdsno.api.models.ConfigLine);
this is the second line of defence, for every other way in.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pdsno.errors import ConfigurationError

SHIPPED_RULES = "classifier_rules.yaml"

# Unicode categories a configuration statement never needs: controls (line
# breaks among them), format characters (zero-width, bidi overrides),
# surrogates, private use, unassigned code points, line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def config_line_problem(line: str) -> str | None:
    """Why `line` is not one plain configuration statement, or None when it is.

    Names the first offending character by code point and position, so that
    an API error says exactly what to remove.
    """
    for position, char in enumerate(line):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            name = unicodedata.name(char, "a control character")
            return (
                f"character U+{ord(char):04X} ({name}) at position {position}: a config "
                "line holds one statement, without line breaks or control characters; "
                "send each statement as its own line"
            )
    return None


def statements(line: str) -> list[str]:
    """The statements a device could read in `line`: NFKC-normalised, cut at
    every refused character (a line break is one)."""
    normalised = unicodedata.normalize("NFKC", line)
    parts: list[str] = []
    current: list[str] = []
    for char in normalised:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


class Sensitivity(StrEnum):
    """How much scrutiny a change needs; compares by rank, not alphabetically."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    @classmethod
    def parse(cls, value: str) -> Sensitivity:
        """`value` in any letter case; ValueError names the accepted ones."""
        try:
            return cls(value.strip().lower())
        except (ValueError, AttributeError):
            accepted = ", ".join(member.value for member in cls)
            raise ValueError(f"unknown sensitivity {value!r} (use one of: {accepted})") from None

    @classmethod
    def highest(cls, *values: Sensitivity | str) -> Sensitivity:
        """The most sensitive of `values`, at least one."""
        if not values:
            raise ValueError("Sensitivity.highest() needs at least one value")
        return max((cls.parse(value) for value in values), key=lambda member: member.rank)

    # str's own comparisons would put "high" below "low"; compare by rank instead.
    def _other_rank(self, other: object) -> int | None:
        if isinstance(other, str):
            try:
                return Sensitivity.parse(other).rank
            except ValueError:
                return None
        return None

    def __lt__(self, other: object) -> bool:
        rank = self._other_rank(other)
        return NotImplemented if rank is None else self.rank < rank

    def __le__(self, other: object) -> bool:
        rank = self._other_rank(other)
        return NotImplemented if rank is None else self.rank <= rank

    def __gt__(self, other: object) -> bool:
        rank = self._other_rank(other)
        return NotImplemented if rank is None else self.rank > rank

    def __ge__(self, other: object) -> bool:
        rank = self._other_rank(other)
        return NotImplemented if rank is None else self.rank >= rank


_RANKS = {Sensitivity.LOW: 0, Sensitivity.MEDIUM: 1, Sensitivity.HIGH: 2}
# The least a statement gets that no rule knows, whatever the rules file says.
UNKNOWN_FLOOR = Sensitivity.MEDIUM


@dataclass(frozen=True)
class Rule:
    name: str
    sensitivity: Sensitivity
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Classification:
    """The rating of a configuration and why: the rules that matched, the lines none did."""

    sensitivity: Sensitivity
    matched_rules: list[str]
    unmatched_lines: list[str] = field(default_factory=list)


class _RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    sensitivity: Sensitivity
    pattern: str = Field(min_length=1)
    description: str | None = None

    @field_validator("sensitivity", mode="before")
    @classmethod
    def _sensitivity(cls, value: Any) -> Sensitivity:
        return Sensitivity.parse(value) if isinstance(value, str) else value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value, re.IGNORECASE)
        except re.error as error:
            raise ValueError(f"invalid regular expression: {error}") from None
        return value


class _RulesFileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Sensitivity
    rules: list[_RuleModel]

    @field_validator("default", mode="before")
    @classmethod
    def _default(cls, value: Any) -> Sensitivity:
        return Sensitivity.parse(value) if isinstance(value, str) else value

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[_RuleModel]) -> list[_RuleModel]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return rules


class RuleClassifier:
    """Rates configurations with regular-expression rules, matched case-insensitively."""

    def __init__(self, rules: Sequence[Rule], default_sensitivity: Sensitivity) -> None:
        self.rules = tuple(rules)
        self.default_sensitivity = default_sensitivity

    @classmethod
    def from_mapping(cls, data: Any, *, source: str = "<rules>") -> RuleClassifier:
        """Rules from parsed YAML; ConfigurationError names `source`, the rule and the problem."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"Invalid classifier rules in {source}: the file must hold a mapping with "
                f"`default` (low, medium or high) and `rules` (a list), not {type(data).__name__}"
            )
        try:
            parsed = _RulesFileModel.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(_describe(problem, data) for problem in error.errors())
            raise ConfigurationError(f"Invalid classifier rules in {source}: {problems}") from None
        rules = [
            Rule(rule.name, rule.sensitivity, re.compile(rule.pattern, re.IGNORECASE))
            for rule in parsed.rules
        ]
        return cls(rules, parsed.default)

    @classmethod
    def from_text(cls, text: str, *, source: str = "<rules>") -> RuleClassifier:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigurationError(f"{source} is not valid YAML: {error}") from None
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> RuleClassifier:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigurationError(
                f"No classifier rules file at {path}: fix approval.rules_file "
                "(PDSNO_APPROVAL__RULES_FILE), or unset it to use the shipped rules"
            ) from None
        except OSError as error:
            raise ConfigurationError(f"Cannot read classifier rules {path}: {error}") from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def default(cls) -> RuleClassifier:
        """The rules shipped with pdsno (pdsno/data/classifier_rules.yaml)."""
        shipped = resources.files("pdsno").joinpath("data", SHIPPED_RULES)
        return cls.from_text(
            shipped.read_text(encoding="utf-8"), source=f"pdsno/data/{SHIPPED_RULES}"
        )

    @classmethod
    def load(cls, rules_file: str | Path | None) -> RuleClassifier:
        """`rules_file` when set (ApprovalSettings.rules_file), else the shipped rules."""
        return cls.default() if rules_file is None else cls.from_file(rules_file)

    def classify(self, config_lines: Iterable[str]) -> Classification:
        """The highest rating over the statements; an empty change gets the default.

        Fails closed: a statement no rule matches, and a line that had to be
        cut into several statements, are rated at least MEDIUM.
        """
        ratings: list[Sensitivity] = []
        matched: dict[str, None] = {}
        unmatched: list[str] = []
        for line in config_lines:
            if not isinstance(line, str):
                unmatched.append(repr(line))
                ratings.append(Sensitivity.highest(self.default_sensitivity, UNKNOWN_FLOOR))
                continue
            parts = statements(line)
            if len(parts) > 1 or parts[0] != line:
                ratings.append(UNKNOWN_FLOOR)  # altered on the way: never auto-approved
            for statement in parts:
                hits = [rule for rule in self.rules if rule.pattern.search(statement)]
                if not hits:
                    unmatched.append(statement)
                    ratings.append(Sensitivity.highest(self.default_sensitivity, UNKNOWN_FLOOR))
                    continue
                matched.update(dict.fromkeys(rule.name for rule in hits))
                ratings.append(Sensitivity.highest(*(rule.sensitivity for rule in hits)))
        overall = Sensitivity.highest(*ratings) if ratings else self.default_sensitivity
        return Classification(overall, list(matched), unmatched)


def _describe(problem: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """One pydantic error as `rule 3 'bgp': pattern: ...`, in an operator's words."""
    location = list(problem["loc"])
    message = problem["msg"].removeprefix("Value error, ")
    if len(location) >= 2 and location[0] == "rules" and isinstance(location[1], int):
        index = location[1]
        rules = data.get("rules")
        raw = rules[index] if isinstance(rules, list) and index < len(rules) else None
        name = raw.get("name") if isinstance(raw, Mapping) else None
        label = f"rule {index + 1}" + (f" {name!r}" if name else "")
        where = ".".join(str(part) for part in location[2:])
        if problem["type"] == "missing":
            return f"{label}: missing key {where!r}"
        return f"{label}: {where + ': ' if where else ''}{message}"
    where = ".".join(str(part) for part in location) or "file"
    if problem["type"] == "missing":
        return f"missing key {where!r}"
    return f"{where}: {message}"
