"""Decoding client images (base64, data URIs or fetched bytes) with limits, before any job is
queued."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")

MAX_ENCODED_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """The message names what is wrong; the caller prefixes the field."""


def decode_base64_image(
    data: str, *, max_bytes: int = MAX_ENCODED_BYTES, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """A fully loaded PIL image from a data URI or raw base64; ImageDecodeError otherwise."""
    if not isinstance(data, str) or not data.strip():
        raise ImageDecodeError("is empty")
    payload = _DATA_URI.sub("", data.strip(), count=1)
    payload = _WHITESPACE.sub("", payload)
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise ImageDecodeError(f"is larger than {max_bytes // (1024 * 1024)} MiB")
    try:
        raw = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError("is not valid base64") from None
    return decode_image_bytes(raw, max_pixels=max_pixels)


def decode_image_bytes(raw: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A fully loaded PIL image from a file's bytes; ImageDecodeError otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > max_pixels:
                raise ImageDecodeError(
                    f"is {image.width}x{image.height}: more than {max_pixels} pixels"
                )
            image.load()
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError("is not a readable image (PNG, JPEG, WEBP...)") from None
    except (OSError, SyntaxError, ValueError):
        raise ImageDecodeError("is a damaged or truncated image") from None
    return image
