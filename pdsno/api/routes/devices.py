from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from pdsno.api.deps import Context, check_region, forget_region, region_scope, require
from pdsno.api.models import DeviceIn, DeviceOut, DeviceStatus, DeviceUpdate
from pdsno.api.types import Count, Identifier, Region
from pdsno.auth.api_keys import Principal
from pdsno.nib import devices

SURFACE = "api"
router = APIRouter(prefix="/devices", tags=["devices"])
# The dependency of the device read, named: pdsno.api.fast_device_read runs it too.
READ_DEVICE = require("devices:read")


@router.get("", response_model=list[DeviceOut])
def list_devices(
    ctx: Context,
    principal: Annotated[Principal, Depends(require("devices:read"))],
    region: Annotated[Region | None, Query()] = None,
    device_status: Annotated[DeviceStatus | None, Query(alias="status")] = None,
    limit: Annotated[Count, Query(ge=1, le=500)] = 100,
    offset: Annotated[Count, Query()] = 0,
) -> list[dict]:
    with ctx.engine.connect() as conn:
        return devices.list_devices(
            conn,
            region=region_scope(principal, region),
            status=device_status,
            limit=limit,
            offset=offset,
        )


@router.post("", response_model=DeviceOut, status_code=status.HTTP_201_CREATED)
def create_device(
    body: DeviceIn,
    ctx: Context,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> dict:
    check_region(principal, body.region, f"device {body.device_id}")
    with ctx.engine.begin() as conn:
        return devices.create(conn, **body.model_dump())


@router.get("/{device_id}", response_model=DeviceOut)
async def get_device(
    device_id: Annotated[Identifier, Path()],
    ctx: Context,
    _: Annotated[Principal, Depends(READ_DEVICE)],
) -> Response:
    """The hot read of polling tools: a cached device is sent as the bytes it
    was serialised to when loaded (DeviceOut, as response_model documents),
    on the event loop; only a miss reads the NIB, in the thread pool."""

    def load() -> bytes:
        with ctx.engine.connect() as conn:
            return device_json(devices.get(conn, device_id))

    body = await ctx.device_cache.get_or_load_async(device_id, load)
    return device_response(body)


def device_response(body: bytes) -> Response:
    """The answer of a device read (the route's, and the fast path's)."""
    return Response(body, media_type="application/json")


def device_json(row: dict) -> bytes:
    """A device as the API answers it: what FastAPI would make of it through DeviceOut."""
    return DeviceOut.model_validate(row).model_dump_json().encode()


@router.patch("/{device_id}", response_model=DeviceOut)
def update_device(
    device_id: Annotated[Identifier, Path()],
    body: DeviceUpdate,
    ctx: Context,
    _: Annotated[Principal, Depends(require("devices:write"))],
) -> dict:
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    with ctx.engine.begin() as conn:
        updated = devices.update_device(
            conn, device_id, expected_version=body.version, changes=changes
        )
    ctx.device_cache.invalidate(device_id)
    forget_region(ctx, "device_id", device_id)
    return updated
