"""Drive the official PyPI `runware-sdk` 1.x, unchanged, against a server; print one JSON line.

    python runware_sdk_1.py HTTP_URL API_KEY websocket|rest SCENARIO[,SCENARIO...] FILES_DIR

HTTP_URL is the server root (http://127.0.0.1:PORT); the SDK gets ws://.../v1 and http://.../v1.
Run with PYTHONPATH=<venv>/sdks/runware-sdk (the SDK is the package `runware`, like runware 0.5,
so each lives in its own process). FILES_DIR holds init.png, mask.png and guide.png. The output
line maps each scenario to {"ok": true, ...} or {"ok": false, "error_type", "message", "code",
...}, with the frames the SDK sent and received (long strings cut), taken from its log sink.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from frames import shorten
from runware import RunOptions, Runware, RunwareError, file_to_base64, file_to_data_uri

MODEL = "runware:100@1"
CONTROLNET = "civitai:38784@44716"
BASE: dict[str, Any] = {
    "taskType": "imageInference",  # explicit: no registry lookup (it would go online)
    "model": MODEL,
    "positivePrompt": "a red fox in the snow",
    "width": 64,
    "height": 64,
    "steps": 2,
    "CFGScale": 7.0,
    "seed": 1234,
}
TIMEOUT_MS = 60_000
OPTIONS = RunOptions(timeout=TIMEOUT_MS)


class Wire:
    """The SDK's log sink: every frame sent and received (pings and pongs left out)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.received: list[Any] = []

    def __call__(self, entry: Any) -> None:
        if entry.category not in ("send", "receive", "auth"):
            return
        try:
            frame = json.loads(entry.message)
        except (TypeError, ValueError):
            return
        text = json.dumps(frame)
        if '"ping": true' in text or '"pong": true' in text:
            return
        target = self.received if entry.category == "receive" else self.sent
        target.append(shorten(frame))


def images(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("taskType", "taskUUID", "imageUUID", "imageURL", "seed", "status")
    return [{key: item.get(key) for key in keys} for item in items]


async def txt2img(client: Runware, files: Path) -> dict[str, Any]:
    """The SDK's default delivery: "async" (ACK, then getResponse polling)."""
    return {"images": images(await client.run({**BASE, "numberResults": 2}, OPTIONS))}


async def txt2img_sync(client: Runware, files: Path) -> dict[str, Any]:
    params = {**BASE, "numberResults": 2, "deliveryMethod": "sync"}
    return {"images": images(await client.run(params, OPTIONS))}


async def img2img(client: Runware, files: Path) -> dict[str, Any]:
    params = {**BASE, "seedImage": file_to_data_uri(files / "init.png"), "strength": 0.6}
    return {"images": images(await client.run(params, OPTIONS))}


async def inpaint(client: Runware, files: Path) -> dict[str, Any]:
    params = {
        **BASE,
        "seedImage": file_to_data_uri(files / "init.png"),
        "maskImage": file_to_base64(files / "mask.png"),  # raw base64, no data: prefix
        "strength": 0.9,
    }
    return {"images": images(await client.run(params, OPTIONS))}


async def controlnet(client: Runware, files: Path) -> dict[str, Any]:
    """1.x has no local-file upload of its own: the documented way is imageUpload first."""
    uploaded = await client.image_upload({"image": file_to_data_uri(files / "guide.png")}, OPTIONS)
    unit = {"model": CONTROLNET, "guideImage": uploaded[0]["imageUUID"], "weight": 0.8}
    items = await client.run({**BASE, "controlNet": [unit]}, OPTIONS)
    return {"upload": uploaded[0], "images": images(items)}


async def bad_param(client: Runware, files: Path) -> dict[str, Any]:
    return {"images": images(await client.run({**BASE, "width": 7}, OPTIONS))}


async def model_search(client: Runware, files: Path) -> dict[str, Any]:
    found = await client.model_search({"limit": 50}, OPTIONS)
    return {"items": found}


async def progress(client: Runware, files: Path) -> dict[str, Any]:
    """The SDK's on_progress callback, fed by the progress items the server pushes (on the
    WebSocket) or returns to getResponse polls (REST)."""
    seen: list[Any] = []
    options = RunOptions(timeout=TIMEOUT_MS, on_progress=lambda item: seen.append(item["progress"]))
    items = await client.run({**BASE, "steps": 100, "seed": 77}, options)
    return {"images": images(items), "progress": seen}


SCENARIOS: dict[str, Callable[[Runware, Path], Awaitable[dict[str, Any]]]] = {
    "txt2img": txt2img,
    "txt2img_sync": txt2img_sync,
    "img2img": img2img,
    "inpaint": inpaint,
    "controlnet": controlnet,
    "bad_param": bad_param,
    "model_search": model_search,
    "progress": progress,
}


def failure(error: BaseException) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False, "error_type": type(error).__name__}
    result["message"] = str(error)
    if isinstance(error, RunwareError):
        result.update(
            code=error.code,
            parameter=error.parameter,
            task_type=error.task_type,
            task_uuid=error.task_uuid,
            status_code=error.status_code,
        )
    return result


async def guarded(step: Callable[[], Awaitable[dict[str, Any]]], wire: Wire) -> dict[str, Any]:
    sent, received = len(wire.sent), len(wire.received)
    began = time.monotonic()
    try:
        result = {"ok": True, **await asyncio.wait_for(step(), TIMEOUT_MS / 1000)}
    except TimeoutError:
        result = {"ok": False, "error_type": "Timeout", "message": f"{TIMEOUT_MS} ms"}
    except Exception as error:
        result = failure(error)
    result["elapsed_s"] = round(time.monotonic() - began, 2)
    result["sent"] = wire.sent[sent:]
    result["received"] = wire.received[received:]
    return result


def make_client(root: str, api_key: str, transport: str, wire: Wire) -> Runware:
    host = root.removeprefix("http://")
    return Runware(
        api_key=api_key,
        transport=transport,
        ws_base_url=f"ws://{host}/v1",
        http_base_url=f"http://{host}/v1",
        timeout=TIMEOUT_MS,
        poll_timeout=TIMEOUT_MS,
        debug=True,
        log_sink=wire,
    )


async def run_bad_key(root: str, transport: str, wire: Wire) -> dict[str, Any]:
    async with make_client(root, "not-a-valid-key", transport, wire) as client:
        return {"images": images(await client.run(BASE, OPTIONS))}


async def main(
    root: str, api_key: str, transport: str, names: list[str], files: Path
) -> dict[str, Any]:
    wire = Wire()
    out: dict[str, Any] = {}
    if "bad_key" in names:
        out["bad_key"] = await guarded(lambda: run_bad_key(root, transport, wire), wire)
    wanted = [name for name in names if name != "bad_key"]
    if not wanted:
        return out
    client = make_client(root, api_key, transport, wire)
    connected = await guarded(lambda: _connect(client), wire)
    if not connected["ok"]:
        await client.close()
        return {**out, **{name: connected for name in wanted}}
    try:
        for name in wanted:
            scenario = SCENARIOS[name]
            out[name] = await guarded(lambda scenario=scenario: scenario(client, files), wire)
    finally:
        await client.close()
    return out


async def _connect(client: Runware) -> dict[str, Any]:
    await client.connect()
    return {}


if __name__ == "__main__":
    http_root, key, transport_name, scenario_names, files_dir = sys.argv[1:6]
    results = asyncio.run(
        main(http_root, key, transport_name, scenario_names.split(","), Path(files_dir))
    )
    print(json.dumps(results), flush=True)
