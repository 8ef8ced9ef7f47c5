"""End to end: the official Runware Python SDKs, unchanged, against a real `easel serve` process.

PyPI `runware` 0.5.x (WebSocket) and `runware-sdk` 1.x (WebSocket and REST) are installed by
scripts/dev.sh into <venv>/sdks/<name>; both are the package `runware`, so each runs as its own
process (tests/e2e/sdk_clients/*.py) that prints one JSON line of scenario results. The three
clients run at once against one server; the tests then check what each SDK handed its caller,
fetch the images from their imageURL, and compare pixels across SDKs: the same request must give
the same image whatever SDK or transport carried it, up to batching: the clients' jobs arrive
together and the server batches them, which moves a pixel by one level at most before encoding
(float rounding of another batch size; tests/pipelines/test_engine_batching.py). Runware's
default output is JPEG, which can spread such a step over a block, so images are compared by
their mean difference, far below the distance between two seeds. A failing scenario's result
carries the frames the SDK sent (and, for 1.x, received), so the assertion message shows the
exchange.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.server_process import ServerProcess
from tests.models import tiny
from tests.models.tiny_controlnet import (
    save_controlnet_config,
    save_controlnet_single_file,
    tiny_sd1_controlnet,
)

API_KEY = "e2e-runware-key"
MODEL_AIR = "runware:100@1"
CONTROLNET_AIR = "civitai:38784@44716"
SEED = 1234
SIZE = (64, 64)
CLIENTS_DIR = Path(__file__).parent / "sdk_clients"
KINDS = ("runware-0.5", "runware-sdk-1/websocket", "runware-sdk-1/rest")
SDK_1 = KINDS[1:]
SCENARIOS = {
    "runware-0.5": "bad_key,txt2img,img2img,inpaint,controlnet,bad_param,model_search,pong",
    "runware-sdk-1": "bad_key,txt2img,txt2img_sync,img2img,inpaint,controlnet,bad_param,"
    "model_search,progress",
}
CLIENT_TIMEOUT_S = 240


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))


def square_mask() -> Image.Image:
    mask = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    return Image.fromarray(mask, mode="L")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 1.x checkpoint under Runware's AIR id and a tiny ControlNet under a civitai id."""
    root = tmp_path_factory.mktemp("models")
    pipe = tiny.tiny_sd1_pipeline(tmp_path_factory.mktemp("tokenizers"))
    tiny.save_single_file(pipe, root / "checkpoints" / "tiny.safetensors")
    tiny.save_config_dir(pipe, root / "configs" / "tiny", like="sd15")
    net = tiny_sd1_controlnet()
    save_controlnet_single_file(net, root / "controlnet" / "control_v11p_sd15_canny.safetensors")
    save_controlnet_config(net, root / "configs" / "canny")
    (root / "manifest.toml").write_text(
        "[aliases]\n"
        f'"{MODEL_AIR}" = "tiny"\n'
        '[models."checkpoints/tiny.safetensors"]\n'
        'config = "configs/tiny"\n'
        '[models."controlnet/control_v11p_sd15_canny.safetensors"]\n'
        'config = "configs/canny"\n'
        f'ids = ["{CONTROLNET_AIR}"]\n'
    )
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local files the SDKs read: an init image, an inpainting mask, a ControlNet guide."""
    root = tmp_path_factory.mktemp("inputs")
    picture(1).save(root / "init.png")
    square_mask().save(root / "mask.png")
    picture(2).save(root / "guide.png")
    return root


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("server")
    keys = base / "keys.json"
    keys.write_text(json.dumps({"runware": [{"api_key": API_KEY}]}))
    process = ServerProcess(
        base / "data", "--keys-file", str(keys), "--models-dir", str(models_dir)
    )
    with process:
        yield process


def sdk_folder(name: str) -> Path:
    folder = Path(sys.prefix) / "sdks" / name
    assert (folder / "runware").is_dir(), (
        f"{folder} is missing: scripts/dev.sh installs the Runware SDKs there"
    )
    return folder


def client_command(kind: str, server: ServerProcess, files: Path) -> tuple[list[str], Path]:
    sdk, _, transport = kind.partition("/")
    if sdk == "runware-0.5":
        ws_url = f"ws://127.0.0.1:{server.port}/v1"
        args = [str(CLIENTS_DIR / "runware_05.py"), ws_url, API_KEY, SCENARIOS[sdk], str(files)]
        return [sys.executable, *args], sdk_folder("runware")
    script = str(CLIENTS_DIR / "runware_sdk_1.py")
    args = [script, server.url, API_KEY, transport, SCENARIOS[sdk], str(files)]
    return [sys.executable, *args], sdk_folder("runware-sdk")


@pytest.fixture(scope="module")
def results(server: ServerProcess, files: Path) -> dict[str, dict[str, Any]]:
    """Every client process run once, all at the same time; {kind: {scenario: result}}."""
    commands = {kind: client_command(kind, server, files) for kind in KINDS}
    running = {
        kind: subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(sdk), "RUNWARE_API_KEY": ""},
        )
        for kind, (command, sdk) in commands.items()
    }
    outputs = {}
    for kind, process in running.items():
        try:
            outputs[kind] = process.communicate(timeout=CLIENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            outputs[kind] = process.communicate()
    out: dict[str, dict[str, Any]] = {}
    for kind, (stdout, stderr) in outputs.items():
        lines = stdout.strip().splitlines()
        assert running[kind].returncode == 0 and lines, (
            f"{kind} client failed ({running[kind].returncode}):\n{stderr[-4000:]}\n"
            f"server log:\n{server.log()[-4000:]}"
        )
        out[kind] = json.loads(lines[-1])
    return out


def outcome(results: dict[str, dict[str, Any]], kind: str, scenario: str) -> dict[str, Any]:
    return results[kind][scenario]


def succeeded(results: dict[str, dict[str, Any]], kind: str, scenario: str) -> dict[str, Any]:
    result = outcome(results, kind, scenario)
    assert result["ok"], f"{kind} {scenario}: {json.dumps(result, indent=1)[:6000]}"
    return result


def fetch(url: str) -> np.ndarray:
    assert url and url.startswith("http://127.0.0.1:"), url
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


Pixels = Callable[[str, str], list[np.ndarray]]


@pytest.fixture(scope="module")
def pixels(results: dict[str, dict[str, Any]]) -> Pixels:
    """pixels(kind, scenario): the images a scenario returned, fetched from their imageURL once."""
    cache: dict[tuple[str, str], list[np.ndarray]] = {}

    def get(kind: str, scenario: str) -> list[np.ndarray]:
        if (kind, scenario) not in cache:
            images = succeeded(results, kind, scenario)["images"]
            cache[kind, scenario] = [fetch(image["imageURL"]) for image in images]
        return cache[kind, scenario]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_txt2img_returns_two_distinct_images_with_their_seeds(
    results: dict[str, dict[str, Any]], pixels: Pixels, kind: str
) -> None:
    images = succeeded(results, kind, "txt2img")["images"]
    assert len(images) == 2
    assert len({image["imageUUID"] for image in images}) == 2
    assert {image["taskType"] for image in images} == {"imageInference"}
    assert len({image["taskUUID"] for image in images}) == 1
    assert sorted(image["seed"] for image in images) == [SEED, SEED + 1]
    first, second = pixels(kind, "txt2img")
    assert first.shape == second.shape == (SIZE[1], SIZE[0], 3)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("kind", SDK_1)
def test_sdk_1_default_async_delivery_is_acknowledged_then_polled(
    results: dict[str, dict[str, Any]], kind: str
) -> None:
    result = succeeded(results, kind, "txt2img")
    tasks = [task for frame in result["sent"] for task in frame]
    inference = next(task for task in tasks if task["taskType"] == "imageInference")
    assert inference["deliveryMethod"] == "async"
    polls = [task for task in tasks if task["taskType"] == "getResponse"]
    assert polls and all(task["taskUUID"] == inference["taskUUID"] for task in polls)


def test_sdk_1_on_progress_sees_the_pushed_progress_on_the_websocket(
    results: dict[str, dict[str, Any]],
) -> None:
    """Async tasks on a WebSocket get their progress pushed (server/runware/progress.py): the
    SDK's documented on_progress callback sees it rise through the steps, then the images."""
    result = succeeded(results, "runware-sdk-1/websocket", "progress")
    progress = result["progress"]
    assert progress == sorted(progress), progress
    # 100 tiny steps take about a second: at least one push (4 a second) lands mid-run
    assert any(0 < p < 100 for p in progress), progress
    assert [image["seed"] for image in result["images"]] == [77]
    pushed = [
        item
        for frame in result["received"]
        for item in frame.get("data", [])
        if item.get("status") == "processing" and "progress" in item
    ]
    assert pushed, "no progress item came over the socket"


