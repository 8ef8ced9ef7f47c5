"""Path escapes: no string a client sends may name a file outside its directory.

Model codes and names, LoRA / embedding / VAE / ControlNet / IP-Adapter / refiner ids, utility
model names, preprocessor names, imageUUIDs, task ids and result file names go through both
protocols (Runware REST and legacy socket, PICPIK) spelled as paths: "../", absolute, URL-encoded,
backslashes, NUL bytes, hub ids. Each must be a clean "unknown model" / "not found" error.

Sentinels make "never loaded" observable: a LoRA and an embedding byte-identical to installed
ones (so they would load), and the demo checkpoint folder itself, all outside the models
directory, named by relative and absolute paths; image files with valid ids one folder above
the results folder. Symlinks the operator left in the models directory that point outside it are
skipped by the scan (and by the utility-model lookup), so their names resolve to nothing either.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from fastapi.testclient import TestClient
from PIL import Image

from models.registry import build_catalogue
from pipelines.engine import Engine, EngineConfig
from server.app import build_app
from server.picpik.errors import RetCode
from server.settings import Settings
from tests.models import tiny_submodels as sub
from tests.picpik_client import PicpikClient
from tests.runware_client import task


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


DATA_URI = "data:image/png;base64," + base64.b64encode(_png(1)).decode()
SENTINEL_ID = str(uuid.uuid4())  # an image id whose file lies one folder above the results
SENTINEL_PNG = _png(2)


@dataclass(frozen=True)
class Installed:
    models: Path
    outside: Path
    data: Path
    demo: Path

    def escapes(self, name: str, stem: str) -> list[str]:
        """`stem` (a sentinel outside the models directory) spelled every way a client might
        try to reach it from a kind folder; `name` is its file name there."""
        absolute = str(self.outside / name)
        return [
            f"../../outside/{stem}",
            f"../../outside/{name}",
            f"loras/../../outside/{stem}",
            absolute,
            absolute.removesuffix(".safetensors"),
            f"file://{absolute}",
            "..%2F..%2Foutside%2F" + stem,
            "%2e%2e%2f%2e%2e%2foutside%2f" + stem,
            f"..\\..\\outside\\{stem}",
            f"{stem}\x00",
            f"good\x00/../../outside/{stem}",
            "escape",  # the operator's symlink to the sentinel, skipped by the scan
        ]


@pytest.fixture(scope="module")
def installed(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("path-escapes")
    models, outside, data = root / "models", root / "outside", root / "data"
    pipe = StableDiffusionPipeline.from_pretrained(demo_dir, local_files_only=True)
    lora = sub.save_lora(sub.kohya_lora(pipe, seed=4), models / "loras" / "good.safetensors")
    vectors = sub.embedding_vectors(pipe.text_encoder.config.hidden_size, 2, seed=5)
    embedding = sub.save_a1111_safetensors_embedding(
        models / "embeddings" / "goodemb.safetensors", vectors
    )
    outside.mkdir()
    shutil.copyfile(lora, outside / "evil.safetensors")
    shutil.copyfile(embedding, outside / "evilemb.safetensors")
    (outside / "evilckpt").symlink_to(demo_dir, target_is_directory=True)
    (models / "loras" / "escape.safetensors").symlink_to(outside / "evil.safetensors")
    (models / "embeddings" / "escape.safetensors").symlink_to(outside / "evilemb.safetensors")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "escape").symlink_to(demo_dir, target_is_directory=True)
    # A utility model the lookup finds by name (never loaded here), and one outside.
    (models / "upscale_models").mkdir()
    (models / "upscale_models" / "good.safetensors").write_bytes(b"not loaded by these tests")
    (outside / "evil.pth").write_bytes(b"must never be named")
    (models / "upscale_models" / "escape.pth").symlink_to(outside / "evil.pth")
    # Image files with valid ids, outside the results folder.
    (data / "results").mkdir(parents=True)
    (data / f"{SENTINEL_ID}.png").write_bytes(SENTINEL_PNG)
    (data / "secret.png").write_bytes(SENTINEL_PNG)
    return Installed(models, outside, data, demo_dir)


@pytest.fixture(scope="module")
def client(installed: Installed, demo_root: Path) -> Iterator[TestClient]:
    report = build_catalogue(installed.models, demo_root=demo_root)
    outside = "symlink points outside the models directory"
    assert {(s.path.parent.name, s.path.name): s.reason for s in report.skipped} == {
        ("checkpoints", "escape"): outside,
        ("loras", "escape.safetensors"): outside,
        ("embeddings", "escape.safetensors"): outside,
    }
    config = EngineConfig(
        devices=["cpu"], cache_dir=installed.data / "cache", models_dir=installed.models
    )
    app = build_app(Settings(data_dir=installed.data), Engine(report.catalogue, config))
    with TestClient(app) as http:
        yield http


def _error(client: TestClient, sent: dict[str, Any]) -> dict[str, Any]:
    body = client.post("/v1", content=json.dumps([sent])).json()
    assert "data" not in body, body
    (error,) = body["errors"]
    assert error["taskUUID"] == sent["taskUUID"], error
    return error


def _inference(**fields: Any) -> dict[str, Any]:
    base = {"positivePrompt": "a cat", "model": "easel-demo", "width": 64, "height": 64}
    return task("imageInference", **{**base, "steps": 2, **fields})


def test_the_sentinels_twins_are_installed(client: TestClient) -> None:
    """The control: what lies outside is byte for byte what is served inside, by name."""
    (reply,) = client.post("/v1", json=[task("modelSearch", limit=100)]).json()["data"]
    listed = {(m["category"], m["air"]) for m in reply["results"]}
    assert {("lora", "good"), ("embeddings", "goodemb"), ("checkpoint", "easel-demo")} <= listed
    assert not any("escape" in air or "evil" in air for _, air in listed), listed


# --- Runware: model ids of every kind -----------------------------------------------------------

CHECKPOINT_ESCAPES = [
    "../outside/evilckpt",
    "checkpoints/../../outside/evilckpt",
    "escape",
    "runwayml/stable-diffusion-v1-5",  # a Hub id: never fetched
    "hf:runwayml/stable-diffusion-v1-5",
    "easel-demo/../../outside/evilckpt",
    "..\\outside\\evilckpt",
    "easel-demo\x00",
]


def _checkpoint_ids(installed: Installed) -> list[str]:
    return [*CHECKPOINT_ESCAPES, str(installed.demo), str(installed.demo) + "/", "/etc/passwd"]


@pytest.mark.parametrize("field", ["model", "refiner", "vae"])
def test_checkpoint_and_vae_ids_never_name_paths(
    client: TestClient, installed: Installed, field: str
) -> None:
    for identifier in _checkpoint_ids(installed):
        if field == "model":
            sent, parameter = _inference(model=identifier), "model"
        elif field == "refiner":
            sent = _inference(refiner={"model": identifier, "startStep": 1})
            parameter = "refiner.model"
        else:
            sent, parameter = _inference(vae=identifier), "vae"
        error = _error(client, sent)
        assert error["code"] == "unknownModel" and error["parameter"] == parameter, (
            identifier,
            error,
        )


@pytest.mark.parametrize(
    ("field", "name", "stem"),
    [("lora", "evil.safetensors", "evil"), ("embeddings", "evilemb.safetensors", "evilemb")],
)
def test_sub_model_ids_never_name_paths(
    client: TestClient, installed: Installed, field: str, name: str, stem: str
) -> None:
    for identifier in installed.escapes(name, stem):
        error = _error(client, _inference(**{field: [{"model": identifier, "weight": 1}]}))
        assert error["code"] == "unknownModel", (identifier, error)
        assert error["parameter"] == f"{field}[0].model", error


def test_controlnet_and_ip_adapter_ids_never_name_paths(
    client: TestClient, installed: Installed
) -> None:
    for identifier in installed.escapes("evil.safetensors", "evil"):
        unit = {"model": identifier, "guideImage": DATA_URI}
        error = _error(client, _inference(controlNet=[unit]))
        assert (error["code"], error["parameter"]) == ("unknownModel", "controlNet[0].model")
        error = _error(client, _inference(ipAdapters=[unit]))
        assert (error["code"], error["parameter"]) == ("unknownModel", "ipAdapters[0].model")


def test_utility_model_names_never_name_paths(client: TestClient, installed: Installed) -> None:
    """A utility model is found by the name of an installed folder or file, never as a path;
    an operator's symlink that leads outside is not installed."""
    names = [
        "../../outside/evil.pth",
        "../../outside/evil",
        str(installed.outside / "evil.pth"),
        "upscale_models/good.safetensors",
        "..\\..\\outside\\evil.pth",
        "good\x00",
        "escape",
        "escape.pth",
    ]
    for name in names:
        sent = task("upscale", inputImage=DATA_URI, upscaleFactor=2, model=name)
        error = _error(client, sent)
        assert error["code"] == "modelUnavailable", (name, error)
        assert error["message"] == (
            f"no upscale model named {name!r} is installed (installed: good.safetensors)"
        )


