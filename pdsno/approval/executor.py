"""Applying an approved configuration: a plug-in, chosen by approval.executor.

PDSNO ships one executor, "nib-recorder", which talks to no device: it makes
the NIB the record of what each device should run, version by version, with
the previous configuration kept as the rollback snapshot. Executors that push
to real devices are separate packages registered in the `pdsno.executors`
entry-point group, e.g. in their pyproject.toml:

    [project.entry-points."pdsno.executors"]
    netconf = "pdsno_netconf:NetconfExecutor"

The entry point names a class (or factory) called without arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, insert, select, update

from pdsno.clock import utcnow
from pdsno.errors import ConfigurationError, ConflictError, NotFoundError
from pdsno.nib.schema import device_configs, devices
from pdsno.security.keys import config_hash

ENTRY_POINT_GROUP = "pdsno.executors"


@dataclass(frozen=True)
class ExecutionResult:
    """What was applied: the device's new config version and how to undo it."""

    device_id: str
    config_version: int
    config_hash: str
    rollback_config: list[str]


@runtime_checkable
class ConfigExecutor(Protocol):
    """Applies a whole configuration to a device, inside the caller's transaction.

    `config_lines` is the device's complete new configuration. Implementations
    must record the result in the NIB in `conn`, so that the NIB and the
    execution token's consumption commit (or roll back) together.
    """

    name: str

    def apply(
        self,
        conn: Connection,
        *,
        device_id: str,
        config_lines: list[str],
        proposal_id: str | None,
        applied_by: str,
    ) -> ExecutionResult: ...


class NibConfigRecorder:
    """Records configurations as device versions in the NIB; touches no device."""

    name = "nib-recorder"

    def apply(
        self,
        conn: Connection,
        *,
        device_id: str,
        config_lines: list[str],
        proposal_id: str | None,
        applied_by: str,
    ) -> ExecutionResult:
        """Make `config_lines` the device's next version; ConflictError if it changed meanwhile."""
        device = _read_device(conn, device_id)
        new_version = device.config_version + 1
        lines = list(config_lines)
        rollback_config = list(device.current_config or [])
        digest = config_hash(lines)
        now = utcnow()
        # Optimistic concurrency: the UPDATE matches only the version we read,
        # so a concurrent change makes it match nothing instead of being lost.
        changed = conn.execute(
            update(devices)
            .where(devices.c.device_id == device_id, devices.c.version == device.version)
            .values(
                current_config=lines,
                config_version=new_version,
                updated_at=now,
                version=device.version + 1,
            )
        )
        if changed.rowcount != 1:
            raise ConflictError(
                f"device {device_id} changed while its configuration was being applied "
                f"(it was at version {device.version}): read it again and retry"
            )
        conn.execute(
            insert(device_configs).values(
                device_id=device_id,
                config_version=new_version,
                config=lines,
                config_hash=digest,
                rollback_config=rollback_config,
                proposal_id=proposal_id,
                applied_by=applied_by,
                created_at=now,
            )
        )
        return ExecutionResult(device_id, new_version, digest, rollback_config)

    def rollback(
        self, conn: Connection, device_id: str, to_version: int, applied_by: str
    ) -> ExecutionResult:
        """Re-apply recorded version `to_version` as a new version; history is never rewritten.

        Version 0 is the configuration the device had before its first recorded change.
        """
        target = _recorded_config(conn, device_id, to_version)
        return self.apply(
            conn,
            device_id=device_id,
            config_lines=target,
            proposal_id=None,
            applied_by=applied_by,
        )


def _read_device(conn: Connection, device_id: str) -> Any:
    device = conn.execute(
        select(devices.c.current_config, devices.c.config_version, devices.c.version).where(
            devices.c.device_id == device_id
        )
    ).one_or_none()
    if device is None:
        raise NotFoundError(f"device {device_id} is not in the NIB")
    return device


def _recorded_config(conn: Connection, device_id: str, to_version: int) -> list[str]:
    """The configuration of `to_version`: its own row, or for 0 the snapshot taken by version 1."""
    if to_version < 0:
        raise NotFoundError(f"device {device_id} has no configuration version {to_version}")
    wanted = max(to_version, 1)
    column = device_configs.c.config if to_version > 0 else device_configs.c.rollback_config
    row = conn.execute(
        select(column.label("config")).where(
            device_configs.c.device_id == device_id,
            device_configs.c.config_version == wanted,
        )
    ).one_or_none()
    if row is None:
        raise NotFoundError(
            f"device {device_id} has no recorded configuration version {to_version}"
        )
    return list(row.config)


BUILTIN_EXECUTORS: dict[str, Callable[[], ConfigExecutor]] = {
    NibConfigRecorder.name: NibConfigRecorder
}


def available_executors() -> list[str]:
    """Names that `load_executor` accepts: the built-in ones and the installed plug-ins."""
    return sorted({*BUILTIN_EXECUTORS, *(point.name for point in _plugin_entry_points())})


def load_executor(name: str) -> ConfigExecutor:
    """The executor called `name`, or ConfigurationError listing the available ones."""
    if name in BUILTIN_EXECUTORS:
        return BUILTIN_EXECUTORS[name]()
    for point in _plugin_entry_points():
        if point.name == name:
            return _instantiate(point)
    raise ConfigurationError(
        f"Unknown executor {name!r}: the available executors are "
        f"{', '.join(available_executors())}. Set approval.executor "
        f"(PDSNO_APPROVAL__EXECUTOR) to one of them, or install the package that provides it."
    )


def _plugin_entry_points() -> list[EntryPoint]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _instantiate(point: EntryPoint) -> ConfigExecutor:
    try:
        factory = point.load()
        executor = factory()
    except Exception as error:  # a broken plug-in must stop start-up with its name
        raise ConfigurationError(
            f"Executor {point.name!r} ({point.value}) could not be loaded: {error}"
        ) from error
    if not isinstance(executor, ConfigExecutor):
        raise ConfigurationError(
            f"Executor {point.name!r} ({point.value}) is not a ConfigExecutor: "
            "it needs a `name` attribute and an `apply` method"
        )
    return executor
