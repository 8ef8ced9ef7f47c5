"""End to end: the utility tasks on a real `easel serve` process, over both protocols.

One server serves a models directory holding a tiny random-weight model of every utility, saved
in its real format (tests/models/tiny_*.py) and loaded by easel's real loaders; a second server
has none, for the missing-model errors. Results are compared with the same job run through an
in-process engine on the same files (parity: the front ends pass the parameters through and
change no pixel or word), and each parameter is checked for its effect.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import connect

from pipelines.jobs import (
    BackgroundRemovalJob,
    Box,
    CaptionJob,
    GenerationJob,
    JobKind,
    JobResult,
    PreprocessJob,
    UpscaleJob,
)
from server.picpik.errors import RetCode
from tests.demo_set import shared_demo_root
from tests.e2e.server_process import ServerProcess
from tests.engine_harness import run_jobs
from tests.models.tiny_blip import save_tiny_blip
from tests.models.tiny_rmbg import save_tiny_rmbg
from tests.models.tiny_safety_checker import save_tiny_safety_checker
from tests.models.tiny_text_models import save_tiny_causal_lm, save_tiny_m2m100
from tests.models.tiny_upscaler import save_tiny_upscaler
from tests.picpik_client import PicpikClient

GERMAN_PROMPT = "Eine kleine Katze schläft auf dem roten Sofa im Wohnzimmer"
DEMO = "easel-demo"


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(width: int = 48, height: int = 40) -> Image.Image:
    """A bright subject on a dark ground: the tiny segmentation model's foreground."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    pixels[10:30, 12:36] = (230, 220, 200)
    pixels[:, :, 2] = np.linspace(0, 120, width, dtype=np.uint8)[None, :]
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("utility-models")
    save_tiny_rmbg(root / "background-removal" / "rmbg-tiny")
    save_tiny_blip(root / "caption" / "blip-tiny")
    save_tiny_causal_lm(root / "prompt-enhance" / "lm-tiny")
    save_tiny_upscaler(root / "upscale_models" / "x2-tiny.safetensors", scale=2)
    save_tiny_m2m100(root / "translation" / "m2m-tiny")
    return root


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("utility-server") / "data"
    with ServerProcess(data_dir, "--models-dir", str(models_dir)) as process:
        yield process


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a checkpoint of its own and no utility models: the demo set's utility models
    serve only servers without a real checkpoint, so here every utility is missing."""
    root = tmp_path_factory.mktemp("no-utility-models")
    shutil.copytree(shared_demo_root() / DEMO, root / "models" / "checkpoints" / "tiny")
    with ServerProcess(root / "data", "--models-dir", str(root / "models")) as process:
        yield process


@pytest.fixture(scope="module")
def engine_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-data")


def _direct(models_dir: Path, data_dir: Path, job: Any) -> JobResult:
    (result,) = run_jobs(models_dir, data_dir, [job])
    assert isinstance(result, JobResult), result
    return result


def _picpik(server: ServerProcess) -> PicpikClient:
    return PicpikClient(httpx.Client(base_url=server.url, timeout=60))


def _picpik_task(client: PicpikClient, action: str, **params: Any) -> dict[str, Any]:
    reply = client.call(action, **params)
    assert reply["RetCode"] == 0, reply
    detail = client.wait(reply["TaskUID"])
    assert detail["Status"] == "Finished", detail
    return detail


def _download(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def _runware(server: ServerProcess, task: dict[str, Any]) -> dict[str, Any]:
    """One task over REST (POST /v1): the reply's JSON."""
    task = {"taskUUID": str(uuid.uuid4()), **task}
    response = httpx.post(server.url + "/v1", json=[task], timeout=120)
    return response.json()


def _runware_data(server: ServerProcess, task: dict[str, Any]) -> list[dict[str, Any]]:
    reply = _runware(server, task)
    assert "data" in reply, reply
    return reply["data"]


