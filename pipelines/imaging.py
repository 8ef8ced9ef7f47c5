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


def _inside(image: Image.Image, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """(canvas, resized): the image scaled to fit inside the target (up or down), centred on a
    canvas of its mode whose uncovered area is zero (transparent for RGBA)."""
    scale = min(width / image.width, height / image.height)
    w = min(width, max(1, round(image.width * scale)))
    h = min(height, max(1, round(image.height * scale)))
    resized = image.resize((w, h), _RESAMPLE)
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(resized, ((width - w) // 2, (height - h) // 2))
    return canvas, resized


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside the target, then stretch the outermost rows or columns into the gaps."""
    canvas, resized = _inside(image, width, height)
    w, h = resized.size
    left, top = (width - w) // 2, (height - h) // 2
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


def _resize_and_leave_clear(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside the target; the uncovered area stays transparent."""
    return _inside(image, width, height)[0]


# For a transparent foreground, ResizeAndFill's margins are background to draw: left clear.
_FOREGROUND_FITTERS = {**_FITTERS, ResizeMode.RESIZE_AND_FILL: _resize_and_leave_clear}


def fit_image(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """The RGB image fitted to width x height; unchanged pixels when it already has that size."""
    rgb = image.convert("RGB")
    if rgb.size == (width, height):
        return rgb
    return _FITTERS[mode](rgb, width, height)


def fit_foreground(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """The RGBA foreground at width x height (ResizeAndFill leaves the margins transparent);
    unchanged pixels when it already has that size."""
    rgba = image.convert("RGBA")
    if rgba.size == (width, height):
        return rgba
    return _FOREGROUND_FITTERS[mode](rgba, width, height)
