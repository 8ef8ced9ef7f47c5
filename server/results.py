"""Result images as files in the data directory, served back at stable URLs.

Image ids are random UUIDs; a request for anything that is not one is refused before it touches
the file system, so no id can name a path outside the results folder.
"""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

from PIL.Image import Image

_IMAGE_ID = re.compile(r"^[0-9a-f]{32}$")
RESULTS_ROUTE = "/results"


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def save_png(self, image: Image) -> str:
        """Encode and write one image (call off the event loop); its new id."""
        image_id = uuid.uuid4().hex
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        tmp = self.root / f".{image_id}.tmp"
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(self.root / f"{image_id}.png")
        return image_id

    def path(self, image_id: str) -> Path | None:
        if not _IMAGE_ID.match(image_id):
            return None
        path = self.root / f"{image_id}.png"
        return path if path.is_file() else None

    def delete(self, image_id: str) -> None:
        if _IMAGE_ID.match(image_id):
            (self.root / f"{image_id}.png").unlink(missing_ok=True)


def image_url(base_url: str, image_id: str) -> str:
    return f"{base_url.rstrip('/')}{RESULTS_ROUTE}/{image_id}.png"