def _legacy(server: ServerProcess, message: dict[str, Any], reply_key: str) -> dict[str, Any]:
    """One legacy message on the WebSocket: its reply frame's body under reply_key."""
    url = server.url.replace("http://", "ws://") + "/v1"
    with connect(url, open_timeout=30) as socket:
        socket.send(json.dumps({"newConnection": {"apiKey": "any"}}))
        assert "newConnectionSessionUUID" in json.loads(socket.recv(timeout=30))
        socket.send(json.dumps(message))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            frame = json.loads(socket.recv(timeout=120))
            assert not frame.get("error"), frame
            if reply_key in frame:
                return frame[reply_key]
    raise TimeoutError(reply_key)


def _upload(server: ServerProcess, image: Image.Image) -> str:
    (item,) = _runware_data(server, {"taskType": "imageUpload", "image": _png(image)})
    return item["imageUUID"]


# --- background removal ---


def test_picpik_remove_background_box_and_only_mask(
    server: ServerProcess, models_dir: Path, engine_data: Path
) -> None:
    picture = _picture()
    client = _picpik(server)
    box = {"X": 6, "Y": 4, "Width": 30, "Height": 28}
    detail = _picpik_task(client, "RemoveBackground", RawImage=_png(picture), Box=box)
    (cutout,) = [_download(url) for url in detail["ImgList"]]
    assert cutout.mode == "RGBA" and cutout.size == (30, 28)  # Box crops
    expected = _direct(
        models_dir,
        engine_data,
        BackgroundRemovalJob(
            images=(picture,),
            box=Box(left=6, top=4, width=30, height=28),
            alpha_matting=None,
            foreground_threshold=240,
            background_threshold=15,
            erode_size=15,
        ),
    ).images[0]
    assert np.array_equal(np.asarray(cutout), np.asarray(expected))  # parity
    # The cut-out keeps the crop's colours where the subject is.
    crop = np.asarray(picture.crop((6, 4, 36, 32)))
    opaque = np.asarray(cutout)[:, :, 3] > 0
    assert opaque.any() and np.array_equal(np.asarray(cutout)[:, :, :3][opaque], crop[opaque])

    detail = _picpik_task(client, "RemoveBackground", RawImage=_png(picture), OnlyMask=True)
    (mask,) = [_download(url) for url in detail["ImgList"]]
    assert mask.mode == "L" and mask.size == picture.size  # OnlyMask: the mask itself
    assert np.asarray(mask)[20, 24] > np.asarray(mask)[2, 2]  # subject brighter than ground

    pictures = [picture, _picture(32, 32)]
    detail = _picpik_task(
        client, "RemoveBackgroundsInBatch", RawImageList=[_png(p) for p in pictures]
    )
    assert [_download(url).size for url in detail["ImgList"]] == [(48, 40), (32, 32)]


def test_picpik_remove_background_bad_box_is_refused(server: ServerProcess) -> None:
    reply = _picpik(server).call("RemoveBackground", RawImage=_png(_picture()), Box=[40, 0, 20, 10])
    assert reply["RetCode"] == RetCode.INVALID_PARAMETER
    assert "Box" in reply["Message"]


def test_runware_remove_background_options(
    server: ServerProcess, models_dir: Path, engine_data: Path
) -> None:
    picture = _picture()
    image_id = _upload(server, picture)
    (item,) = _runware_data(
        server,
        {"taskType": "removeBackground", "inputImage": image_id, "outputType": ["URL"]},
    )
    assert item["taskType"] == "removeBackground" and item["inputImageUUID"] == image_id
    cutout = _download(item["imageURL"])
    expected = _direct(models_dir, engine_data, BackgroundRemovalJob(images=(picture,))).images[0]
    assert cutout.mode == "RGBA"
    assert np.array_equal(np.asarray(cutout), np.asarray(expected))  # parity (PNG default)

    (item,) = _runware_data(
        server,
        {
            "taskType": "imageBackgroundRemoval",
            "inputImage": image_id,
            "returnOnlyMask": True,
        },
    )
    assert item["taskType"] == "imageBackgroundRemoval"
    assert _download(item["imageURL"]).mode == "L"

    (item,) = _runware_data(
        server,
        {"taskType": "removeBackground", "inputImage": image_id, "rgba": [0, 255, 0, 1]},
    )
    green = np.asarray(_download(item["imageURL"]).convert("RGBA"))
    assert (green[:, :, 3] == 255).all()  # composited over an opaque colour
    background = np.asarray(expected)[:, :, 3] == 0
    assert (green[background][:, :3] == (0, 255, 0)).all()


