"""What every PICPIK action module shares: the caller, request parsing, sizes, costs, defaults."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL.Image import Image
from pydantic import BaseModel, ValidationError

from pipelines.jobs import Job
from server.images import ImageDecodeError, decode_base64_image
from server.picpik.errors import PicpikError, RetCode
from server.summary import job_summary
from server.validation import error_location

PROTOCOL = "picpik"
W = TypeVar("W", bound=BaseModel)
__all__ = ["job_summary"]  # re-exported: the PICPIK modules import it from here

# PICPIK's documented defaults for the main model's InferenceParams.
DEFAULT_STEPS = 10
DEFAULT_CFG_SCALE = 7.5
DEFAULT_SAMPLER = "Euler"
DEFAULT_CLIP_SKIP = 1
DEFAULT_SIDE = 1024
MIN_SIDE, MAX_SIDE = 64, 2560
SIZE_MULTIPLE = 8  # SD latents are 1/8 of the image: sizes are rounded to the nearest multiple


@dataclass(frozen=True)
class Caller:
    owner: str  # the PublicKey that signed the request; "" when the server runs open
    base_url: str  # where result URLs point


Handler = Callable[[dict[str, Any], Caller], Awaitable[dict[str, Any]]]
# Stores the task and queues the job: (action, job, caller, point cost) -> TaskUID.
Submit = Callable[[str, Job, Caller, int], str]


def round_side(value: int) -> int:
    """Round a side to the model's multiple of 8, within PICPIK's 64..2560."""
    rounded = math.floor(value / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE
    return min(MAX_SIDE, max(MIN_SIDE, rounded))


def point_cost(width: int, height: int, steps: int, images: int) -> int:
    """ConsumeApiPoint: one point per million pixels per step per image, rounded up."""
    return math.ceil(width * height * steps * images / 1_000_000)


def parse(model: type[W], body: dict[str, Any]) -> W:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        raise PicpikError(
            RetCode.INVALID_PARAMETER,
            f"invalid {error_location(first['loc']) or 'request'}: {first['msg']}",
        ) from None


async def decode_image(data: str, field: str) -> Image:
    """A base64 image field, decoded off the event loop; INVALID_IMAGE naming the field."""
    try:
        return await asyncio.to_thread(decode_base64_image, data)
    except ImageDecodeError as error:
        raise PicpikError(RetCode.INVALID_IMAGE, f"{field} {error}") from None