@pytest.mark.parametrize("kind", SDK_1)
def test_sdk_1_sync_delivery_gives_the_async_images(
    results: dict[str, dict[str, Any]], pixels: Pixels, kind: str
) -> None:
    result = succeeded(results, kind, "txt2img_sync")
    tasks = [task for frame in result["sent"] for task in frame]
    assert not [task for task in tasks if task["taskType"] == "getResponse"]
    got = pixels(kind, "txt2img_sync")
    want = pixels(kind, "txt2img")
    assert len(got) == 2
    assert all(close(a, b) for a, b in zip(got, want, strict=True))


# Mean |difference| (0..255 levels) allowed between one request's JPEG images batched and
# alone; two seeds' images differ by ~30.
BATCH_TOLERANCE = 1.0


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(np.int16) - b).mean()) < BATCH_TOLERANCE


@pytest.mark.parametrize("scenario", ["txt2img", "img2img", "inpaint", "controlnet"])
def test_every_sdk_and_transport_gets_the_same_pixels(pixels: Pixels, scenario: str) -> None:
    reference = pixels(KINDS[0], scenario)
    for kind in KINDS[1:]:
        got = pixels(kind, scenario)
        assert len(got) == len(reference), kind
        assert all(close(a, b) for a, b in zip(got, reference, strict=True)), kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", ["img2img", "inpaint", "controlnet"])
