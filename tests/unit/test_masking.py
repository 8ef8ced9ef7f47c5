"""Canvas, mask and compositing rules of masked redraws (pipelines.masking): pure PIL/numpy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.imaging import fit_foreground
from pipelines.jobs import ErrorCode, JobError, ResizeMode
from pipelines.masking import (
    NEUTRAL_GREY,
    alpha_over,
    background_mask,
    blur_mask,
    composite,
    dilate,
    fit_mask,
    fit_raw,
    inpaint_canvas,
    place,
    rgba_foreground,
)


def _noise(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), np.uint8)
    return Image.fromarray(pixels if channels > 1 else pixels[..., 0], mode)


def _mask(size: tuple[int, int], box: tuple[int, int, int, int], value: int = 255) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(value, box)
    return mask


def test_raw_image_is_centred_never_upscaled_and_edge_extended() -> None:
    raw = _noise((48, 40))
    canvas, box = fit_raw(raw, 64, 64)
    assert (box.left, box.top, box.width, box.height) == (8, 12, 48, 40)
    pixels, src = np.asarray(canvas), np.asarray(raw)
    assert np.array_equal(pixels[12:52, 8:56], src)  # not resampled at all
    assert np.array_equal(pixels[:12, 8:56], np.repeat(src[:1], 12, axis=0))  # top edge row
    assert np.array_equal(pixels[52:, 8:56], np.repeat(src[-1:], 12, axis=0))  # bottom
    assert np.array_equal(pixels[12:52, :8], np.repeat(src[:, :1], 8, axis=1))  # left column
    assert np.array_equal(pixels[12:52, 56:], np.repeat(src[:, -1:], 8, axis=1))  # right
    assert (pixels[:12, :8] == src[0, 0]).all()  # corners: the corner pixel
    assert (pixels[52:, 56:] == src[-1, -1]).all()


def test_larger_raw_image_is_scaled_down_to_fit() -> None:
    box = place((128, 64), 64, 64)
    assert (box.left, box.top, box.width, box.height) == (0, 16, 64, 32)
    canvas, _ = fit_raw(_noise((128, 64)), 64, 64)
    assert canvas.size == (64, 64)
    box = place((64, 64), 64, 64)
    assert (box.left, box.top, box.width, box.height) == (0, 0, 64, 64)


def test_mask_is_fitted_like_the_raw_image_and_the_border_is_redrawn() -> None:
    mask = _mask((48, 48), (10, 10, 20, 20))
    fitted = np.asarray(fit_mask(mask, (48, 48), 64, 64))
    expected = np.full((64, 64), 255, np.uint8)
    expected[8:56, 8:56] = 0
    expected[18:28, 18:28] = 255
    assert np.array_equal(fitted, expected)


def test_mask_of_another_size_is_resized_to_the_raw_image_first_and_binarised() -> None:
    # A 24x24 mask for a 48x48 raw image, 64x64 canvas: left half white (grey 200 > 50%),
    # right half grey 100 (< 50%): binarised to 255 / 0.
    mask = Image.new("L", (24, 24), 100)
    mask.paste(200, (0, 0, 12, 24))
    fitted = np.asarray(fit_mask(mask, (48, 48), 64, 64))
    assert set(np.unique(fitted)) == {0, 255}
    assert (fitted[8:56, 8:30] == 255).all()
    assert (fitted[8:56, 34:56] == 0).all()
    # The same mask for a larger raw image scaled down into the canvas.
    fitted = np.asarray(fit_mask(mask, (128, 128), 64, 64))
    assert (fitted[:, :30] == 255).all() and (fitted[:, 34:] == 0).all()


def test_no_mask_redraws_only_the_outpainted_border() -> None:
    assert np.asarray(fit_mask(None, (64, 64), 64, 64)).max() == 0
    fitted = np.asarray(fit_mask(None, (64, 32), 64, 64))
    assert (fitted[16:48] == 0).all() and (fitted[:16] == 255).all() and (fitted[48:] == 255).all()


def test_blur_widens_the_mask_edge_and_zero_keeps_it() -> None:
    mask = _mask((64, 64), (24, 24, 40, 40))
    assert np.array_equal(np.asarray(blur_mask(mask, 0)), np.asarray(mask))
    blurred = np.asarray(blur_mask(mask, 4))
    sharp = np.asarray(mask)
    assert (blurred > 0).sum() > (sharp > 0).sum()
    assert blurred[32, 32] > 200 and blurred[0, 0] == 0
    assert 0 < blurred[32, 22] < 255  # soft edge just outside the square


def test_canvas_bundles_image_binary_and_blurred_masks() -> None:
    canvas = inpaint_canvas(_noise((48, 48)), _mask((48, 48), (0, 0, 8, 8)), 64, 64, 3)
    assert canvas.image.mode == "RGB" and canvas.image.size == (64, 64)
    assert np.array_equal(np.asarray(canvas.blurred), np.asarray(blur_mask(canvas.mask, 3)))


def test_composite_is_exact_where_the_mask_is_zero_or_full() -> None:
    top, bottom = _noise((32, 32), 1), _noise((32, 32), 2)
    mask = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1)), "L")
    mask.paste(255, (28, 0, 32, 32))
    out = np.asarray(composite(top, bottom, mask)).astype(int)
    t, b = np.asarray(top).astype(int), np.asarray(bottom).astype(int)
    assert np.array_equal(out[:, 0], b[:, 0])  # m = 0: the bottom image
    assert np.array_equal(out[:, 28:], t[:, 28:])  # m = 1: the top image
    m = 128 / 255
    assert np.abs(out[:, 16] - (t[:, 16] * m + b[:, 16] * (1 - m))).max() <= 0.5


def test_foreground_needs_some_transparency() -> None:
    with pytest.raises(JobError) as error:
        rgba_foreground(_noise((8, 8)))
    assert error.value.code is ErrorCode.INVALID_INPUT
    assert "transparent background" in error.value.message
    opaque = Image.new("RGBA", (8, 8), (1, 2, 3, 255))
    with pytest.raises(JobError, match="transparent background"):
        rgba_foreground(opaque)
    with pytest.raises(JobError, match="transparent"):
        rgba_foreground(Image.new("RGBA", (8, 8), (1, 2, 3, 0)))
    good = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    good.paste((9, 9, 9, 255), (2, 2, 6, 6))
    assert rgba_foreground(good).mode == "RGBA"
    assert rgba_foreground(good.convert("LA")).mode == "RGBA"


def _foreground(size: tuple[int, int] = (32, 16)) -> Image.Image:
    fg = Image.new("RGBA", size, (0, 0, 0, 0))
    fg.paste((200, 50, 10, 255), (4, 4, size[0] - 4, size[1] - 4))
    return fg


def test_foreground_resize_and_fill_leaves_the_fill_transparent() -> None:
    fitted = fit_foreground(_foreground(), 64, 64, ResizeMode.RESIZE_AND_FILL)
    alpha = np.asarray(fitted.getchannel("A"))
    assert fitted.size == (64, 64)
    assert (alpha[:16] == 0).all() and (alpha[48:] == 0).all()  # the filled rows
    assert alpha[32, 32] == 255
    same = fit_foreground(_foreground((64, 64)), 64, 64, ResizeMode.CROP_AND_RESIZE)
    assert np.array_equal(np.asarray(same), np.asarray(_foreground((64, 64))))
    assert fit_foreground(_foreground(), 64, 64, ResizeMode.JUST_RESIZE).size == (64, 64)
    cropped = fit_foreground(_foreground(), 64, 64, ResizeMode.CROP_AND_RESIZE)
    # Scaled 4x to cover 64x64, the sides cropped: the opaque part now reaches both sides.
    assert np.asarray(cropped.getchannel("A"))[32, [0, 63]].tolist() == [255, 255]


def test_background_mask_alpha_over_and_dilation() -> None:
    fg = _foreground((16, 16))
    fg.putpixel((3, 8), (0, 0, 255, 128))  # a soft edge pixel
    mask = np.asarray(background_mask(fg))
    alpha = np.asarray(fg.getchannel("A"))
    assert np.array_equal(mask == 255, alpha < 255)
    under = Image.new("RGB", (16, 16), NEUTRAL_GREY)
    over = np.asarray(alpha_over(fg, under))
    assert np.array_equal(over[alpha == 255], np.asarray(fg.convert("RGB"))[alpha == 255])
    assert (over[alpha == 0] == 128).all()
    assert tuple(over[8, 3]) == (64, 64, 192)
    grown = np.asarray(dilate(background_mask(fg), 2))
    assert grown[8, 5] == 255 and grown[8, 6] == 0  # 2 px into the opaque square (from x=4)
