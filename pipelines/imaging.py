"""Image fitting shared by the runners: resize modes as A1111 defines them. Pure PIL."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from pipelines.jobs import ResizeMode

_RESAMPLE = Image.Resampling.LANCZOS


def _just_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), _RESAMPLE)


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    resized = image.resize((w, h), _RESAMPLE)
    left, top = (w - width) // 2, (h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside the target, then stretch the outermost rows or columns into the gaps."""
    scale = min(width / image.width, height / image.height)
    w = min(width, max(1, round(image.width * scale)))
    h = min(height, max(1, round(image.height * scale)))
    resized = image.resize((w, h), _RESAMPLE)
    canvas = Image.new(image.mode, (width, height))
    left, top = (width - w) // 2, (height - h) // 2
    canvas.paste(resized, (left, top))
    if h < height:
        if top > 0:
            canvas.paste(resized.crop((0, 0, w, 1)).resize((w, top)), (left, 0))
        bottom = height - top - h
        if bottom > 0:
            edge = resized.crop((0, h - 1, w, h)).resize((w, bottom))
            canvas.paste(edge, (left, top + h))
    if w < width:
        if left > 0:
            canvas.paste(resized.crop((0, 0, 1, h)).resize((left, h)), (0, top))
        right = width - left - w
        if right > 0:
            canvas.paste(resized.crop((w - 1, 0, w, h)).resize((right, h)), (left + w, top))
    return canvas


_FITTERS: dict[ResizeMode, Callable[[Image.Image, int, int], Image.Image]] = {
    ResizeMode.JUST_RESIZE: _just_resize,
    ResizeMode.CROP_AND_RESIZE: _crop_and_resize,
    ResizeMode.RESIZE_AND_FILL: _resize_and_fill,
}


def fit_image(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """The RGB image fitted to width x height; unchanged pixels when it already has that size."""
    rgb = image.convert("RGB")
    if rgb.size == (width, height):
        return rgb
    return _FITTERS[mode](rgb, width, height)