def test_image_inputs_change_the_image(
    results: dict[str, dict[str, Any]], pixels: Pixels, kind: str, scenario: str
) -> None:
    """Same prompt and seed as txt2img's first image: the init image / mask / guide must count."""
    (image,) = pixels(kind, scenario)
    assert image.shape == (SIZE[1], SIZE[0], 3)
    assert not np.array_equal(image, pixels(kind, "txt2img")[0])
    (item,) = succeeded(results, kind, scenario)["images"]
    assert item["seed"] == SEED


def test_runware_05_uploads_a_local_controlnet_guide_first(
    results: dict[str, dict[str, Any]],
) -> None:
    """What 0.5 sent, whether or not the inference then succeeded (checked elsewhere)."""
    tasks = [
        task for frame in outcome(results, "runware-0.5", "controlnet")["sent"] for task in frame
    ]
    kinds = [task["taskType"] for task in tasks]
    assert kinds.index("imageUpload") < kinds.index("imageInference")
    upload = tasks[kinds.index("imageUpload")]
    assert upload["image"].startswith("data:image/png;base64,")
    unit = tasks[kinds.index("imageInference")]["controlNet"][0]
    assert unit["model"] == CONTROLNET_AIR
    assert not unit["guideImage"].startswith("data:")  # the imageUUID the upload returned


