"""Bad input for ModifyMaskedPixels, ApplyReferenceStyle and GenerateBackgrounds: each gets a
RetCode naming the field, nothing is queued, and the server keeps serving."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from server.picpik.errors import RetCode
from tests.conftest import demo_app
from tests.picpik_client import PicpikClient


def _b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


RGB = _b64(Image.new("RGB", (32, 32), (10, 200, 30)))
JPEG = _b64(Image.new("RGB", (32, 32), (10, 200, 30)), "JPEG")
MASK = _b64(Image.new("L", (32, 32), 255))
OPAQUE_RGBA = _b64(Image.new("RGBA", (32, 32), (1, 2, 3, 255)))
CLEAR_RGBA = _b64(Image.new("RGBA", (32, 32), (1, 2, 3, 0)))
_fg = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
_fg.paste((200, 20, 20, 255), (8, 8, 24, 24))
FOREGROUND = _b64(_fg)
MAIN = {"InferenceParams": {"Steps": 6}}


def masked(**changes: object) -> dict:
    body = {
        "Action": "ModifyMaskedPixels",
        "MainModel": MAIN,
        "Masked": {"ImageIndex": 0, "MaskIndex": 1},
        "ImageAndMaskList": [RGB, MASK],
    }
    return {**body, **changes}


def style(**changes: object) -> dict:
    body = {
        "Action": "ApplyReferenceStyle",
        "MainModel": MAIN,
        "RawImageIndex": 0,
        "StyleImageIndex": 1,
        "ImageList": [RGB, RGB],
    }
    return {**body, **changes}


def background(**changes: object) -> dict:
    body = {
        "Action": "GenerateBackgrounds",
        "MainModel": MAIN,
        "TransparentForeground": {"ImageIndex": 0},
        "ImageList": [FOREGROUND, RGB],
    }
    return {**body, **changes}


BAD: list[tuple[str, dict, RetCode, str]] = [
    # ModifyMaskedPixels
    ("masked missing", masked(Masked=None), RetCode.INVALID_PARAMETER, "Masked"),
    (
        "mask index missing",
        masked(Masked={"ImageIndex": 0}),
        RetCode.INVALID_PARAMETER,
        "Masked.MaskIndex",
    ),
    (
        "mask index out of range",
        masked(Masked={"ImageIndex": 0, "MaskIndex": 5}),
        RetCode.INVALID_PARAMETER,
        "Masked.MaskIndex",
    ),
    (
        "raw index negative",
        masked(Masked={"ImageIndex": -1, "MaskIndex": 1}),
        RetCode.INVALID_PARAMETER,
        "Masked.ImageIndex",
    ),
    (
        "refer strength 2.5",
        masked(Masked={"ImageIndex": 0, "MaskIndex": 1, "ReferStrength": 2.5}),
        RetCode.INVALID_PARAMETER,
        "Masked.ReferStrength",
    ),
    (
        "mask blur 65",
        masked(Masked={"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 65}),
        RetCode.INVALID_PARAMETER,
        "Masked.MaskBlur",
    ),
    (
        "mask blur -1",
        masked(Masked={"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": -1}),
        RetCode.INVALID_PARAMETER,
        "Masked.MaskBlur",
    ),
    (
        "invert mask not a bool",
        masked(Masked={"ImageIndex": 0, "MaskIndex": 1, "InvertMask": "maybe"}),
        RetCode.INVALID_PARAMETER,
        "Masked.InvertMask",
    ),
    (
        "mask not an image",
        masked(ImageAndMaskList=[RGB, base64.b64encode(b"nope").decode()]),
        RetCode.INVALID_IMAGE,
        "ImageAndMaskList[1]",
    ),
    ("masked no images", masked(ImageAndMaskList=None), RetCode.INVALID_PARAMETER, "out of range"),
    (
        "masked extra reference strength",
        masked(Image2Image={"ImageIndex": 0, "ReferStrength": 1.5}),
        RetCode.INVALID_PARAMETER,
        "Image2Image.ReferStrength",
    ),
    (
        "masked extra reference missing",
        masked(Image2Image={"ImageIndex": 7}),
        RetCode.INVALID_PARAMETER,
        "Image2Image.ImageIndex",
    ),
    ("masked width too large", masked(Width=4000), RetCode.INVALID_PARAMETER, "Width"),
    (
        "masked unknown lora",
        masked(SubModelList=[{"ModelCode": "nope"}]),
        RetCode.UNKNOWN_MODEL,
        "SubModelList[0]",
    ),
    (
        "masked four controlnets",
        masked(ControlNetList=[{}, {}, {}, {}]),
        RetCode.INVALID_PARAMETER,
        "ControlNetList",
    ),
    # ApplyReferenceStyle
    ("raw index missing", style(RawImageIndex=None), RetCode.INVALID_PARAMETER, "RawImageIndex"),
    (
        "style index missing",
        style(StyleImageIndex=None),
        RetCode.INVALID_PARAMETER,
        "StyleImageIndex",
    ),
    (
        "style index out of range",
        style(StyleImageIndex=2),
        RetCode.INVALID_PARAMETER,
        "StyleImageIndex",
    ),
    (
        "style strength 1.5",
        style(StyleReferStrength=1.5),
        RetCode.INVALID_PARAMETER,
        "StyleReferStrength",
    ),
    (
        "style strength text",
        style(StyleReferStrength="strong"),
        RetCode.INVALID_PARAMETER,
        "StyleReferStrength",
    ),
    (
        "style images in the wrong list",
        style(ImageList=None, ImageAndMaskList=[RGB, RGB]),
        RetCode.INVALID_PARAMETER,
        "ImageList has 0",
    ),
    (
        "style image bad base64",
        style(ImageList=[RGB, "%%%"]),
        RetCode.INVALID_IMAGE,
        "ImageList[1]",
    ),
    ("style unknown model", style(MainModel={"ModelCode": "nope"}), RetCode.UNKNOWN_MODEL, "nope"),
    # GenerateBackgrounds
    (
        "foreground missing",
        background(TransparentForeground=None),
        RetCode.INVALID_PARAMETER,
        "TransparentForeground",
    ),
    (
        "foreground without alpha",
        background(ImageList=[RGB]),
        RetCode.INVALID_IMAGE,
        "no alpha channel",
    ),
    ("foreground jpeg", background(ImageList=[JPEG]), RetCode.INVALID_IMAGE, "no alpha channel"),
    (
        "foreground opaque",
        background(ImageList=[OPAQUE_RGBA]),
        RetCode.INVALID_IMAGE,
        "no transparent pixels",
    ),
    (
        "foreground fully clear",
        background(ImageList=[CLEAR_RGBA]),
        RetCode.INVALID_IMAGE,
        "fully transparent",
    ),
    (
        "foreground index out of range",
        background(TransparentForeground={"ImageIndex": 3}),
        RetCode.INVALID_PARAMETER,
        "TransparentForeground",
    ),
    (
        "foreground resize mode",
        background(TransparentForeground={"ImageIndex": 0, "ResizeMode": "Squash"}),
        RetCode.INVALID_PARAMETER,
        "TransparentForeground.ResizeMode",
    ),
    (
        "background refer strength",
        background(BackgroundImage2Image={"ImageIndex": 1, "ReferStrength": 1.2}),
        RetCode.INVALID_PARAMETER,
        "BackgroundImage2Image.ReferStrength",
    ),
    (
        "background deep fusion",
        background(BackgroundImage2Image={"ImageIndex": 1, "DeepFusion": "maybe"}),
        RetCode.INVALID_PARAMETER,
        "BackgroundImage2Image.DeepFusion",
    ),
    (
        "background index out of range",
        background(BackgroundImage2Image={"ImageIndex": 9}),
        RetCode.INVALID_PARAMETER,
        "BackgroundImage2Image.ImageIndex",
    ),
    (
        "two foreground indexes",
        background(TransparentForeground=None, TransparentImageIndexList=[0, 1]),
        RetCode.INVALID_PARAMETER,
        "TransparentImageIndexList",
    ),
    ("background height 63", background(Height=63), RetCode.INVALID_PARAMETER, "Height"),
]


@pytest.fixture(scope="module")
def shared_client(demo_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    with TestClient(demo_app(demo_dir, tmp_path_factory.mktemp("data"))) as client:
        yield client


@pytest.mark.parametrize(("name", "body", "code", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests(shared_client, name: str, body: dict, code: RetCode, needle: str) -> None:
    body = {k: v for k, v in body.items() if v is not None} | {"request_uuid": f"req-{name}"}
    response = shared_client.post("/", json=body)
    assert response.status_code == 200
    reply = response.json()
    assert reply["RetCode"] == code, reply
    assert needle in reply["Message"], reply
    assert reply["Action"] == body["Action"]
    assert "TaskUID" not in reply


def test_nothing_was_queued_and_the_server_still_serves(shared_client) -> None:
    for _, body, _, _ in BAD:
        shared_client.post("/", json={k: v for k, v in body.items() if v is not None})
    client = PicpikClient(shared_client)
    assert client.call("ListRunningTasks")["TaskUIDList"] == []
    detail = client.generate(PositivePrompts=["x"], Width=64, Height=64, MainModel=MAIN)
    assert detail["Status"] == "Finished"


def test_the_documented_foreground_index_list_is_accepted(shared_client) -> None:
    client = PicpikClient(shared_client)
    body = background(TransparentForeground=None, TransparentImageIndexList=[0])
    body.pop("Action")
    reply = client.call("GenerateBackgrounds", **{k: v for k, v in body.items() if v is not None})
    assert reply["RetCode"] == 0, reply
    assert client.wait(reply["TaskUID"])["Action"] == "GenerateBackgrounds"
