"""The API's input types: text and integers that every NIB backend can hold.

Use these, not bare `str` and `int`, for every field, query and path
parameter of the API. A value that passes them can be stored in SQLite and
in PostgreSQL alike, so a bad value is refused with a 422 naming the field,
never a 500 from the database:

- text: no NUL (PostgreSQL refuses it in text), no lone surrogate (not
  encodable as UTF-8), no control character (a line of text has none; free
  text may hold tab and newline), and a length bound (the column's);
- integers: within the column's range (PostgreSQL `integer` for counts,
  offsets and versions; `bigint` for sequence numbers).

Times the API returns carry their UTC offset on every backend (SQLite hands
back naive datetimes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

from pdsno.clock import as_utc

INT32_MAX = 2**31 - 1  # PostgreSQL integer: versions, counts, offsets
INT64_MAX = 2**63 - 1  # PostgreSQL bigint: sequence numbers

# What a one-line text field may not hold: C0 controls (NUL among them),
# DEL and C1 controls. Published in the OpenAPI schema; lone surrogates,
# refused too, are not Unicode text at all, so no schema can name them.
LINE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
# Free text may also hold tab, line feed and carriage return.
FREE_TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"

_FREE_TEXT_CONTROLS = frozenset("\t\n\r")


def _first_refused(value: str, allowed: frozenset[str]) -> tuple[int, str] | None:
    for index, char in enumerate(value):
        point = ord(char)
        if char in allowed:
            continue
        if point < 0x20 or 0x7F <= point <= 0x9F or 0xD800 <= point <= 0xDFFF:
            return index, char
    return None


def _checker(allowed: frozenset[str]):
    def check(value: str) -> str:
        refused = _first_refused(value, allowed)
        if refused is not None:
            index, char = refused
            kind = "lone surrogate" if 0xD800 <= ord(char) <= 0xDFFF else "control character"
            raise PydanticCustomError(
                "text_character",
                "{kind} U+{point} at position {index} is not allowed here",
                {"kind": kind, "point": f"{ord(char):04X}", "index": index},
            )
        return value

    return check


_check_line = _checker(frozenset())
_check_free_text = _checker(_FREE_TEXT_CONTROLS)


def text(
    max_length: int,
    *,
    min_length: int = 1,
    pattern: str | None = None,
    multiline: bool = False,
    description: str | None = None,
) -> Any:
    """The API's one text type: `max_length` characters at most (the column's),
    no NUL, no lone surrogate, no control character (tab and line breaks in
    `multiline` free text), and `pattern` when given (identifiers)."""
    constraints = StringConstraints(min_length=min_length, max_length=max_length, pattern=pattern)
    check = _check_free_text if multiline else _check_line
    # A given pattern admits no control character already; checked all the same.
    extra = None if pattern else {"pattern": FREE_TEXT_PATTERN if multiline else LINE_PATTERN}
    return Annotated[
        str,
        constraints,
        AfterValidator(check),
        Field(description=description, json_schema_extra=extra),
    ]


def bounded_int(minimum: int = 0, maximum: int = INT32_MAX, description: str | None = None) -> Any:
    """The API's one integer type: within what the NIB's column can hold."""
    return Annotated[int, Field(ge=minimum, le=maximum, description=description)]


# Identifiers: devices, policies, controllers, proposals (UUIDs), users, tokens.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Identifier = text(128, pattern=IDENTIFIER_PATTERN)
ControllerId = text(64, pattern=IDENTIFIER_PATTERN)
Region = text(64, pattern=r"^[a-z0-9][a-z0-9-]*$")
# A state name such as `active` or `awaiting_regional`; used to filter lists.
StateName = text(32, pattern=r"^[a-z][a-z_]*$")
# Event types: `proposal.executed`, `auth.login_failed`.
EventType = text(64, pattern=r"^[a-z][a-z0-9_.]*$")
Username = text(128)
# One line of text: names, addresses, vendors, roles.
Name = text(128)
# Several lines of text: a decision's reason.
FreeText = text(1000, min_length=0, multiline=True)

Count = bounded_int(0)  # how many, how many to skip
Version = bounded_int(1, description="The version you read; a newer one means 409")
SequenceNumber = bounded_int(0, INT64_MAX)

# Times in responses: always with their UTC offset (RFC 3339 date-time).
UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]
