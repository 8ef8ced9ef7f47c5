"""Canvases, masks and compositing for masked redraws (inpaint, outpaint, background). Pure PIL.

Inpaint (ModifyMaskedPixels):
- The raw image is scaled to fit inside the requested size, keeping its aspect ratio and never
  upscaled, and centred. Where it does not cover the canvas (outpainting: the requested size
  exceeds the raw image), the canvas is filled by repeating the raw image's outermost pixels
  (edge extension) and that border is added to the mask: it is redrawn.
- The mask (white = redraw, already inverted upstream) is first resized to the raw image's size
  if it differs, then fitted exactly like the raw image, binarised at 50% grey, and finally
  blurred (Gaussian, `mask_blur` px) into a soft mask m in 0..255.
- Outpaint padding (Runware's `outpaint`: top, right, bottom, left): instead of the centred fit,
  the raw image is scaled to exactly (width - left - right) x (height - top - bottom) and placed
  at (left, top); the border around it is edge-extended and redrawn as above. Paddings that are
  negative or leave no room for the image are refused.
- The generated image is composited over the canvas, generated * m + canvas * (1 - m) per pixel
  (A1111's overlay): wherever m is 0 the result is the input's pixels, bit for bit.
- Mask margin (Runware's `maskMargin`, A1111's "inpaint only masked" with its padding): only a
  region of the canvas is redrawn, zoomed to the job's size so the model spends all its pixels
  on the masked area. The region is the blurred mask's bounding box grown by the margin on each
  side (clamped to the canvas), then widened or heightened around its centre to the job's
  width:height ratio, shifted back inside the canvas where it overflows. The crop (canvas and
  blurred mask) is resized to the job's size, redrawn, resized back into the region and then
  composited like a whole-canvas redraw. Resizing is a plain stretch both ways (not A1111's
  fill / crop fits): the region's ratio is the job's up to a rounding pixel, and a stretch maps
  every redrawn pixel back onto the place it was drawn for.

Background (GenerateBackgrounds):
- The foreground must be RGBA with some transparent pixels (not all of them). It is fitted with
  the job's resize mode (pipelines.imaging.fit_foreground); ResizeAndFill leaves the uncovered
  area transparent (background to generate), not edge-extended.
- The mask is where alpha < 255, with no blur beyond the alpha's own soft edge; after generation
  the foreground is put back over the result with its alpha (alpha-over), so opaque pixels are the
  input's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from pipelines.jobs import ErrorCode, JobError, Padding

_RESAMPLE = Image.Resampling.LANCZOS
MASK_THRESHOLD = 127  # mask values above it (50% grey) are redrawn
OPAQUE = 255
NEUTRAL_GREY = (128, 128, 128)  # what a background starts from when no reference is given


@dataclass(frozen=True)
class InpaintCanvas:
    """The inputs of one inpaint/outpaint redraw at the job's size."""

    image: Image.Image  # RGB: the fitted raw image, its uncovered border edge-extended
    mask: Image.Image  # L, 0 or 255: the fitted, binarised mask plus the outpainted border
    blurred: Image.Image  # L: `mask` blurred; the diffusers mask and the compositing weights


@dataclass(frozen=True)
class Placement:
    """Where the scaled raw image sits on the canvas."""

    left: int
    top: int
    width: int
    height: int


