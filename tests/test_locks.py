"""Named leases in the NIB: one holder at a time, decided by the primary key."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from pdsno.clock import utcnow
from pdsno.errors import ConflictError
from pdsno.nib import locks as nib_locks
from pdsno.nib.locks import acquire, device_lock_name, held, release
from pdsno.nib.schema import locks

NAME = device_lock_name("edge-7")


def holder_of(engine: Engine, name: str = NAME) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(locks.c.holder).where(locks.c.name == name)).scalar()


def move_clock(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    monkeypatch.setattr(nib_locks, "utcnow", lambda: moment)


def test_second_holder_is_refused_with_holder_and_expiry(nib_engine: Engine) -> None:
    with nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-1", 60)
    refused = pytest.raises(
        ConflictError, match=r"device edge-7 is locked by regional-1 until \d{4}-"
    )
    with refused, nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-2", 60)
    assert holder_of(nib_engine) == "regional-1"


def test_the_same_holder_cannot_take_it_twice(nib_engine: Engine) -> None:
    with nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-1", 60)
    with pytest.raises(ConflictError), nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-1", 60)


def test_different_names_do_not_interfere(nib_engine: Engine) -> None:
    with nib_engine.begin() as conn:
        acquire(conn, device_lock_name("a"), "regional-1", 60)
        acquire(conn, device_lock_name("b"), "regional-2", 60)
    assert holder_of(nib_engine, device_lock_name("b")) == "regional-2"


def test_a_refusal_leaves_the_callers_transaction_usable(nib_engine: Engine) -> None:
    with nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-1", 60)
    with nib_engine.begin() as conn:
        with pytest.raises(ConflictError):
            acquire(conn, NAME, "regional-2", 60)
        # On PostgreSQL this would fail if the refused INSERT had aborted the transaction.
        acquire(conn, device_lock_name("other"), "regional-2", 60)
    assert holder_of(nib_engine, device_lock_name("other")) == "regional-2"


def test_an_expired_lock_is_taken_over(nib_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    start = utcnow()
    move_clock(monkeypatch, start)
    with nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-1", 30)
    move_clock(monkeypatch, start + timedelta(seconds=29))
    with pytest.raises(ConflictError), nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-2", 30)
    move_clock(monkeypatch, start + timedelta(seconds=31))
    with nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-2", 30)
    assert holder_of(nib_engine) == "regional-2"
    # The first holder's late release must not free the new holder's lease.
    with nib_engine.begin() as conn:
        assert release(conn, NAME, "regional-1") is False
    assert holder_of(nib_engine) == "regional-2"


def test_release_by_a_non_holder_does_nothing(nib_engine: Engine) -> None:
    with nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-1", 60)
    with nib_engine.begin() as conn:
        assert release(conn, NAME, "regional-2") is False
    assert holder_of(nib_engine) == "regional-1"
    with nib_engine.begin() as conn:
        assert release(conn, NAME, "regional-1") is True
    assert holder_of(nib_engine) is None
    with nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-2", 60)


def test_ttl_must_be_positive(nib_engine: Engine) -> None:
    with pytest.raises(ValueError, match="positive"), nib_engine.begin() as conn:
        acquire(conn, NAME, "regional-1", 0)


def test_held_commits_the_lease_and_releases_it(nib_engine: Engine) -> None:
    with held(nib_engine, NAME, "regional-1", 60):
        assert holder_of(nib_engine) == "regional-1"  # seen from another connection
        with pytest.raises(ConflictError), held(nib_engine, NAME, "regional-2", 60):
            pass
    assert holder_of(nib_engine) is None


def test_held_releases_when_the_block_fails(nib_engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="push failed"), held(nib_engine, NAME, "r-1", 60):
        raise RuntimeError("push failed")
    assert holder_of(nib_engine) is None


def test_concurrent_acquirers_exactly_one_wins(nib_engine: Engine) -> None:
    contenders = 8
    start = threading.Barrier(contenders)
    winners: list[str] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def contend(holder: str) -> None:
        try:
            start.wait(timeout=30)
            with nib_engine.begin() as conn:
                acquire(conn, NAME, holder, 60)
                winners.append(holder)
                time.sleep(0.2)  # keep the transaction open while the others try
        except ConflictError:
            refused.append(holder)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=contend, args=(f"regional-{n}",)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(winners) == 1
    assert len(refused) == contenders - 1
    assert holder_of(nib_engine) == winners[0]
