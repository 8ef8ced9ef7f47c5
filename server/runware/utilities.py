"""Runware utility tasks: background removal, captions, prompt enhancement, upscaling.

Each task type is served under both of its names (removeBackground / imageBackgroundRemoval,
caption / imageCaption, upscale / imageUpscale, and promptEnhance) and echoes the one the client
sent. The job runs on the GPU worker like an imageInference, with the same delivery options
(sync, async + getResponse, webhookURL, uploadEndpoint for images). Result items:

- image utilities: {taskType, taskUUID, imageUUID, inputImageUUID, imageURL (+ base64 forms)}
- caption: one {taskType, taskUUID, text} per input image; promptEnhance: one per version.

The hosted service's utility model ids (AIR ids such as "runware:109@1", or numbers) run on the
installed model of that utility; the name of an installed model picks that one.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pipelines.jobs import (
    BackgroundRemovalJob,
    CaptionJob,
    Job,
    PromptEnhanceJob,
    UpscaleJob,
)
from server.images import PixelBudget
from server.results import Encoding, ImageFormat
from server.runware import protocol as wire
from server.runware.common import Caller, json_object
from server.runware.errors import Code, RunwareError
from server.runware.inference import check_pixels, check_prompt, image_cost
from server.summary import job_summary
from server.taskstore import TaskRecord

if TYPE_CHECKING:
    from server.runware.serving import DeliveredTask, RunwareService

Items = list[dict[str, Any]]
TaskHandler = Callable[[dict[str, Any], Caller], Awaitable[Items]]

BACKGROUND_REMOVAL = ("removeBackground", "imageBackgroundRemoval")
CAPTION = ("caption", "imageCaption")
PROMPT_ENHANCE = ("promptEnhance",)
UPSCALE = ("upscale", "imageUpscale")
# Result items by kind: image utilities answer with the new image and the input's id, text
# utilities with one text item each.
IMAGE_ACTIONS = frozenset(BACKGROUND_REMOVAL + UPSCALE)
TEXT_ACTIONS = frozenset(CAPTION + PROMPT_ENHANCE)
# Background removal keeps the alpha channel: PNG unless the client asks otherwise.
BACKGROUND_REMOVAL_FORMAT = "PNG"
# Formats without an alpha channel get the cut-out composited over white (unless rgba is set).
OPAQUE_FORMATS = frozenset({ImageFormat.JPEG.value})
WHITE = (255, 255, 255, 255)
PROMPT_COST = 0.0001  # includeCost of a promptEnhance version (no image to price by size)
MAX_SEED = 2**31  # promptEnhance samples from a fresh seed each time
FRACTION_ALPHA = 1.0  # an rgba alpha at most this is a 0..1 fraction, above it 0..255


class UtilityTasks:
    def __init__(self, service: RunwareService) -> None:
        self.service = service
        handlers: dict[tuple[str, ...], TaskHandler] = {
            BACKGROUND_REMOVAL: self.remove_background,
            CAPTION: self.caption,
            PROMPT_ENHANCE: self.prompt_enhance,
            UPSCALE: self.upscale,
        }
        self.handlers: dict[str, TaskHandler] = {
            name: handler for names, handler in handlers.items() for name in names
        }

    # --- task types ---

    async def remove_background(self, task: dict[str, Any], caller: Caller) -> Items:
        fields = flatten(task)
        fields.setdefault("outputFormat", BACKGROUND_REMOVAL_FORMAT)
        req = wire.parse(wire.BackgroundRemoval, fields)
        image, input_id = await self.service.inputs.load_kept(
            req.inputImage, "inputImage", caller.owner
        )
        output = self.service.output_options(req)
        background = _background(req.rgba)
        if background is None and output["format"] in OPAQUE_FORMATS:
            background = WHITE
        job = BackgroundRemovalJob(
            images=(image,),
            model=installed_model(req.model),
            only_mask=req.returnOnlyMask,
            alpha_matting=req.alphaMatting,
            foreground_threshold=req.alphaMattingForegroundThreshold,
            background_threshold=req.alphaMattingBackgroundThreshold,
            erode_size=req.alphaMattingErodeSize,
            post_process_mask=req.postProcessMask,
            background=background,
            owner=caller.owner,
        )
        cost = image_cost(image.width, image.height, 1)
        return await self._run(req, job, caller, output, cost, input_id)

    async def caption(self, task: dict[str, Any], caller: Caller) -> Items:
        req = wire.parse(wire.Caption, flatten(task))
        check_prompt(self.service.limits, req.prompt, "prompt")
        sources = req.inputImages or ([req.inputImage] if req.inputImage else [])
        if not sources:
            raise _missing("inputImage")
        budget = PixelBudget(self.service.limits.max_request_pixels)
        images = [
            await self.service.inputs.load(
                source,
                f"inputImages[{i}]" if req.inputImages else "inputImage",
                caller.owner,
                budget,
            )
            for i, source in enumerate(sources)
        ]
        job = CaptionJob(
            images=tuple(images),
            model=installed_model(req.model),
            prompt=req.prompt or "",
            owner=caller.owner,
        )
        cost = sum(image_cost(i.width, i.height, 1) for i in images)
        output = {"include_cost": bool(req.includeCost)}
        return await self._run(req, job, caller, output, cost)

    async def prompt_enhance(self, task: dict[str, Any], caller: Caller) -> Items:
        req = wire.parse(wire.PromptEnhance, flatten(task))
        check_prompt(self.service.limits, req.prompt, "prompt")
        job = PromptEnhanceJob(
            prompt=req.prompt,
            versions=req.promptVersions,
            max_length=req.promptMaxLength,
            seed=secrets.randbelow(MAX_SEED),
            owner=caller.owner,
        )
        output = {"include_cost": bool(req.includeCost)}
        return await self._run(req, job, caller, output, PROMPT_COST)

    async def upscale(self, task: dict[str, Any], caller: Caller) -> Items:
        req = wire.parse(wire.Upscale, flatten(task))
        image, input_id = await self.service.inputs.load_kept(
            req.inputImage, "inputImage", caller.owner
        )
        job = UpscaleJob(
            image=image,
            factor=req.upscaleFactor,
            model=installed_model(req.model),
            owner=caller.owner,
        )
        output = self.service.output_options(req)
        width, height = (
            round(image.width * req.upscaleFactor),
            round(image.height * req.upscaleFactor),
        )
        fields = "inputImage x upscaleFactor"
        check_pixels(self.service.limits, (width, height), 1, fields, "upscaleFactor")
        return await self._run(req, job, caller, output, image_cost(width, height, 1), input_id)

    # --- shared ---

    async def _run(
        self,
        req: DeliveredTask,
        job: Job,
        caller: Caller,
        output: dict[str, Any],
        cost: float,
        input_id: str | None = None,
    ) -> Items:
        record = TaskRecord(
            task_id=req.taskUUID,
            protocol="runware",
            action=req.taskType,
            owner=caller.owner,
            params={
                "job": job_summary(job),
                "output": {**output, "cost": cost},
                "input_image": input_id,
                "deliveryMethod": req.deliveryMethod or "sync",
            },
        )
        encoding = None
        if "format" in output:
            encoding = Encoding(ImageFormat(output["format"]), output["quality"])
        delivery = self.service.delivery(req, caller)
        follower = self.service.submit(record, job, encoding or Encoding(ImageFormat.PNG), delivery)
        return await self.service.deliver(req, record, caller, follower)

    # --- result items ---

    async def items(self, record: TaskRecord, caller: Caller) -> Items:
        """A finished utility task's items."""
        output = record.params.get("output", {})
        base: dict[str, Any] = {
            "taskType": record.action,
            "taskUUID": record.task_id,
            "status": "success",
        }
        if record.action in TEXT_ACTIONS:
            items = [{**base, "text": text} for text in record.texts]
            if output.get("include_cost"):
                share = output.get("cost", 0.0) / max(1, len(items))
                for item in items:
                    item["cost"] = round(share, 10)
            return items
        items = []
        for image_id in record.image_ids:
            item = {
                **base,
                "imageUUID": image_id,
                "inputImageUUID": record.params.get("input_image"),
                **await self.service.image_fields(image_id, "image", output, caller),
            }
            if output.get("include_cost"):
                item["cost"] = output.get("cost", 0.0)
            items.append(item)
        return items


