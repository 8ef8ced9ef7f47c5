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
from server.images import ImageDecodeError, PixelBudget, decode_base64_image
from server.limits import Limits
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


async def decode_image(
    data: str, field: str, limits: Limits, budget: PixelBudget | None = None
) -> Image:
    """A base64 image field, decoded off the event loop within the server's image limits (and
    the request's budget, for lists of images); INVALID_IMAGE naming the field."""
    try:
        return await asyncio.to_thread(
            decode_base64_image,
            data,
            max_bytes=limits.max_image_bytes,
            max_pixels=limits.max_image_pixels,
            budget=budget,
        )
    except ImageDecodeError as error:
        raise PicpikError(RetCode.INVALID_IMAGE, f"{field} {error}") from None


def check_prompts(field: str, prompts: list[str] | None, joined: str, limits: Limits) -> None:
    """Each entry of a prompt list, and `joined`, the one prompt they make together, within
    max_prompt_chars; INVALID_PARAMETER naming the entry (or the list) otherwise."""
    for i, prompt in enumerate(prompts or []):
        problem = limits.prompt_problem(prompt)
        if problem is not None:
            raise PicpikError(RetCode.INVALID_PARAMETER, f"invalid {field}[{i}]: {problem}")
    problem = limits.prompt_problem(joined)
    if problem is not None:
        raise PicpikError(
            RetCode.INVALID_PARAMETER, f"invalid {field}: joined into one prompt, it {problem}"
        )


def check_request_pixels(width: int, height: int, batch_size: int, limits: Limits) -> None:
    """Width x Height x BatchSize within max_request_pixels; INVALID_PARAMETER otherwise."""
    problem = limits.pixels_problem(width, height, batch_size)
    if problem is not None:
        raise PicpikError(RetCode.INVALID_PARAMETER, f"invalid Width/Height/BatchSize: {problem}")
