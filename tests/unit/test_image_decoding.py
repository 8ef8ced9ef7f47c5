"""Client images: data URIs and raw base64 decode; everything else is a clear error."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from server.images import ImageDecodeError, PixelBudget, decode_base64_image


def _png(width: int = 8, height: int = 6, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 64).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_data_uri_and_raw_base64_and_whitespace() -> None:
    raw = base64.b64encode(_png()).decode()
    assert decode_base64_image(raw).size == (8, 6)
    assert decode_base64_image("data:image/png;base64," + raw).size == (8, 6)
    assert decode_base64_image(raw[:10] + "\n " + raw[10:]).size == (8, 6)
    assert decode_base64_image(raw.rstrip("=")).size == (8, 6)  # missing padding


def test_alpha_is_kept() -> None:
    image = decode_base64_image(base64.b64encode(_png(mode="RGBA")).decode())
    assert image.mode == "RGBA"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("data:image/png;base64,@@@@", "not valid base64"),
        (base64.b64encode(b"hello, not an image").decode(), "not a readable image"),
        (base64.b64encode(_png(64, 64)[:-200]).decode(), "damaged or truncated"),
    ],
)
def test_bad_inputs(data: str, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_base64_image(data)


def test_pixel_and_size_limits() -> None:
    raw = base64.b64encode(_png(100, 100)).decode()
    with pytest.raises(ImageDecodeError, match="more than"):
        decode_base64_image(raw, max_pixels=99 * 100)
    with pytest.raises(ImageDecodeError, match="larger than"):
        decode_base64_image(raw, max_bytes=10)


def _encoded(image: Image.Image, image_format: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_common_formats_open(image_format: str) -> None:
    image = Image.new("RGB", (8, 6), "red")
    assert decode_base64_image(_encoded(image, image_format)).size == (8, 6)


@pytest.mark.parametrize("image_format", ["TGA", "PCX", "ICO", "PPM", "SGI"])
def test_rare_formats_never_reach_their_decoders(image_format: str) -> None:
    image = Image.new("RGB", (8, 6), "red")
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_base64_image(_encoded(image, image_format))


def test_a_budget_bounds_the_images_of_one_request_together() -> None:
    budget = PixelBudget(8 * 6 * 2)
    data = base64.b64encode(_png()).decode()
    decode_base64_image(data, budget=budget)
    decode_base64_image(data, budget=budget)
    with pytest.raises(ImageDecodeError, match="with the request's other images, more than"):
        decode_base64_image(data, budget=budget)
    assert budget.left == 0