def test_legacy_remove_background(server: ServerProcess) -> None:
    image_id = _upload(server, _picture())
    body = _legacy(
        server,
        {"newRemoveBackground": {"imageUUID": image_id, "taskUUID": str(uuid.uuid4())}},
        "newRemoveBackground",
    )
    (entry,) = body["images"]
    assert _download(entry["imageSrc"]).mode == "RGBA"


# --- captions ---


def test_captions_on_both_protocols(
    server: ServerProcess, models_dir: Path, engine_data: Path
) -> None:
    pictures = [_picture(), _picture(32, 32)]
    expected = _direct(models_dir, engine_data, CaptionJob(images=tuple(pictures))).texts
    assert all(expected)
    detail = _picpik_task(_picpik(server), "DescribeImages", ImageList=[_png(p) for p in pictures])
    assert detail["TxtList"] == list(expected)  # parity, one text per image

    german = _direct(
        models_dir, engine_data, CaptionJob(images=(pictures[0],), language="de")
    ).texts
    detail = _picpik_task(
        _picpik(server), "DescribeImages", ImageList=[_png(pictures[0])], TranslateDescription="de"
    )
    assert detail["TxtList"] == list(german) and german[0] != expected[0]

    image_id = _upload(server, pictures[0])
    for task_type in ("caption", "imageCaption"):
        (item,) = _runware_data(server, {"taskType": task_type, "inputImage": image_id})
        assert item == {
            "taskType": task_type,
            "taskUUID": item["taskUUID"],
            "status": "success",
            "text": expected[0],
        }
    body = _legacy(
        server,
        {"newReverseImageClip": {"imageUUID": image_id, "taskUUID": str(uuid.uuid4())}},
        "newReverseClip",
    )
    assert [entry["text"] for entry in body["texts"]] == [expected[0]]


# --- prompt enhancement ---


def test_prompt_enhance_versions_and_length(server: ServerProcess) -> None:
    items = _runware_data(
        server,
        {
            "taskType": "promptEnhance",
            "prompt": "a castle on a hill",
            "promptVersions": 3,
            "promptMaxLength": 60,
        },
    )
    texts = [item["text"] for item in items]
    assert len(texts) == 3 and len(set(texts)) == 3  # distinct versions
    assert all(0 < len(text) <= 60 for text in texts)
    body = _legacy(
        server,
        {
            "newPromptEnhance": {
                "prompt": "a castle on a hill",
                "taskUUID": str(uuid.uuid4()),
                "promptVersions": 2,
                "promptMaxLength": 40,
            }
        },
        "newPromptEnhancer",
    )
    assert len(body["texts"]) == 2
    assert all(len(entry["text"]) <= 40 for entry in body["texts"])


# --- upscaling ---


def test_upscale_on_both_protocols(
    server: ServerProcess, models_dir: Path, engine_data: Path
) -> None:
    picture = _picture(32, 24)
    image_id = _upload(server, picture)
    for factor, task_type in ((2, "upscale"), (3, "imageUpscale")):
        (item,) = _runware_data(
            server,
            {
                "taskType": task_type,
                "inputImage": image_id,
                "upscaleFactor": factor,
                "outputFormat": "PNG",
            },
        )
        assert item["inputImageUUID"] == image_id
        upscaled = _download(item["imageURL"])
        assert upscaled.size == (32 * factor, 24 * factor)  # upscaleFactor sets the size
        expected = _direct(
            models_dir, engine_data, UpscaleJob(image=picture, factor=factor)
        ).images[0]
        assert np.array_equal(np.asarray(upscaled), np.asarray(expected))  # parity

    detail = _picpik_task(_picpik(server), "ResizeImage", RawImage=_png(picture), Width=100)
    (resized,) = [_download(url) for url in detail["ImgList"]]
    assert resized.size == (100, 75)  # one side: the aspect ratio is kept
    body = _legacy(
        server,
        {
            "newUpscaleGan": {
                "imageUUID": image_id,
                "taskUUID": str(uuid.uuid4()),
                "upscaleFactor": 2,
            }
        },
        "newUpscaleGan",
    )
    assert _download(body["images"][0]["imageSrc"]).size == (64, 48)


