"""Image inputs: an imageUUID (of an upload or an earlier result), a URL, a data URI or base64.

Everything is fetched and decoded before a job is queued, so a bad image fails its own task at
once with the field that holds it. An imageUUID resolves only for the key that uploaded or made
the image: for any other key it does not exist. URLs go through server.outbound (http(s) only,
no private addresses unless the operator allows them, bounded size and time).
"""

from __future__ import annotations

import asyncio
import re

from PIL import Image

from server.images import (
    ImageDecodeError,
    PixelBudget,
    decode_base64_image,
    decode_image_bytes,
)
from server.limits import Limits
from server.outbound import Outbound, OutboundError
from server.results import PNG, ResultStore
from server.runware.errors import Code, RunwareError

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class ImageInputs:
    """Turns one image field's value into a loaded PIL image, or a RunwareError for that field."""

    def __init__(
        self, results: ResultStore, outbound: Outbound, limits: Limits | None = None
    ) -> None:
        self.results = results
        self.outbound = outbound  # its policy's max_bytes is the limits' max_image_bytes
        self.limits = limits or Limits()

    @staticmethod
    def uuid_of(value: str) -> str | None:
        """The imageUUID a value names, if it is one."""
        value = value.strip()
        return value.lower() if _UUID.match(value) else None

    async def load(
        self, value: str, parameter: str, owner: str, budget: PixelBudget | None = None
    ) -> Image.Image:
        """The image a field names; `budget` bounds the pixels of a list of images together."""
        value = value.strip()
        image_id = self.uuid_of(value)
        if image_id is not None:
            return await asyncio.to_thread(self._stored, image_id, parameter, owner, budget)
        if _URL.match(value):
            try:
                data = await self.outbound.fetch(value)
            except OutboundError as error:
                raise RunwareError(Code.INVALID_IMAGE, f"{parameter} {error}", parameter) from None
            return await asyncio.to_thread(self._decode_bytes, data, parameter, budget)
        try:
            return await asyncio.to_thread(
                decode_base64_image,
                value,
                max_bytes=self.limits.max_image_bytes,
                max_pixels=self.limits.max_image_pixels,
                budget=budget,
            )
        except ImageDecodeError as error:
            raise RunwareError(
                Code.INVALID_IMAGE,
                f"{parameter} {error} (send an imageUUID, an http(s) URL, a data URI or base64)",
                parameter,
            ) from None

    async def load_kept(self, value: str, parameter: str, owner: str) -> tuple[Image.Image, str]:
        """The image and its imageUUID: the one it was sent as, else the id it is stored under
        now (results report the input's id as inputImageUUID)."""
        image = await self.load(value, parameter, owner)
        image_id = self.uuid_of(value)
        if image_id is None:
            image_id = await asyncio.to_thread(self.results.save, image, PNG, owner)
        return image, image_id

    def owns(self, image_id: str, owner: str) -> bool:
        """Whether the stored image exists and belongs to `owner`."""
        return self.results.owner_of(image_id) == owner

    def _stored(
        self, image_id: str, parameter: str, owner: str, budget: PixelBudget | None
    ) -> Image.Image:
        found = self.results.read(image_id) if self.owns(image_id, owner) else None
        if found is None:
            raise RunwareError(
                Code.INVALID_IMAGE,
                f"{parameter}: no image with imageUUID {image_id} (uploads and results are kept "
                "for a limited time)",
                parameter,
            )
        return self._decode_bytes(found[0], parameter, budget)

    def _decode_bytes(
        self, data: bytes, parameter: str, budget: PixelBudget | None = None
    ) -> Image.Image:
        """A fetched or stored image file, within max_image_pixels."""
        try:
            return decode_image_bytes(data, max_pixels=self.limits.max_image_pixels, budget=budget)
        except ImageDecodeError as error:
            raise RunwareError(Code.INVALID_IMAGE, f"{parameter} {error}", parameter) from None