def place(
    raw_size: tuple[int, int], width: int, height: int, outpaint: Padding | None = None
) -> Placement:
    """The raw image's box on a width x height canvas: fitted inside, never upscaled, centred;
    or, with outpaint padding, the area the padding leaves (the raw image is stretched to it).
    Front ends may call it before queueing to refuse bad paddings by the job's own rule."""
    if outpaint is not None:
        return _padded(outpaint, width, height)
    raw_w, raw_h = raw_size
    scale = min(1.0, width / raw_w, height / raw_h)
    w = min(width, max(1, round(raw_w * scale)))
    h = min(height, max(1, round(raw_h * scale)))
    return Placement((width - w) // 2, (height - h) // 2, w, h)


def _padded(padding: Padding, width: int, height: int) -> Placement:
    sides = (padding.top, padding.right, padding.bottom, padding.left)
    w = width - padding.left - padding.right
    h = height - padding.top - padding.bottom
    if min(sides) < 0 or w < 1 or h < 1:
        top, right, bottom, left = sides
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"outpaint padding (top {top}, right {right}, bottom {bottom}, left {left}) leaves no "
            f"room for the image on the {width}x{height} result: paddings must be 0 or more and "
            "add up to less than the width (left + right) and the height (top + bottom)",
        )
    return Placement(padding.left, padding.top, w, h)


def _scaled(image: Image.Image, box: Placement) -> Image.Image:
    size = (box.width, box.height)
    return image if image.size == size else image.resize(size, _RESAMPLE)


def _pad_widths(box: Placement, width: int, height: int) -> tuple[tuple[int, int], ...]:
    return (
        (box.top, height - box.top - box.height),
        (box.left, width - box.left - box.width),
    )


def fit_raw(
    raw: Image.Image, width: int, height: int, outpaint: Padding | None = None
) -> tuple[Image.Image, Placement]:
    """The raw image (RGB) on the canvas; an uncovered border repeats its outermost pixels."""
    box = place(raw.size, width, height, outpaint)
    pixels = np.asarray(_scaled(raw.convert("RGB"), box))
    padded = np.pad(pixels, (*_pad_widths(box, width, height), (0, 0)), mode="edge")
    return Image.fromarray(padded, "RGB"), box


def fit_mask(
    mask: Image.Image | None,
    raw_size: tuple[int, int],
    width: int,
    height: int,
    outpaint: Padding | None = None,
) -> Image.Image:
    """The mask fitted like its raw image, binarised (0/255); the outpainted border is 255.

    None means "redraw nothing of the raw image" (only an outpainted border, if any)."""
    box = place(raw_size, width, height, outpaint)
    if mask is None:
        inner = np.zeros((box.height, box.width), np.uint8)
    else:
        grey = mask.convert("L")
        if grey.size != raw_size:
            grey = grey.resize(raw_size, _RESAMPLE)
        inner = np.where(np.asarray(_scaled(grey, box)) > MASK_THRESHOLD, 255, 0).astype(np.uint8)
    padded = np.pad(inner, _pad_widths(box, width, height), constant_values=255)
    return Image.fromarray(padded, "L")


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """A Gaussian blur of the mask edge (radius in px); 0 keeps it sharp."""
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask.copy()


def inpaint_canvas(
    raw: Image.Image,
    mask: Image.Image | None,
    width: int,
    height: int,
    blur: int,
    outpaint: Padding | None = None,
) -> InpaintCanvas:
    image, _ = fit_raw(raw, width, height, outpaint)
    binary = fit_mask(mask, raw.size, width, height, outpaint)
    return InpaintCanvas(image, binary, blur_mask(binary, blur))


# --- redrawing a region only (mask margin) -------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A box on the canvas, right and bottom exclusive (PIL's crop box)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.right, self.bottom)

    @property
    def size(self) -> tuple[int, int]:
        return (self.right - self.left, self.bottom - self.top)


