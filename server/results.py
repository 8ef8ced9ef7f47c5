"""Result images, kept for the retention time and served back at stable URLs.

Image ids are random UUIDs (Runware clients see them as imageUUIDs); a request for anything that
is not one is refused before it touches storage, so no id can name a path outside the results
folder. The stored format is PNG by default (Runware clients may ask for JPEG or WEBP), and the
URL carries it as the extension.

Each image remembers the key that made or uploaded it (its owner): an imageUUID used as an input
resolves only for that key, so one client cannot feed on another's uploads or results by id.
The result URL itself is a capability, as on the hosted services: whoever holds the URL (a
122-bit random id) can fetch it, which is what clients that download results need.

Two stores share one interface (ResultStore): files in the data directory for a single server
(FileResultStore), and Redis when API replicas and GPU workers run on many machines
(server.cluster.redis_results.RedisResultStore).
"""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from PIL.Image import Image

_IMAGE_ID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
RESULTS_ROUTE = "/results"


class ImageFormat(StrEnum):
    """Stored formats; the value is the file extension."""

    PNG = "png"
    JPEG = "jpg"
    WEBP = "webp"


PIL_FORMATS: dict[ImageFormat, str] = {
    ImageFormat.PNG: "PNG",
    ImageFormat.JPEG: "JPEG",
    ImageFormat.WEBP: "WEBP",
}
MEDIA_TYPES: dict[ImageFormat, str] = {
    ImageFormat.PNG: "image/png",
    ImageFormat.JPEG: "image/jpeg",
    ImageFormat.WEBP: "image/webp",
}


@dataclass(frozen=True)
class Encoding:
    format: ImageFormat = ImageFormat.PNG
    quality: int = 95  # JPEG / WEBP only


PNG = Encoding()


def encode(image: Image, encoding: Encoding = PNG) -> bytes:
    """The image's file bytes; JPEG has no alpha channel, so it is flattened to RGB first."""
    buffer = io.BytesIO()
    if encoding.format is ImageFormat.PNG:
        image.save(buffer, format="PNG")
    else:
        if encoding.format is ImageFormat.JPEG and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buffer, format=PIL_FORMATS[encoding.format], quality=encoding.quality)
    return buffer.getvalue()


def is_image_id(text: str) -> bool:
    return _IMAGE_ID.fullmatch(text) is not None


def new_image_id() -> str:
    return str(uuid.uuid4())


class ResultStore(Protocol):
    """Where result and uploaded images live; every method may block (call off the loop)."""

    def save(self, image: Image, encoding: Encoding = PNG, owner: str = "") -> str: ...  # new id

    def save_bytes(self, data: bytes, image_format: ImageFormat, owner: str = "") -> str: ...

    def read(self, image_id: str) -> tuple[bytes, ImageFormat] | None: ...

    def format_of(self, image_id: str) -> ImageFormat | None: ...  # None: no such image

    def owner_of(self, image_id: str) -> str | None: ...  # None: no such image

    def delete(self, image_id: str) -> None: ...


class FileResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def save(self, image: Image, encoding: Encoding = PNG, owner: str = "") -> str:
        """Encode and write one image (call off the event loop); its new id."""
        return self.save_bytes(encode(image, encoding), encoding.format, owner)

    def save_bytes(self, data: bytes, image_format: ImageFormat, owner: str = "") -> str:
        image_id = new_image_id()
        if owner:  # first, so the image is never visible without its owner
            self._owner_path(image_id).write_text(owner)
        tmp = self.root / f".{image_id}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / f"{image_id}.{image_format.value}")
        return image_id

    def _owner_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.owner"

    def path(self, image_id: str) -> Path | None:
        if not is_image_id(image_id):
            return None
        for image_format in ImageFormat:
            path = self.root / f"{image_id}.{image_format.value}"
            if path.is_file():
                return path
        return None

    def read(self, image_id: str) -> tuple[bytes, ImageFormat] | None:
        path = self.path(image_id)
        if path is None:
            return None
        try:
            return path.read_bytes(), ImageFormat(path.suffix[1:])
        except FileNotFoundError:  # swept meanwhile
            return None

    def format_of(self, image_id: str) -> ImageFormat | None:
        path = self.path(image_id)
        return None if path is None else ImageFormat(path.suffix[1:])

    def owner_of(self, image_id: str) -> str | None:
        if self.path(image_id) is None:
            return None
        try:
            return self._owner_path(image_id).read_text()
        except FileNotFoundError:  # made by the open server (owner "")
            return ""

    def delete(self, image_id: str) -> None:
        if is_image_id(image_id):
            for image_format in ImageFormat:
                (self.root / f"{image_id}.{image_format.value}").unlink(missing_ok=True)
            self._owner_path(image_id).unlink(missing_ok=True)


def image_url(base_url: str, image_id: str, image_format: ImageFormat = ImageFormat.PNG) -> str:
    return f"{base_url.rstrip('/')}{RESULTS_ROUTE}/{image_id}.{image_format.value}"
