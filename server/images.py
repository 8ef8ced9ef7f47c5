"""Decoding client images (base64, data URIs or fetched bytes) with limits, before any job is
queued.

The limits are the server's (server/limits.py: max_image_bytes, max_image_pixels); every caller
passes them. The pixel count is read from the file's header and checked before any pixel is
decoded, so a "decompression bomb" (a few hundred KB of PNG that would decode to gigabytes) is
refused at the cost of its header. The images of one request together may hold at most a
PixelBudget (the request pixel limit), so sixteen images of the largest size cannot add up to
gigabytes either. Only the common image formats are opened: Pillow's rarer decoders (EPS via
Ghostscript, PSD, ...) never see client bytes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from server.limits import Limits, describe_bytes

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")

MAX_ENCODED_BYTES = Limits.max_image_bytes  # defaults for callers outside a server (tests)
MAX_PIXELS = Limits.max_image_pixels
# What clients send: PNG, JPEG (older Pillows name some camera JPEGs MPO), WEBP, and the old
# BMP / GIF / TIFF.
ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF")


@functools.cache
def _openable_formats() -> tuple[str, ...]:
    """ACCEPTED_FORMATS this Pillow has a decoder for (Image.open refuses unknown names)."""
    Image.init()
    return tuple(name for name in ACCEPTED_FORMATS if name in Image.OPEN)


class ImageDecodeError(ValueError):
    """The message names what is wrong; the caller prefixes the field."""


class PixelBudget:
    """The pixels the input images of one request may still hold together."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total

    def take(self, width: int, height: int) -> None:
        if width * height > self.left:
            raise ImageDecodeError(
                f"is {width}x{height}: with the request's other images, more than this "
                f"server's limit of {self.total} pixels per request"
            )
        self.left -= width * height


def decode_base64_image(
    data: str,
    *,
    max_bytes: int = MAX_ENCODED_BYTES,
    max_pixels: int = MAX_PIXELS,
    budget: PixelBudget | None = None,
) -> Image.Image:
    """A fully loaded PIL image from a data URI or raw base64; ImageDecodeError otherwise.

    max_bytes bounds the image file (the decoded base64), checked on the text's length before
    anything is decoded."""
    if not isinstance(data, str) or not data.strip():
        raise ImageDecodeError("is empty")
    payload = _DATA_URI.sub("", data.strip(), count=1)
    payload = _WHITESPACE.sub("", payload)
    if len(payload) > -(-max_bytes // 3) * 4 + 4:
        raise ImageDecodeError(f"is larger than this server's limit of {describe_bytes(max_bytes)}")
    try:
        raw = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError("is not valid base64") from None
    if len(raw) > max_bytes:
        raise ImageDecodeError(f"is larger than this server's limit of {describe_bytes(max_bytes)}")
    return decode_image_bytes(raw, max_pixels=max_pixels, budget=budget)


def decode_image_bytes(
    raw: bytes, *, max_pixels: int = MAX_PIXELS, budget: PixelBudget | None = None
) -> Image.Image:
    """A fully loaded PIL image from a file's bytes; ImageDecodeError otherwise."""
    too_many = f"more than this server's limit of {max_pixels} pixels"
    try:
        with warnings.catch_warnings():
            # max_pixels decides, not Pillow's own warning threshold (MAX_IMAGE_PIXELS).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=_openable_formats())
            if image.width * image.height > max_pixels:
                raise ImageDecodeError(f"is {image.width}x{image.height}: {too_many}")
            if budget is not None:
                budget.take(image.width, image.height)
            image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError:
        # Pillow refuses above twice its MAX_IMAGE_PIXELS (about 179 million) on its own,
        # before easel sees the size: whichever limit is lower has been passed.
        pillow = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if pillow and pillow < max_pixels:
            too_many = f"more than the {pillow} pixels the image library accepts"
        raise ImageDecodeError(f"is a decompression bomb: {too_many}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "is not a readable image (PNG, JPEG, WEBP, BMP, GIF or TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError):
        raise ImageDecodeError("is a damaged or truncated image") from None
    return image