def _centred_span(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    """[start, end) grown to `length` (at most `limit`) around its centre, then shifted back
    inside [0, limit) where it overflows."""
    length = min(length, limit)
    start -= (length - (end - start)) // 2
    start = min(max(start, 0), limit - length)
    return start, start + length


def zoom_region(mask: Image.Image, margin: int, width: int, height: int) -> Region | None:
    """The canvas region a masked redraw with this margin zooms into (None: an empty mask,
    nothing to redraw). `mask` is the blurred mask, so every pixel the compositing can change
    lies inside the region; width x height is the size the region is redrawn at."""
    if margin < 0:
        raise JobError(
            ErrorCode.INVALID_INPUT, f"the mask margin must be 0 or more pixels, got {margin}"
        )
    bbox = mask.convert("L").getbbox()
    if bbox is None:
        return None
    limit_w, limit_h = mask.size
    left, top = max(bbox[0] - margin, 0), max(bbox[1] - margin, 0)
    right, bottom = min(bbox[2] + margin, limit_w), min(bbox[3] + margin, limit_h)
    w, h = right - left, bottom - top
    if w * height > h * width:  # wider than the job's ratio: add height
        h = max(h, round(w * height / width))
    else:
        w = max(w, round(h * width / height))
    left, right = _centred_span(left, right, w, limit_w)
    top, bottom = _centred_span(top, bottom, h, limit_h)
    return Region(left, top, right, bottom)


def zoom_in(image: Image.Image, region: Region, width: int, height: int) -> Image.Image:
    """The region of the image, stretched to width x height (pixels as they are when the region
    already has that size)."""
    crop = image.crop(region.box)
    return crop if crop.size == (width, height) else crop.resize((width, height), _RESAMPLE)


def zoom_out(image: Image.Image, region: Region, canvas: Image.Image) -> Image.Image:
    """A copy of the canvas with the (zoomed) image stretched back into the region."""
    out = canvas.copy()
    back = image if image.size == region.size else image.resize(region.size, _RESAMPLE)
    out.paste(back.convert(out.mode), region.box[:2])
    return out


def composite(top: Image.Image, bottom: Image.Image, mask: Image.Image) -> Image.Image:
    """top * m + bottom * (1 - m) per pixel, m = mask / 255: exactly bottom where m is 0 and
    exactly top where m is 1 (RGB images, an L mask, one size)."""
    m = np.asarray(mask.convert("L"), np.float64)[..., None] / 255.0
    t = np.asarray(top.convert("RGB"), np.float64)
    b = np.asarray(bottom.convert("RGB"), np.float64)
    mixed = np.rint(t * m + b * (1.0 - m))
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8), "RGB")


# --- background ----------------------------------------------------------------------------------


ALPHA_MODES: frozenset[str] = frozenset({"RGBA", "LA", "PA"})  # modes with an alpha channel


def has_alpha(image: Image.Image) -> bool:
    """An alpha channel, or a palette with a transparent entry."""
    return image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def rgba_foreground(image: Image.Image) -> Image.Image:
    """The foreground as RGBA; refuses images with no transparency, or nothing opaque. Front
    ends call it before queueing, so a request is refused by the rule its job would meet."""
    if not has_alpha(image):
        raise JobError(
            ErrorCode.INVALID_INPUT,
            "GenerateBackgrounds needs a PNG with a transparent background: this image has no "
            "alpha channel",
        )
    rgba = image.convert("RGBA")
    low, high = rgba.getchannel("A").getextrema()
    if low == OPAQUE:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            "GenerateBackgrounds needs a PNG with a transparent background: this image has no "
            "transparent pixels",
        )
    if high == 0:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            "GenerateBackgrounds needs a foreground: this PNG is fully transparent, there is no "
            "foreground to keep",
        )
    return rgba


def background_mask(foreground: Image.Image) -> Image.Image:
    """255 where the foreground is not fully opaque (to generate), 0 where it is."""
    alpha = np.asarray(foreground.getchannel("A"))
    return Image.fromarray(np.where(alpha < OPAQUE, 255, 0).astype(np.uint8), "L")


def dilate(mask: Image.Image, pixels: int) -> Image.Image:
    """The white area of a mask grown by `pixels` in every direction."""
    return mask.filter(ImageFilter.MaxFilter(2 * pixels + 1)) if pixels > 0 else mask.copy()


def alpha_over(foreground: Image.Image, background: Image.Image) -> Image.Image:
    """The RGBA foreground over an RGB background: opaque pixels are the foreground's exactly."""
    return composite(foreground.convert("RGB"), background, foreground.getchannel("A"))
