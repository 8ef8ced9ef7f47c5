"""Drive the official PyPI `runware` 0.5.x SDK, unchanged, against a server; print one JSON line.

    python runware_05.py WS_URL API_KEY SCENARIO[,SCENARIO...] FILES_DIR

Run with PYTHONPATH=<venv>/sdks/runware (the SDK is the package `runware`, like runware-sdk 1.x,
so each lives in its own process). FILES_DIR holds init.png, mask.png and guide.png. The output
line maps each scenario to {"ok": true, ...} or {"ok": false, "error_type", "message", "code"}.
A scenario that hangs (0.5 waits for some replies without a timeout) ends as error_type
"Timeout" instead of blocking the others.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from frames import shorten
from runware import Runware
from runware.types import IControlNetGeneral, IImageInference, IModelSearch
from runware.utils import RunwareAPIError

MODEL = "runware:100@1"
CONTROLNET = "civitai:38784@44716"
BASE: dict[str, Any] = {
    "model": MODEL,
    "positivePrompt": "a red fox in the snow",
    "width": 64,
    "height": 64,
    "steps": 2,
    "CFGScale": 7.0,
    "seed": 1234,
}
SCENARIO_TIMEOUT_S = 60.0


class SentFrames(logging.Handler):
    """0.5 logs every frame it sends at DEBUG ("Sending message: [...]", server.py:326), as the
    Python repr of the list: keep them (pings left out) to report what went over the wire."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.frames: list[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.startswith("Sending message: "):
            return
        text = message.removeprefix("Sending message: ")
        try:
            frame = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            frame = text
        if isinstance(frame, list) and frame and frame[0].get("taskType") == "ping":
            return
        self.frames.append(shorten(frame))


def images(result: Any) -> list[dict[str, Any]]:
    return [
        {
            "taskType": image.taskType,
            "taskUUID": image.taskUUID,
            "imageUUID": image.imageUUID,
            "imageURL": image.imageURL,
            "seed": image.seed,
        }
        for image in result
    ]


async def txt2img(client: Runware, files: Path) -> dict[str, Any]:
    return {"images": images(await client.imageInference(IImageInference(**BASE, numberResults=2)))}


async def img2img(client: Runware, files: Path) -> dict[str, Any]:
    request = IImageInference(**BASE, seedImage=str(files / "init.png"), strength=0.6)
    return {"images": images(await client.imageInference(request))}


async def inpaint(client: Runware, files: Path) -> dict[str, Any]:
    request = IImageInference(
        **BASE, seedImage=str(files / "init.png"), maskImage=str(files / "mask.png"), strength=0.9
    )
    return {"images": images(await client.imageInference(request))}


async def controlnet(client: Runware, files: Path) -> dict[str, Any]:
    # A local path: the SDK uploads it with imageUpload first and sends the returned imageUUID.
    unit = IControlNetGeneral(model=CONTROLNET, guideImage=str(files / "guide.png"), weight=0.8)
    request = IImageInference(**BASE, controlNet=[unit])
    return {"images": images(await client.imageInference(request))}


async def bad_param(client: Runware, files: Path) -> dict[str, Any]:
    request = IImageInference(**{**BASE, "width": 7})
    return {"images": images(await client.imageInference(request))}


async def model_search(client: Runware, files: Path) -> dict[str, Any]:
    found = await client.modelSearch(IModelSearch(limit=50))
    return {
        "totalResults": found.totalResults,
        "results": [{"air": model.air, "category": model.category} for model in found.results],
    }


async def pong(client: Runware, files: Path) -> dict[str, Any]:
    """0.5 pings every 5 s and reconnects after 30 s without a pong (server.py:458-484,
    utils.py:74-79): wait (up to 12 s) until the SDK has recorded a pong after connecting."""
    deadline = time.monotonic() + 12
    while client._last_pong_time <= CONNECTED_AT[id(client)]:
        if time.monotonic() > deadline:
            raise RuntimeError("no pong recorded within 12 s")
        await asyncio.sleep(0.2)
    return {}


SCENARIOS: dict[str, Callable[[Runware, Path], Awaitable[dict[str, Any]]]] = {
    "txt2img": txt2img,
    "img2img": img2img,
    "inpaint": inpaint,
    "controlnet": controlnet,
    "bad_param": bad_param,
    "model_search": model_search,
    "pong": pong,
}
CONNECTED_AT: dict[int, float] = {}


def failure(error: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "error_type": type(error).__name__,
        "message": str(error),
        "code": getattr(error, "code", None),
        "error_data": error.error_data if isinstance(error, RunwareAPIError) else None,
    }


async def guarded(
    step: Callable[[], Awaitable[dict[str, Any]]], sent: SentFrames
) -> dict[str, Any]:
    start = len(sent.frames)
    began = time.monotonic()
    try:
        result = {"ok": True, **await asyncio.wait_for(step(), SCENARIO_TIMEOUT_S)}
    except TimeoutError:
        result = {"ok": False, "error_type": "Timeout", "message": f"{SCENARIO_TIMEOUT_S} s"}
    except Exception as error:
        result = failure(error)
    result["elapsed_s"] = round(time.monotonic() - began, 2)
    result["sent"] = sent.frames[start:]
    return result


async def run_bad_key(url: str) -> dict[str, Any]:
    client = Runware(api_key="not-a-valid-key", url=url)
    try:
        await client.connect()
        request = IImageInference(**BASE)
        return {"ok": True, "images": images(await client.imageInference(request))}
    finally:
        await client.disconnect()


async def main(url: str, api_key: str, names: list[str], files: Path) -> dict[str, Any]:
    sent = SentFrames()
    sdk_logger = logging.getLogger("runware")
    sdk_logger.addHandler(sent)
    sdk_logger.setLevel(logging.DEBUG)
    out: dict[str, Any] = {}
    if "bad_key" in names:
        out["bad_key"] = await guarded(lambda: run_bad_key(url), sent)
    wanted = [name for name in names if name != "bad_key"]
    if not wanted:
        return out
    client = Runware(api_key=api_key, url=url, log_level=logging.DEBUG)
    for noisy in ("websockets", "asyncio"):  # configure_logging set them to DEBUG on stderr
        logging.getLogger(noisy).setLevel(logging.WARNING)
    connected = await guarded(lambda: _connect(client), sent)
    if not connected["ok"]:
        return {**out, **{name: connected for name in wanted}}
    try:
        for name in wanted:
            scenario = SCENARIOS[name]
            out[name] = await guarded(lambda scenario=scenario: scenario(client, files), sent)
    finally:
        await client.disconnect()
    return out


async def _connect(client: Runware) -> dict[str, Any]:
    await client.connect()
    CONNECTED_AT[id(client)] = client._last_pong_time  # set at connect (server.py:58)
    return {"session": client._connectionSessionUUID}


if __name__ == "__main__":
    ws_url, key, scenario_names, files_dir = sys.argv[1:5]
    results = asyncio.run(main(ws_url, key, scenario_names.split(","), Path(files_dir)))
    print(json.dumps(results), flush=True)
