"""Time, in one place, so that tests can move it."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every PDSNO time is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
