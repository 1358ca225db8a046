"""The two reference servers of the API benchmark, written next to device.json.

Both run under uvicorn with the settings of a pdsno listener (h11, asyncio
loop, TLS, no access log), so that their ratios compare the apps, not servers.
"""

from __future__ import annotations

# The ceiling: a raw ASGI app that sends the same bytes.
BARE_APP = """
from pathlib import Path

BODY = Path(__file__).with_name("device.json").read_bytes()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
"""

# What FastAPI's default path gives a trivial app: an async endpoint, an
# async header dependency and a response_model (pdsno's own DeviceOut, so
# the validation and serialisation are those of the same JSON).
MINIMAL_APP = """
import json
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException

from pdsno.api.models import DeviceOut

DEVICE = json.loads(Path(__file__).with_name("device.json").read_bytes())
app = FastAPI()


async def api_key(x_api_key: Annotated[str | None, Header()] = None) -> str:
    if not x_api_key:
        raise HTTPException(401, "authentication required")
    return x_api_key


@app.get("/api/v1/devices/{device_id}", response_model=DeviceOut)
async def get_device(device_id: str, _: Annotated[str, Depends(api_key)]) -> dict:
    return DEVICE
"""