def flatten(task: dict[str, Any]) -> dict[str, Any]:
    """Newer SDKs nest options in `settings` and the image in `inputs.image`: the older flat
    field names."""
    fields = {k: v for k, v in task.items() if k not in ("settings", "inputs")}
    settings = json_object(task.get("settings"))
    inputs = json_object(task.get("inputs"))
    if "image" in inputs and fields.get("inputImage") is None:
        fields["inputImage"] = inputs["image"]
    return {**settings, **fields}


def installed_model(model: str | int | None) -> str | None:
    """The installed model a request names; None (the utility's default) for the hosted
    service's ids: AIR ids (source:id@version) and bare numbers."""
    if model is None or isinstance(model, int):
        return None
    if ":" in model and "@" in model:
        return None
    return model


def _background(rgba: list[float] | None) -> tuple[int, int, int, int] | None:
    """rgba as 0..255 channels; an alpha of at most 1 is read as a 0..1 fraction."""
    if rgba is None:
        return None
    red, green, blue, alpha = rgba
    if alpha <= FRACTION_ALPHA:
        alpha *= 255
    return (round(red), round(green), round(blue), round(alpha))


def _missing(parameter: str) -> RunwareError:
    return RunwareError(Code.MISSING_PARAMETER, f"missing {parameter}", parameter)