@pytest.mark.parametrize("kind", SDK_1)
def test_sdk_1_image_upload_serves_the_uploaded_image(
    results: dict[str, dict[str, Any]], kind: str, files: Path
) -> None:
    upload = succeeded(results, kind, "controlnet")["upload"]
    assert upload["taskType"] == "imageUpload" and upload["imageUUID"]
    uploaded = fetch(upload["imageURL"])
    assert np.array_equal(uploaded, np.asarray(Image.open(files / "guide.png").convert("RGB")))


@pytest.mark.parametrize("kind", KINDS)
def test_an_invalid_api_key_raises_the_sdks_auth_error(
    results: dict[str, dict[str, Any]], kind: str
) -> None:
    result = outcome(results, kind, "bad_key")
    assert not result["ok"], result
    if kind == "runware-0.5":
        # ensureConnection raises ConnectionError(<server message>) (base.py:1876-1906); the
        # retries end with the circuit breaker quoting it (base.py:384-389).
        assert result["error_type"] == "ConnectionError", result
        assert "key" in result["message"].lower(), result
    else:
        assert result["error_type"] == "RunwareError", result
        assert result["code"] == "auth", result
        assert "key" in result["message"].lower(), result
        if kind.endswith("/rest"):
            assert result["status_code"] == 401, result


@pytest.mark.parametrize("kind", KINDS)
def test_an_invalid_parameter_is_raised_to_the_task_with_the_servers_message(
    results: dict[str, dict[str, Any]], kind: str
) -> None:
    result = outcome(results, kind, "bad_param")
    assert not result["ok"], result
    tasks = [task for frame in result["sent"] for task in frame]
    task_uuid = next(t["taskUUID"] for t in tasks if t["taskType"] == "imageInference")
    if kind == "runware-0.5":
        # An errors item routed by taskUUID fails that task with RunwareAPIError(item).
        assert result["error_type"] == "RunwareAPIError", result
        error = result["error_data"]
        assert error["taskUUID"] == task_uuid, result
        assert "width" in (error.get("message", "") + str(error.get("parameter"))), result
    else:
        assert result["error_type"] == "RunwareError", result
        assert result["code"] == "validation", result
        assert result["task_uuid"] == task_uuid, result
        assert result["parameter"] == "width", result
        assert "width" in result["message"], result


def model_search_results(results: dict[str, dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    result = succeeded(results, kind, "model_search")
    if kind == "runware-0.5":  # parsed into IModelSearchResponse / IModel by the SDK
        assert result["totalResults"] == len(result["results"]), result
        return result["results"]
    (item,) = result["items"]
    assert item["taskType"] == "modelSearch", item
    assert item["totalResults"] == len(item["results"]), item
    for model in item["results"]:  # 0.5 needs these to build IModel (types.py:301-327)
        assert isinstance(model["tags"], list) and isinstance(model["private"], bool), model
    return item["results"]


@pytest.mark.parametrize("kind", KINDS)
def test_model_search_lists_the_installed_models(
    results: dict[str, dict[str, Any]], kind: str
) -> None:
    models = model_search_results(results, kind)
    by_category = {(model["category"], model["air"]) for model in models}
    assert ("controlnet", CONTROLNET_AIR) in by_category, models
    assert any(category == "checkpoint" for category, _ in by_category), models


@pytest.mark.parametrize("kind", KINDS)
def test_model_search_names_a_checkpoint_by_its_air_id(
    results: dict[str, dict[str, Any]], kind: str
) -> None:
    """The manifest gives the checkpoint the AIR id clients use; 1.x looks a model id without
    ":" and "@" up online before sending it (client.py:548-564), so `air` must be AIR-shaped."""
    models = model_search_results(results, kind)
    assert MODEL_AIR in {model["air"] for model in models}, models


def test_runware_05_keeps_its_connection_alive_with_pongs(
    results: dict[str, dict[str, Any]],
) -> None:
    succeeded(results, "runware-0.5", "pong")
