"""The executor plug-in and the built-in NIB recorder: versions, rollback, concurrency."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest
from nib_rows import add_controller, add_device, add_proposal
from sqlalchemy import Connection, Engine, select, update

from pdsno.approval import executor as executor_module
from pdsno.approval.executor import (
    ConfigExecutor,
    ExecutionResult,
    NibConfigRecorder,
    available_executors,
    load_executor,
)
from pdsno.errors import ConfigurationError, ConflictError, NotFoundError
from pdsno.nib.schema import device_configs, devices
from pdsno.security.keys import config_hash

DEVICE = "edge-7"
ORIGIN = "local-1"
INITIAL = ["hostname edge-7"]
FIRST = ["hostname edge-7", "interface Gi0/1", " description uplink"]
SECOND = ["hostname edge-7", "interface Gi0/1", " description uplink to core"]


@pytest.fixture
def nib(nib_engine: Engine) -> Engine:
    with nib_engine.begin() as conn:
        add_controller(conn, ORIGIN, controller_type="local")
        add_device(conn, DEVICE, INITIAL)
    return nib_engine


def apply(
    engine: Engine, config_lines: list[str], *, with_proposal: bool = True
) -> ExecutionResult:
    with engine.begin() as conn:
        proposal_id = (
            add_proposal(conn, DEVICE, config_lines, origin_id=ORIGIN, sensitivity="medium")
            if with_proposal
            else None
        )
        return NibConfigRecorder().apply(
            conn,
            device_id=DEVICE,
            config_lines=config_lines,
            proposal_id=proposal_id,
            applied_by="regional-1",
        )


def device_row(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(devices).where(devices.c.device_id == DEVICE)).one()


def history(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(device_configs)
                .where(device_configs.c.device_id == DEVICE)
                .order_by(device_configs.c.config_version)
            )
        )


def test_apply_twice_records_versions_with_rollback_snapshots(nib: Engine) -> None:
    first = apply(nib, FIRST)
    second = apply(nib, SECOND)
    assert first == ExecutionResult(DEVICE, 1, config_hash(FIRST), INITIAL)
    assert second == ExecutionResult(DEVICE, 2, config_hash(SECOND), FIRST)

    device = device_row(nib)
    assert device.current_config == SECOND
    assert device.config_version == 2
    assert device.version == 3

    rows = history(nib)
    assert [(r.config_version, r.config, r.rollback_config) for r in rows] == [
        (1, FIRST, INITIAL),
        (2, SECOND, FIRST),
    ]
    assert all(r.proposal_id and r.applied_by == "regional-1" for r in rows)
    assert rows[1].config_hash == config_hash(SECOND)


def test_rollback_reapplies_a_recorded_version_as_a_new_one(nib: Engine) -> None:
    apply(nib, FIRST)
    apply(nib, SECOND)
    with nib.begin() as conn:
        result = NibConfigRecorder().rollback(conn, DEVICE, 1, "operator:alice")
    assert result == ExecutionResult(DEVICE, 3, config_hash(FIRST), SECOND)
    assert device_row(nib).current_config == FIRST
    latest = history(nib)[-1]
    assert (latest.config_version, latest.proposal_id, latest.applied_by) == (
        3,
        None,
        "operator:alice",
    )


def test_rollback_to_zero_restores_the_configuration_before_the_first_change(
    nib: Engine,
) -> None:
    apply(nib, FIRST)
    with nib.begin() as conn:
        result = NibConfigRecorder().rollback(
            conn, device_id=DEVICE, to_version=0, applied_by="operator:alice"
        )
    assert result.config_version == 2
    assert device_row(nib).current_config == INITIAL


def test_rollback_to_an_unrecorded_version_is_not_found(nib: Engine) -> None:
    apply(nib, FIRST)
    missing = pytest.raises(NotFoundError, match="no recorded configuration version 5")
    with missing, nib.begin() as conn:
        NibConfigRecorder().rollback(conn, DEVICE, 5, "operator:alice")


def test_applying_to_an_unknown_device_is_not_found(nib: Engine) -> None:
    with pytest.raises(NotFoundError, match="device ghost is not in the NIB"), nib.begin() as conn:
        NibConfigRecorder().apply(
            conn, device_id="ghost", config_lines=FIRST, proposal_id=None, applied_by="r-1"
        )


def test_a_concurrent_change_to_the_device_is_a_conflict(
    nib: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_device = executor_module._read_device

    def read_then_someone_else_writes(conn: Connection, device_id: str) -> Any:
        stale = read_device(conn, device_id)
        # Another controller updates the device between our read and our write.
        conn.execute(
            update(devices)
            .where(devices.c.device_id == device_id)
            .values(name="renamed", version=devices.c.version + 1)
        )
        return stale

    monkeypatch.setattr(executor_module, "_read_device", read_then_someone_else_writes)
    with pytest.raises(ConflictError, match=r"device edge-7 changed .* version 1"):
        apply(nib, FIRST, with_proposal=False)
    monkeypatch.undo()
    assert history(nib) == []
    assert device_row(nib).config_version == 0


def test_the_recorder_is_a_config_executor() -> None:
    recorder = load_executor("nib-recorder")
    assert isinstance(recorder, NibConfigRecorder)
    assert isinstance(recorder, ConfigExecutor)
    assert recorder.name == "nib-recorder"


def fake_entry_points(*points: EntryPoint) -> Any:
    def entry_points(*, group: str) -> list[EntryPoint]:
        return [point for point in points if point.group == group]

    return entry_points


def test_plug_ins_come_from_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = EntryPoint(
        "recorder-copy", "pdsno.approval.executor:NibConfigRecorder", "pdsno.executors"
    )
    elsewhere = EntryPoint("other", "pdsno.approval.executor:NibConfigRecorder", "other.group")
    monkeypatch.setattr(executor_module, "entry_points", fake_entry_points(plugin, elsewhere))
    assert available_executors() == ["nib-recorder", "recorder-copy"]
    assert isinstance(load_executor("recorder-copy"), NibConfigRecorder)
    with pytest.raises(ConfigurationError, match="Unknown executor 'other'"):
        load_executor("other")


def test_an_unknown_executor_lists_the_available_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = EntryPoint("netconf", "pdsno.approval.executor:NibConfigRecorder", "pdsno.executors")
    monkeypatch.setattr(executor_module, "entry_points", fake_entry_points(plugin))
    with pytest.raises(
        ConfigurationError,
        match=r"Unknown executor 'ansible': the available executors are netconf, nib-recorder\. "
        r"Set approval\.executor",
    ):
        load_executor("ansible")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("pdsno.approval.executor:DoesNotExist", "could not be loaded"),
        ("pdsno.approval.executor:ExecutionResult", "could not be loaded"),  # needs arguments
        ("pdsno.approval.executor:BUILTIN_EXECUTORS", "could not be loaded"),  # not callable
        ("builtins:object", "is not a ConfigExecutor"),
    ],
)
def test_a_broken_plug_in_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    plugin = EntryPoint("broken", value, "pdsno.executors")
    monkeypatch.setattr(executor_module, "entry_points", fake_entry_points(plugin))
    with pytest.raises(ConfigurationError, match=f"Executor 'broken' .*{reason}"):
        load_executor("broken")
