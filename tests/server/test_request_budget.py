"""The input images of one request share one pixel budget (--max-request-megapixels): a list
of large images is refused at the image that passes it, on both protocols."""

from __future__ import annotations

from PIL import Image

from server.limits import Limits
from server.picpik.errors import RetCode
from tests.parity import png_data_uri
from tests.picpik_client import PicpikClient
from tests.runware_client import rest, task

BUDGET = Limits(max_request_pixels=64 * 64 * 2)


def _base64(size: int = 64) -> str:
    return png_data_uri(Image.new("RGB", (size, size), "blue")).split(",", 1)[1]


def test_picpik_image_lists_share_the_request_budget(make_client) -> None:
    client = PicpikClient(make_client(limits=BUDGET))
    for action, field in (
        ("DescribeImages", "ImageList"),
        ("RemoveBackgroundsInBatch", "RawImageList"),
    ):
        reply = client.call(action, **{field: [_base64(), _base64(), _base64()]})
        assert reply["RetCode"] == RetCode.INVALID_IMAGE, reply
        assert reply["Message"].startswith(f"{field}[2] is 64x64: with the request's other images")


def test_runware_caption_inputs_share_the_request_budget(make_client) -> None:
    http = make_client(limits=BUDGET)
    images = [png_data_uri(Image.new("RGB", (64, 64), "blue"))] * 3
    reply = rest(http, task("imageCaption", inputImages=images))
    assert reply.status_code == 400
    (error,) = reply.json()["errors"]
    assert error["code"] == "invalidImage" and error["parameter"] == "inputImages[2]"
    assert "per request" in error["message"]
