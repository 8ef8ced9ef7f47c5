"""Bad requests get RetCode != 0 naming the problem, never a 500, and the server carries on."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from server.picpik.errors import RetCode
from tests.conftest import demo_app
from tests.picpik_client import PicpikClient


def _png_b64(size: tuple[int, int] = (16, 16)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


GOOD = {
    "Action": "GenerateImages",
    "PositivePrompts": ["a cat"],
    "Width": 64,
    "Height": 64,
    "MainModel": {"InferenceParams": {"Steps": 6}},
}

BAD_BODIES: list[tuple[str, bytes, RetCode, str]] = [
    ("not json", b"{nope", RetCode.BAD_REQUEST, "not valid JSON"),
    ("json array", b"[1, 2]", RetCode.BAD_REQUEST, "JSON object"),
    ("no action", b"{}", RetCode.BAD_REQUEST, "no Action"),
    ("action not a string", b'{"Action": 5}', RetCode.BAD_REQUEST, "no Action"),
    ("NaN constant", b'{"Action": "GenerateImages", "Seed": NaN}', RetCode.BAD_REQUEST, "JSON"),
    ("not utf-8", b'{"Action": "\xff\xfe"}', RetCode.BAD_REQUEST, "JSON"),
]


def _bad(**changes: object) -> dict:
    body = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is _DELETE:
            body.pop(key, None)
        else:
            body[key] = value
    return body


_DELETE = object()

BAD_REQUESTS: list[tuple[str, dict, RetCode, str]] = [
    ("unknown action", {"Action": "MakeCoffee"}, RetCode.UNKNOWN_ACTION, "MakeCoffee"),
    ("later action", {"Action": "SwitchFace"}, RetCode.UNSUPPORTED, "SwitchFace"),
    ("width too small", _bad(Width=63), RetCode.INVALID_PARAMETER, "Width"),
    ("width too large", _bad(Width=2561), RetCode.INVALID_PARAMETER, "Width"),
    ("height as text", _bad(Height="tall"), RetCode.INVALID_PARAMETER, "Height"),
    ("height fractional", _bad(Height=64.5), RetCode.INVALID_PARAMETER, "Height"),
    ("batch 0", _bad(BatchSize=0), RetCode.INVALID_PARAMETER, "BatchSize"),
    ("batch 17", _bad(BatchSize=17), RetCode.INVALID_PARAMETER, "BatchSize"),
    ("seed -2", _bad(Seed=-2), RetCode.INVALID_PARAMETER, "Seed"),
    ("seed too big", _bad(Seed=2147483648), RetCode.INVALID_PARAMETER, "Seed"),
    (
        "steps 5",
        _bad(MainModel={"InferenceParams": {"Steps": 5}}),
        RetCode.INVALID_PARAMETER,
        "MainModel.InferenceParams.Steps",
    ),
    (
        "steps 101",
        _bad(MainModel={"InferenceParams": {"Steps": 101}}),
        RetCode.INVALID_PARAMETER,
        "Steps",
    ),
    (
        "cfg 0.5",
        _bad(MainModel={"InferenceParams": {"CFGScale": 0.5}}),
        RetCode.INVALID_PARAMETER,
        "CFGScale",
    ),
    (
        "cfg 31",
        _bad(MainModel={"InferenceParams": {"CFGScale": 31}}),
        RetCode.INVALID_PARAMETER,
        "CFGScale",
    ),
    (
        "clip skip 13",
        _bad(MainModel={"InferenceParams": {"ClipSkip": 13}}),
        RetCode.INVALID_PARAMETER,
        "ClipSkip",
    ),
    (
        "clip skip 0",
        _bad(MainModel={"InferenceParams": {"ClipSkip": 0}}),
        RetCode.INVALID_PARAMETER,
        "ClipSkip",
    ),
    (
        "unknown sampler",
        _bad(MainModel={"InferenceParams": {"Sampler": "Warp drive"}}),
        RetCode.INVALID_PARAMETER,
        "Sampler",
    ),
    (
        "unknown model",
        _bad(MainModel={"ModelCode": "no-such-model"}),
        RetCode.UNKNOWN_MODEL,
        "no-such-model",
    ),
    (
        "main model not an object",
        _bad(MainModel="PICPIK General"),
        RetCode.INVALID_PARAMETER,
        "MainModel",
    ),
    (
        "prompts not a list",
        _bad(PositivePrompts="a cat"),
        RetCode.INVALID_PARAMETER,
        "PositivePrompts",
    ),
    (
        "prompt not a string",
        _bad(PositivePrompts=["a", 3]),
        RetCode.INVALID_PARAMETER,
        "PositivePrompts[1]",
    ),
    (
        "refer strength 1.5",
        _bad(Image2Image={"ImageIndex": 0, "ReferStrength": 1.5}, ImageAndMaskList=[_png_b64()]),
        RetCode.INVALID_PARAMETER,
        "Image2Image.ReferStrength",
    ),
    (
        "unknown resize mode",
        _bad(Image2Image={"ImageIndex": 0, "ResizeMode": "Squash"}, ImageAndMaskList=[_png_b64()]),
        RetCode.INVALID_PARAMETER,
        "Image2Image.ResizeMode",
    ),
    (
        "negative image index",
        _bad(Image2Image={"ImageIndex": -1}, ImageAndMaskList=[_png_b64()]),
        RetCode.INVALID_PARAMETER,
        "Image2Image.ImageIndex",
    ),
    (
        "image index out of range",
        _bad(Image2Image={"ImageIndex": 2}, ImageAndMaskList=[_png_b64()]),
        RetCode.INVALID_PARAMETER,
        "out of range",
    ),
    (
        "no images at all",
        _bad(Image2Image={"ImageIndex": 0}),
        RetCode.INVALID_PARAMETER,
        "out of range",
    ),
    (
        "empty image slot",
        _bad(Image2Image={"ImageIndex": 0}, ImageAndMaskList=["", ""]),
        RetCode.INVALID_IMAGE,
        "ImageAndMaskList[0] is empty",
    ),
    (
        "bad base64",
        _bad(Image2Image={"ImageIndex": 0}, ImageAndMaskList=["data:image/png;base64,%%%"]),
        RetCode.INVALID_IMAGE,
        "not valid base64",
    ),
    (
        "not an image",
        _bad(
            Image2Image={"ImageIndex": 0}, ImageAndMaskList=[base64.b64encode(b"GIF? no.").decode()]
        ),
        RetCode.INVALID_IMAGE,
        "not a readable image",
    ),
    (
        "four controlnets",
        _bad(ControlNetList=[{}, {}, {}, {}]),
        RetCode.INVALID_PARAMETER,
        "ControlNetList",
    ),
    (
        "controlnet without model",
        _bad(ControlNetList=[{"ImageIndex": 0}], ImageAndMaskList=[_png_b64()]),
        RetCode.INVALID_PARAMETER,
        "ControlNetList[0].ControlModel",
    ),
    (
        "controlnet without image",
        _bad(ControlNetList=[{"ControlModel": {"ModelCode": "control_v11p_sd15_canny"}}]),
        RetCode.INVALID_PARAMETER,
        "ControlNetList[0].ImageIndex",
    ),
    (
        "controlnet not installed",
        _bad(
            ControlNetList=[{"ImageIndex": 0, "ControlModel": {"ModelCode": "control_v11p_x"}}],
            ImageAndMaskList=[_png_b64()],
        ),
        RetCode.UNKNOWN_MODEL,
        "control_v11p_x",
    ),
    (
        "control weight 2.5",
        _bad(
            ControlNetList=[
                {
                    "ImageIndex": 0,
                    "ControlModel": {"ModelCode": "c", "InferenceParams": {"ControlWeight": 2.5}},
                }
            ]
        ),
        RetCode.INVALID_PARAMETER,
        "ControlWeight",
    ),
    (
        "ending step 1.5",
        _bad(
            ControlNetList=[
                {
                    "ImageIndex": 0,
                    "ControlModel": {"ModelCode": "c", "InferenceParams": {"EndingStep": 1.5}},
                }
            ]
        ),
        RetCode.INVALID_PARAMETER,
        "EndingStep",
    ),
    (
        "unknown control mode",
        _bad(
            ControlNetList=[
                {
                    "ImageIndex": 0,
                    "ControlModel": {"ModelCode": "c", "InferenceParams": {"ControlMode": "loud"}},
                }
            ]
        ),
        RetCode.INVALID_PARAMETER,
        "ControlMode",
    ),
    (
        "resolution not a multiple of 64",
        _bad(
            ControlNetList=[
                {
                    "ImageIndex": 0,
                    "PreProcessor": {"ModelCode": "canny", "InferenceParams": {"Resolution": 100}},
                }
            ]
        ),
        RetCode.INVALID_PARAMETER,
        "Resolution",
    ),
    (
        "resolution 4096",
        _bad(
            ControlNetList=[
                {
                    "ImageIndex": 0,
                    "PreProcessor": {"ModelCode": "canny", "InferenceParams": {"Resolution": 4096}},
                }
            ]
        ),
        RetCode.INVALID_PARAMETER,
        "Resolution",
    ),
    (
        "unknown sub-model",
        _bad(SubModelList=[{"ModelCode": "no-such-lora"}]),
        RetCode.UNKNOWN_MODEL,
        "SubModelList[0]",
    ),
    (
        "sub-model without code",
        _bad(SubModelList=[{"InferenceParams": {"LoraWeight": 1}}]),
        RetCode.INVALID_PARAMETER,
        "SubModelList[0]",
    ),
    (
        "lora weight 2.5",
        _bad(SubModelList=[{"ModelCode": "x", "InferenceParams": {"LoraWeight": 2.5}}]),
        RetCode.INVALID_PARAMETER,
        "LoraWeight",
    ),
    (
        "lora weight -1.5",
        _bad(SubModelList=[{"ModelCode": "x", "InferenceParams": {"LoraWeight": -1.5}}]),
        RetCode.INVALID_PARAMETER,
        "LoraWeight",
    ),
    ("tileable not a bool", _bad(Tileable="maybe"), RetCode.INVALID_PARAMETER, "Tileable"),
    (
        "translate not a bool",
        _bad(TranslatePrompts="maybe"),
        RetCode.INVALID_PARAMETER,
        "TranslatePrompts",
    ),
    (
        "details without ids",
        {"Action": "ListTasksDetails"},
        RetCode.INVALID_PARAMETER,
        "TaskUIDList",
    ),
    (
        "details empty ids",
        {"Action": "ListTasksDetails", "TaskUIDList": []},
        RetCode.INVALID_PARAMETER,
        "TaskUIDList",
    ),
    (
        "details unknown id",
        {"Action": "ListTasksDetails", "TaskUIDList": ["nope"]},
        RetCode.TASK_NOT_FOUND,
        "nope",
    ),
    (
        "details id not a string",
        {"Action": "ListTasksDetails", "TaskUIDList": [{"a": 1}]},
        RetCode.INVALID_PARAMETER,
        "TaskUIDList[0]",
    ),
    (
        "terminate unknown",
        {"Action": "TerminateTask", "TaskUID": "nope"},
        RetCode.TASK_NOT_FOUND,
        "nope",
    ),
    ("terminate without id", {"Action": "TerminateTask"}, RetCode.INVALID_PARAMETER, "TaskUID"),
]


@pytest.fixture(scope="module")
def shared_client(demo_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    with TestClient(demo_app(demo_dir, tmp_path_factory.mktemp("requests"))) as client:
        yield client


@pytest.mark.parametrize(
    ("name", "body", "code", "needle"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_malformed_bodies(
    shared_client, name: str, body: bytes, code: RetCode, needle: str
) -> None:
    response = shared_client.post("/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    reply = response.json()
    assert reply["RetCode"] == code, reply
    assert needle in reply["Message"]


@pytest.mark.parametrize(
    ("name", "body", "code", "needle"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests(shared_client, name: str, body: dict, code: RetCode, needle: str) -> None:
    body = {**body, "request_uuid": f"req-{name}"}
    response = shared_client.post("/", json=body)
    assert response.status_code == 200
    reply = response.json()
    assert reply["RetCode"] == code, reply
    assert needle in reply["Message"], reply
    assert reply["Action"] == body["Action"]
    assert reply["request_uuid"] == body["request_uuid"]
    assert "TaskUID" not in reply


def test_server_still_serves_after_bad_requests(shared_client) -> None:
    for _, body, _, _ in BAD_REQUESTS:
        shared_client.post("/", json=body)
    client = PicpikClient(shared_client)
    detail = client.generate(**{k: v for k, v in GOOD.items() if k != "Action"})
    assert detail["Status"] == "Finished"
    assert len(detail["ImgList"]) == 1
    assert client.call("ListRunningTasks")["TaskUIDList"] == []


def test_nulls_are_treated_as_absent(shared_client) -> None:
    client = PicpikClient(shared_client)
    detail = client.generate(
        PositivePrompts=["x"],
        Width=64,
        Height=64,
        Seed=None,
        BatchSize=None,
        NegativePrompts=None,
        Image2Image=None,
        ControlNetList=None,
        SubModelList=None,
        Tileable=None,
        UseMainModelVAE=None,
        MainModel={"ModelCode": None, "Name": "easel demo", "InferenceParams": {"Steps": 6}},
    )
    assert detail["Status"] == "Finished"


def test_list_models_objects_can_be_sent_back(shared_client) -> None:
    client = PicpikClient(shared_client)
    models = client.call("ListModels")
    assert models["RetCode"] == 0
    for code in ("PICPIK General", "PICPIK Anime", "PICPIK Interior Design"):
        assert models["MainModels"][code]["ModelCode"] == code
    demo = models["MainModels"]["easel demo"]
    assert "noise" in demo["Description"]
    main = {**models["MainModels"]["PICPIK Anime"]}
    main["InferenceParams"] = {**main["InferenceParams"], "Steps": 6}
    detail = client.generate(MainModel=main, PositivePrompts=["x"], Width=64, Height=64)
    assert detail["Status"] == "Finished"
    for key in ("LoraModels", "EmbeddingModels", "HypernetworkModels"):
        assert models[key] == {}


def test_credit_balance_counts_points(shared_client) -> None:
    client = PicpikClient(shared_client)
    before = client.call("GetCreditBalance")
    detail = client.generate(**{k: v for k, v in GOOD.items() if k != "Action"}, BatchSize=2)
    after = client.call("GetCreditBalance")
    assert after["UsedCredits"] - before["UsedCredits"] == detail["ConsumeApiPoint"] > 0
    assert after["TotalCredits"] > after["UsedCredits"]


def test_progress_is_reported_while_running(shared_client) -> None:
    client = PicpikClient(shared_client)
    reply = client.call(
        "GenerateImages",
        PositivePrompts=["x"],
        Width=256,
        Height=256,
        MainModel={"InferenceParams": {"Steps": 60}},
    )
    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        detail = client.call("ListTasksDetails", TaskUIDList=[reply["TaskUID"]])["TaskDetailList"][
            0
        ]
        seen.add((detail["Status"], detail["Progress"]))
        if detail["Status"] == "Finished":
            break
        time.sleep(0.02)
    running = sorted(p for s, p in seen if s == "Running")
    assert any(0 < p < 1 for p in running), seen
    assert ("Finished", 1.0) in seen
