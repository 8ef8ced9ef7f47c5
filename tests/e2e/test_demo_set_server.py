"""End to end: a fresh `easel serve` (nothing installed, its own data directory) answers every
PICPIK action, every Runware task type and the legacy protocol on the demo set it builds at start.

The models are random, so only that each request gets its result (and that listings say what the
models are) is checked here; what each model does is pinned by the feature tests.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import connect

from tests.e2e.server_process import ServerProcess
from tests.picpik_client import PicpikClient

CANNY = "control_v11p_sd15_canny"
SMALL = {"Width": 64, "Height": 64, "MainModel": {"InferenceParams": {"Steps": 6}}}
GERMAN_PROMPT = "Eine kleine Katze schläft auf dem roten Sofa im Wohnzimmer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("fresh") / "data"
    started = time.monotonic()
    with ServerProcess(data_dir, share_demo=False) as process:
        # Seen in the test log (-s): start-up time, the demo set's build included.
        print(f"fresh server up in {time.monotonic() - started:.1f} s")
        yield process


def _picture(width: int = 64, height: int = 64) -> Image.Image:
    """A bright square on a dark ground, with a little noise."""
    rng = np.random.default_rng(width * height)
    pixels = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] += 200
    return Image.fromarray(pixels)


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _picpik(server: ServerProcess) -> PicpikClient:
    return PicpikClient(httpx.Client(base_url=server.url, timeout=60))


def _finished(client: PicpikClient, action: str, **params: Any) -> dict[str, Any]:
    reply = client.call(action, **params)
    assert reply["RetCode"] == 0, (action, reply)
    detail = client.wait(reply["TaskUID"])
    assert detail["Status"] == "Finished", (action, detail)
    return detail


def _runware(server: ServerProcess, task: dict[str, Any]) -> list[dict[str, Any]]:
    task = {"taskUUID": str(uuid.uuid4()), **task}
    reply = httpx.post(server.url + "/v1", json=[task], timeout=120).json()
    assert "data" in reply, (task["taskType"], reply)
    return reply["data"]


def _upload(server: ServerProcess, image: Image.Image) -> str:
    (item,) = _runware(server, {"taskType": "imageUpload", "image": _png(image)})
    return item["imageUUID"]


def _legacy(server: ServerProcess, message: dict[str, Any], reply_key: str) -> dict[str, Any]:
    """One legacy message on the WebSocket: the body of its reply frame under reply_key."""
    with connect(server.url.replace("http://", "ws://") + "/v1", open_timeout=30) as socket:
        socket.send(json.dumps({"newConnection": {"apiKey": "any"}}))
        assert "newConnectionSessionUUID" in json.loads(socket.recv(timeout=30))
        socket.send(json.dumps(message))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            frame = json.loads(socket.recv(timeout=180))
            assert not frame.get("error"), frame
            if reply_key in frame:
                return frame[reply_key]
    raise TimeoutError(reply_key)


def test_the_data_directory_holds_the_demo_set(server: ServerProcess) -> None:
    demo = server.data_dir / "demo"
    assert not demo.is_symlink()  # built by this server
    assert (demo / "easel-demo-set.json").is_file()
    assert (demo / "controlnet" / CANNY / "config.json").is_file()
    assert (demo / "ipadapter" / "ip-adapter_sd15.safetensors").is_file()


def test_picpik_generation_actions(server: ServerProcess) -> None:
    client = _picpik(server)
    png = _png(_picture())
    detail = _finished(
        client,
        "ApplyReferenceStyle",
        ImageList=[png, _png(_picture(48, 48))],
        RawImageIndex=0,
        StyleImageIndex=1,
        **SMALL,
    )
    assert len(detail["ImgList"]) == 1
    canny = {
        "ControlModel": {"ModelCode": CANNY},
        "PreProcessor": {"ModelCode": "canny"},
        "ImageIndex": 0,
    }
    style = {"ControlModel": {"ModelCode": "ip-adapter_sd15"}, "ImageIndex": 0}
    for unit in (canny, style):
        detail = _finished(
            client,
            "GenerateImages",
            PositivePrompts=["a house"],
            ImageAndMaskList=[png],
            ControlNetList=[unit],
            **SMALL,
        )
        assert len(detail["ImgList"]) == 1
    # Translated by the demo translator before it runs.
    _finished(client, "GenerateImages", PositivePrompts=[GERMAN_PROMPT], **SMALL)


def test_picpik_utility_actions(server: ServerProcess) -> None:
    client = _picpik(server)
    png = _png(_picture())
    assert len(_finished(client, "RemoveBackground", RawImage=png)["ImgList"]) == 1
    detail = _finished(client, "RemoveBackgroundsInBatch", RawImageList=[png, png])
    assert len(detail["ImgList"]) == 2
    detail = _finished(client, "ResizeImage", RawImage=png, Width=128, Height=128)
    assert len(detail["ImgList"]) == 1
    detail = _finished(client, "DescribeImages", ImageList=[png])
    assert len(detail["TxtList"]) == 1


def test_picpik_listings_mark_the_demo_models(server: ServerProcess) -> None:
    client = _picpik(server)
    controls = client.call("ListControlNets")["ControlModels"]
    assert controls[CANNY]["ModelCode"] == CANNY
    assert "draws noise" in controls[CANNY]["Description"]
    assert {"control_v11p_sd15_mlsd", "ioclab_sd15_recolor"} <= set(controls)
    models = client.call("ListModels")["MainModels"]
    assert "draws noise" in models["easel demo"]["Description"]
    assert "draws noise" in models["easel demo XL"]["Description"]
    assert not any(name.startswith("legacy:") for name in models)  # Runware's, not PICPIK's


def test_runware_tasks(server: ServerProcess) -> None:
    image_id = _upload(server, _picture())
    inference = {
        "taskType": "imageInference",
        "positivePrompt": "a house",
        "model": "easel-demo",
        "width": 64,
        "height": 64,
        "steps": 2,
    }
    units = {
        "controlNet": [{"model": CANNY, "guideImage": image_id, "weight": 1.0}],
        "ipAdapters": [{"model": "ip-adapter_sd15", "guideImage": image_id, "weight": 0.8}],
        "checkNSFW": True,
    }
    for field, value in units.items():
        (item,) = _runware(server, {**inference, field: value})
        assert item["imageURL"], (field, item)
    for task_type in ("removeBackground", "upscale", "caption"):
        (item,) = _runware(
            server, {"taskType": task_type, "inputImage": image_id, "upscaleFactor": 2}
        )
        assert item.get("imageURL") or item.get("text"), (task_type, item)
    items = _runware(server, {"taskType": "promptEnhance", "prompt": "a cat", "promptVersions": 2})
    assert len(items) == 2
    (search,) = _runware(server, {"taskType": "modelSearch", "category": "controlnet"})
    names = {model["air"]: model["name"] for model in search["results"]}
    assert names[CANNY] == f"{CANNY} (demo: draws noise)"


@pytest.mark.parametrize("model_id", [13, 4])  # an SD 1.x id, the SDXL one
def test_legacy_new_task_by_numeric_model_id(server: ServerProcess, model_id: int) -> None:
    task_uuid = str(uuid.uuid4())
    body = {
        "taskUUID": task_uuid,
        "taskType": 1,
        "promptText": "a lighthouse",
        "modelId": model_id,
        "sizeId": 1,
        "steps": 1,
        "numberResults": 1,
    }
    reply = _legacy(server, {"newTask": body}, "newImages")
    (image,) = reply["images"]
    assert image["taskUUID"] == task_uuid and image["imageSrc"]


def test_legacy_utilities(server: ServerProcess) -> None:
    image_id = _upload(server, _picture())
    messages = {
        "newRemoveBackground": ({"imageUUID": image_id}, "newRemoveBackground"),
        "newUpscaleGan": ({"imageUUID": image_id, "upscaleFactor": 2}, "newUpscaleGan"),
        "newReverseImageClip": ({"imageUUID": image_id}, "newReverseClip"),
        "newPromptEnhance": ({"prompt": "a cat", "promptVersions": 1}, "newPromptEnhancer"),
    }
    for key, (fields, reply_key) in messages.items():
        body = _legacy(server, {key: {"taskUUID": str(uuid.uuid4()), **fields}}, reply_key)
        assert body.get("images") or body.get("texts"), (key, body)


def test_easel_models_lists_the_demo_set(server: ServerProcess, tmp_path: Path) -> None:
    from tests.e2e.server_process import run_easel

    result = run_easel("models", "--data-dir", str(server.data_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (line_13,) = [line for line in lines if "legacy:13" in line]
    assert line_13.startswith("checkpoint") and "easel-demo " in line_13
    (line_4,) = [line for line in lines if "legacy:4" in line]
    assert "easel-demo-xl" in line_4
    canny = next(line for line in lines if CANNY in line)
    assert canny.startswith("controlnet") and "built-in demo: draws noise" in canny
    assert any(line.startswith("caption") and "demo" in line for line in lines)
