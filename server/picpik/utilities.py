"""PICPIK image utilities: RemoveBackground, RemoveBackgroundsInBatch, ResizeImage, DescribeImages.

Like the generation actions they answer with a TaskUID at once; the job runs on the GPU worker
and ListTasksDetails shows the result: images in ImgList (PNG, so cut-outs keep their alpha),
descriptions in TxtList. PICPIK never published these actions' request fields, so the names
below are easel's choice, documented in docs/picpik.md:

- RemoveBackground {RawImage, Box {X, Y, Width, Height} or [X, Y, Width, Height], ErodeSize,
  ForegroundThreshold, BackgroundThreshold, HairOptimization auto|on|off, OnlyMask};
  RemoveBackgroundsInBatch takes RawImageList (1..16) instead of RawImage.
- ResizeImage {RawImage, Width, Height} (64..4096; one side alone keeps the aspect ratio).
- DescribeImages {ImageList (1..16), TranslateDescription: a language code}.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from PIL.Image import Image

from pipelines.jobs import BackgroundRemovalJob, Box, CaptionJob, Job, UpscaleJob
from server.images import PixelBudget
from server.limits import Limits
from server.picpik import protocol as wire
from server.picpik.common import Caller, Handler, Submit, decode_image, parse
from server.picpik.errors import PicpikError, RetCode

# HairOptimization -> BackgroundRemovalJob.alpha_matting (None: the engine decides from how soft
# the mask's edge is).
HAIR_OPTIMIZATION: MappingProxyType[str, bool | None] = MappingProxyType(
    {"on": True, "off": False, "auto": None}
)
POINTS_PER_IMAGE = 1  # ConsumeApiPoint of a utility task, per input image
ENGLISH = frozenset({"", "en", "english"})


class UtilityActions:
    def __init__(self, submit: Submit, limits: Limits | None = None) -> None:
        self.submit = submit
        self.limits = limits or Limits()
        self.handlers: dict[str, Handler] = {
            "RemoveBackground": self.remove_background,
            "RemoveBackgroundsInBatch": self.remove_backgrounds_in_batch,
            "ResizeImage": self.resize_image,
            "DescribeImages": self.describe_images,
        }

    async def remove_background(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.RemoveBackgroundRequest, body)
        image = await decode_image(req.RawImage, "RawImage", self.limits)
        return self._queue(req.Action, _background_job(req, (image,), caller), caller)

    async def remove_backgrounds_in_batch(
        self, body: dict[str, Any], caller: Caller
    ) -> dict[str, Any]:
        req = parse(wire.RemoveBackgroundsInBatchRequest, body)
        budget = PixelBudget(self.limits.max_request_pixels)
        images = [
            await decode_image(data, f"RawImageList[{i}]", self.limits, budget)
            for i, data in enumerate(req.RawImageList)
        ]
        return self._queue(req.Action, _background_job(req, tuple(images), caller), caller)

    async def resize_image(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.ResizeImageRequest, body)
        if req.Width is None and req.Height is None:
            raise PicpikError(RetCode.INVALID_PARAMETER, "invalid Width: Width or Height is needed")
        image = await decode_image(req.RawImage, "RawImage", self.limits)
        problem = self.limits.pixels_problem(*_resized(image, req.Width, req.Height))
        if problem is not None:
            raise PicpikError(RetCode.INVALID_PARAMETER, f"invalid Width/Height: {problem}")
        job = UpscaleJob(image=image, width=req.Width, height=req.Height, owner=caller.owner)
        return self._queue(req.Action, job, caller)

    async def describe_images(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.DescribeImagesRequest, body)
        language = (req.TranslateDescription or "").strip().lower()
        if language not in ENGLISH and (len(language) != 2 or not language.isalpha()):
            raise PicpikError(
                RetCode.INVALID_PARAMETER,
                "invalid TranslateDescription: a two-letter language code such as 'de' or 'zh'",
            )
        budget = PixelBudget(self.limits.max_request_pixels)
        images = [
            await decode_image(data, f"ImageList[{i}]", self.limits, budget)
            for i, data in enumerate(req.ImageList)
        ]
        job = CaptionJob(
            images=tuple(images),
            language=None if language in ENGLISH else language,
            owner=caller.owner,
        )
        return self._queue(req.Action, job, caller)

    def _queue(self, action: str, job: Job, caller: Caller) -> dict[str, Any]:
        return {"TaskUID": self.submit(action, job, caller, POINTS_PER_IMAGE * job.num_images)}


def _resized(image: Image, width: int | None, height: int | None) -> tuple[int, int]:
    """ResizeImage's output size, as the engine makes it (pipelines/utilities/upscale.py's
    target_size): one side given keeps the image's aspect ratio."""
    if width is not None and height is not None:
        return width, height
    if width is not None:
        return width, max(1, round(image.height * width / image.width))
    assert height is not None
    return max(1, round(image.width * height / image.height)), height


def _background_job(
    req: wire.BackgroundRemovalParams, images: tuple[Image, ...], caller: Caller
) -> BackgroundRemovalJob:
    box = None
    if req.Box is not None:
        box = Box(left=req.Box.X, top=req.Box.Y, width=req.Box.Width, height=req.Box.Height)
        for i, image in enumerate(images):
            if box.left + box.width > image.width or box.top + box.height > image.height:
                raise PicpikError(
                    RetCode.INVALID_PARAMETER,
                    f"invalid Box: ({box.left}, {box.top}, {box.width}x{box.height}) reaches "
                    f"outside image {i} ({image.width}x{image.height})",
                )
    return BackgroundRemovalJob(
        images=images,
        box=box,
        only_mask=req.OnlyMask,
        alpha_matting=HAIR_OPTIMIZATION[req.HairOptimization],
        foreground_threshold=req.ForegroundThreshold,
        background_threshold=req.BackgroundThreshold,
        erode_size=req.ErodeSize,
        owner=caller.owner,
    )
