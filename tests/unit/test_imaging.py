"""Resize modes: sizes, aspect handling and the filled margins."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.imaging import fit_image
from pipelines.jobs import ResizeMode


def _two_tone(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_every_mode_gives_the_requested_size_in_rgb(mode: ResizeMode) -> None:
    out = fit_image(_two_tone(100, 50).convert("RGBA"), 64, 96, mode)
    assert out.size == (64, 96)
    assert out.mode == "RGB"


def test_same_size_is_untouched() -> None:
    image = _two_tone(64, 64)
    assert np.array_equal(
        np.asarray(fit_image(image, 64, 64, ResizeMode.CROP_AND_RESIZE)), np.asarray(image)
    )


def test_crop_and_resize_keeps_the_centre() -> None:
    # A 200x100 image into 100x100: the centre 100x100 survives, half red half blue.
    out = np.asarray(fit_image(_two_tone(200, 100), 100, 100, ResizeMode.CROP_AND_RESIZE))
    assert out[50, 10].tolist() == [255, 0, 0]
    assert out[50, 90].tolist() == [0, 0, 255]


def test_resize_and_fill_stretches_edges_into_the_margins() -> None:
    # A 200x100 image into 100x100: fitted to 100x50 in the middle, rows 0..24 and 75..99 filled
    # from the edge rows, which are red on the left and blue on the right.
    out = np.asarray(fit_image(_two_tone(200, 100), 100, 100, ResizeMode.RESIZE_AND_FILL))
    for row in (0, 10, 90, 99):
        assert out[row, 5].tolist() == [255, 0, 0]
        assert out[row, 95].tolist() == [0, 0, 255]


def test_just_resize_stretches() -> None:
    out = np.asarray(fit_image(_two_tone(200, 100), 100, 100, ResizeMode.JUST_RESIZE))
    assert out[50, 10].tolist() == [255, 0, 0]
    assert out[50, 90].tolist() == [0, 0, 255]