@pytest.mark.parametrize(
    "name", ["../../outside/evil", "/etc/passwd", "canny/../../x", "canny\x00"]
)
def test_preprocessor_names_never_name_paths(client: TestClient, name: str) -> None:
    sent = task("imageControlNetPreProcess", inputImage=DATA_URI, preProcessorType=name)
    error = _error(client, sent)
    assert (error["code"], error["parameter"]) == ("invalidParameter", "preProcessorType")
    assert "unknown preProcessorType" in error["message"]


# --- image ids, task ids and result files -------------------------------------------------------


def _sentinel_spellings(installed: Installed) -> list[str]:
    return [
        f"../{SENTINEL_ID}",
        f"../{SENTINEL_ID}.png",
        str(installed.data / f"{SENTINEL_ID}.png"),
        f"file://{installed.data / f'{SENTINEL_ID}.png'}",
        f"..\\{SENTINEL_ID}",
        f"{SENTINEL_ID}\x00",
    ]


def test_image_ids_never_name_paths(client: TestClient, installed: Installed) -> None:
    # A valid id whose file exists one folder up: not an image this server holds.
    error = _error(client, task("imageUpload", image=SENTINEL_ID))
    assert error["code"] == "invalidImage"
    assert error["message"].startswith(f"image: no image with imageUUID {SENTINEL_ID}")
    for value in _sentinel_spellings(installed):  # were one read, the job would run
        error = _error(client, _inference(seedImage=value, strength=0.5))
        assert (error["code"], error["parameter"]) == ("invalidImage", "seedImage"), error
        error = _error(client, task("imageUpload", image=value))
        assert (error["code"], error["parameter"]) == ("invalidImage", "image"), error