# --- ControlNet preprocessing ---


def test_controlnet_preprocess_current_protocol(
    server: ServerProcess, models_dir: Path, engine_data: Path
) -> None:
    picture = _picture(64, 64)
    image_id = _upload(server, picture)
    maps = []
    for low, high in ((50, 100), (200, 250)):
        (item,) = _runware_data(
            server,
            {
                "taskType": "imageControlNetPreProcess",
                "inputImage": image_id,
                "preProcessorType": "canny",
                "lowThresholdCanny": low,
                "highThresholdCanny": high,
                "outputFormat": "PNG",
            },
        )
        assert item["inputImageUUID"] == image_id
        maps.append(np.asarray(_download(item["guideImageURL"]).convert("L")))
        expected = _direct(
            models_dir,
            engine_data,
            PreprocessJob(
                image=picture,
                preprocessor="canny",
                options=MappingProxyType(
                    {"low_threshold": float(low), "high_threshold": float(high)}
                ),
            ),
        ).images[0]
        assert np.array_equal(maps[-1], np.asarray(expected.convert("L")))  # parity
    assert not np.array_equal(maps[0], maps[1])  # the thresholds act


# --- prompt translation ---


def _demo_job(prompt: str, seed: int, **changes: Any) -> GenerationJob:
    fields = dict(
        kind=JobKind.TXT2IMG,
        model=DEMO,
        prompt=prompt,
        width=64,
        height=64,
        steps=6,
        guidance_scale=7.5,
        seeds=(seed,),
        sampler="Euler",
    )
    return GenerationJob(**{**fields, **changes})


def test_picpik_translates_a_german_prompt(server: ServerProcess) -> None:
    client = _picpik(server)
    common = dict(
        MainModel={"ModelCode": "PICPIK General", "InferenceParams": {"Steps": 6}},
        Width=64,
        Height=64,
        Seed=5,
    )
    detail = client.generate(PositivePrompts=[GERMAN_PROMPT], **common)
    translated = detail["TranslatedPrompts"]
    assert translated["Language"] == "de"
    assert translated["PositivePrompt"] and translated["PositivePrompt"] != GERMAN_PROMPT
    # The job used the translation: the same image as sending the English text itself.
    direct = client.generate(
        PositivePrompts=[translated["PositivePrompt"]], TranslatePrompts=False, **common
    )
    assert direct["TranslatedPrompts"] is None
    images = [_download(detail["ImgList"][0]), _download(direct["ImgList"][0])]
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))
    # English passes untouched, and TranslatePrompts false keeps the German text.
    english = client.generate(PositivePrompts=["a small cat on a red sofa"], **common)
    assert english["TranslatedPrompts"] is None
    kept = client.generate(PositivePrompts=[GERMAN_PROMPT], TranslatePrompts=False, **common)
    assert kept["TranslatedPrompts"] is None
    assert not np.array_equal(np.asarray(_download(kept["ImgList"][0])), np.asarray(images[0]))


def test_legacy_prompt_language_id_translates(server: ServerProcess) -> None:
    german_id = 23  # promptLanguageId of German in the legacy table
    common = {
        "taskType": 1,
        "modelId": DEMO,
        "sizeId": 1,
        "steps": 1,
        "numberResults": 1,
        "seed": 9,
        "schedulerId": 17,
    }
    translated = _legacy(
        server,
        {
            "newTask": {
                **common,
                "taskUUID": str(uuid.uuid4()),
                "promptText": GERMAN_PROMPT,
                "promptLanguageId": german_id,
            }
        },
        "newImages",
    )
    untranslated = _legacy(
        server,
        {
            "newTask": {
                **common,
                "taskUUID": str(uuid.uuid4()),
                "promptText": GERMAN_PROMPT,
                "promptLanguageId": 1,  # English (GB): taken as it is
            }
        },
        "newImages",
    )
    first, second = (_download(r["images"][0]["imageSrc"]) for r in (translated, untranslated))
    assert not np.array_equal(np.asarray(first), np.asarray(second))


# --- NSFW check ---


def test_runware_check_nsfw_flags_per_image(server: ServerProcess, models_dir: Path) -> None:
    task = {
        "taskType": "imageInference",
        "positivePrompt": "a test image",
        "model": DEMO,
        "width": 64,
        "height": 64,
        "steps": 2,
        "outputFormat": "PNG",
    }
    (plain,) = _runware_data(server, {**task, "seed": 21})
    assert "NSFWContent" not in plain  # not asked
    flagged = _download(plain["imageURL"]).convert("RGB")
    # Utility models are looked up when a job runs: install a checker that flags this image.
    save_tiny_safety_checker(models_dir / "safety-checker" / "default", flagged)
    items = _runware_data(server, {**task, "seed": 21, "numberResults": 2, "checkNSFW": True})
    assert [item["NSFWContent"] for item in items] == [True, False]  # seeds 21 and 22
    frame = _legacy(
        server,
        {
            "newTask": {
                "taskUUID": str(uuid.uuid4()),
                "taskType": 1,
                "promptText": "a test image",
                "modelId": DEMO,
                "sizeId": 1,
                "steps": 1,
                "seed": 3,
                "checkNsfw": True,
            }
        },
        "newImages",
    )
    assert frame["images"][0]["bNSFWContent"] is False


# --- missing models ---


def test_missing_models_are_named_on_both_protocols(bare_server: ServerProcess) -> None:
    png = _png(_picture())
    client = _picpik(bare_server)
    actions = [
        ("RemoveBackground", {"RawImage": png}, "background-removal"),
        ("DescribeImages", {"ImageList": [png]}, "caption"),
        ("ResizeImage", {"RawImage": png, "Width": 96}, "upscale_models"),
    ]
    for action, params, folder in actions:
        reply = client.call(action, **params)
        assert reply["RetCode"] == RetCode.MODEL_NOT_INSTALLED, reply
        assert f"{folder}/" in reply["Message"]
    reply = client.call("GenerateImages", PositivePrompts=[GERMAN_PROMPT], Width=64, Height=64)
    assert reply["RetCode"] == RetCode.MODEL_NOT_INSTALLED and "translation/" in reply["Message"]

    image_id = _upload(bare_server, _picture())
    tasks = [
        ({"taskType": "removeBackground", "inputImage": image_id}, "background-removal"),
        ({"taskType": "caption", "inputImage": image_id}, "caption"),
        ({"taskType": "promptEnhance", "prompt": "a cat"}, "prompt-enhance"),
        ({"taskType": "upscale", "inputImage": image_id}, "upscale_models"),
        (
            {
                "taskType": "imageControlNetPreProcess",
                "inputImage": image_id,
                "preProcessorType": "mlsd",
            },
            "annotators",
        ),
        (
            {
                "taskType": "imageInference",
                "positivePrompt": "a cat",
                "model": DEMO,
                "width": 64,
                "height": 64,
                "checkNSFW": True,
            },
            "safety-checker",
        ),
    ]
    for task, folder in tasks:
        reply = _runware(bare_server, task)
        (error,) = reply["errors"]
        assert error["code"] == "modelUnavailable" and error["taskType"] == task["taskType"]
        assert f"{folder}/" in error["message"], error