@pytest.mark.parametrize(
    "path",
    [
        "/results/..%2Fsecret.png",
        f"/results/..%2F{SENTINEL_ID}.png",
        "/results/%2e%2e%2fsecret.png",
        "/results/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/results/..%5Csecret.png",
        "/results/%2Fetc%2Fpasswd",
        f"/results/{SENTINEL_ID}.png",
        f"/results/{SENTINEL_ID}%0A.png",
        f"/results/{SENTINEL_ID}%00.png",
        f"/results/{SENTINEL_ID}.png%00",
        "/results/..",
        "/results/.",
    ],
)
def test_result_route_serves_only_the_results_folder(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.content != SENTINEL_PNG
    if path == "/results/..":  # "/" once the client resolves the dot segment: the playground
        assert response.headers["content-type"].startswith("text/html")
        return
    assert response.status_code in (404, 405), (path, response.status_code)


def test_result_route_control(client: TestClient) -> None:
    """The route does serve what is in the results folder (so a 404 above means something)."""
    (item,) = client.post("/v1", json=[task("imageUpload", image=DATA_URI)]).json()["data"]
    response = client.get(item["imageURL"])
    assert response.status_code == 200 and response.content


def test_task_ids_are_ids_not_paths(client: TestClient) -> None:
    for task_id in ("../../tasks.sqlite3", "/etc/passwd", "..%2F..%2Ftasks"):
        error = _error(client, task("getResponse", taskUUID=task_id))
        assert error["code"] == "taskNotFound", error
    reply = PicpikClient(client).call("ListTasksDetails", TaskUIDList=["../../tasks.sqlite3"])
    assert reply["RetCode"] == RetCode.TASK_NOT_FOUND, reply


# --- the legacy protocol --------------------------------------------------------------------------


def _legacy(client: TestClient, key: str, **fields: Any) -> dict[str, Any]:
    body = {"taskUUID": str(uuid.uuid4()), **fields}
    with client.websocket_connect("/v1") as socket:
        socket.send_json({"newConnection": {"apiKey": "any"}})
        assert "newConnectionSessionUUID" in socket.receive_json()
        socket.send_json({key: body})
        frame = socket.receive_json()
    assert frame.get("error") is True and frame["taskUUID"] == body["taskUUID"], frame
    return frame


def test_legacy_model_ids_never_name_paths(client: TestClient, installed: Installed) -> None:
    new_task = {"taskType": 1, "promptText": "a fox", "steps": 1}
    for identifier in ("../outside/evilckpt", str(installed.demo), "escape"):
        frame = _legacy(client, "newTask", **new_task, modelId=identifier)
        assert frame["errorId"] == 5, frame  # UNKNOWN_MODEL
    lora = [{"modelId": "../../outside/evil", "weight": 1}]
    frame = _legacy(client, "newTask", **new_task, modelId="easel-demo", lora=lora)
    assert frame["errorId"] == 5 and "lora[0].model" in frame["errorMessage"], frame
    frame = _legacy(
        client, "newPreProcessControlNet", preProcessorType="../../x", guideImageUrl=DATA_URI
    )
    assert frame["errorId"] == 3, frame  # INVALID_PARAMETER


# --- PICPIK ---------------------------------------------------------------------------------------


def test_picpik_model_codes_never_name_paths(client: TestClient, installed: Installed) -> None:
    picpik = PicpikClient(client)
    base: dict[str, Any] = {"PositivePrompts": ["a cat"], "Width": 64, "Height": 64}
    for identifier in _checkpoint_ids(installed):
        for ref in ({"ModelCode": identifier}, {"Name": identifier}):
            reply = picpik.call("GenerateImages", MainModel=ref, **base)
            assert reply["RetCode"] == RetCode.UNKNOWN_MODEL, (identifier, reply)
    image = DATA_URI.split(",", 1)[1]
    for identifier in installed.escapes("evil.safetensors", "evil"):
        subs = [{"ModelCode": identifier}]
        reply = picpik.call("GenerateImages", SubModelList=subs, **base)
        assert reply["RetCode"] == RetCode.UNKNOWN_MODEL, (identifier, reply)
        unit = {"ImageIndex": 0, "ControlModel": {"ModelCode": identifier}}
        reply = picpik.call(
            "GenerateImages", ControlNetList=[unit], ImageAndMaskList=[image], **base
        )
        assert reply["RetCode"] == RetCode.UNKNOWN_MODEL, (identifier, reply)
