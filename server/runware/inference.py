"""imageInference: a wire request -> one engine GenerationJob.

Runware's vocabulary is translated here and nowhere else: which fields make an img2img, inpaint
or outpaint job, clipSkip's offset from A1111's ClipSkip, step counts as fractions, AIR ids
resolved through the catalogue. Every image input is loaded before the job is built, so a bad
request fails at once with the field at fault and nothing is queued.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from PIL.Image import Image

from pipelines.engine import Engine
from pipelines.jobs import (
    ControlMode,
    ControlUnit,
    GenerationJob,
    JobError,
    JobKind,
    ModelInfo,
    Padding,
    PromptWeighting,
    Refiner,
    StyleReference,
    SubModel,
    SubModelKind,
)
from server.limits import Limits
from server.runware import protocol as wire
from server.runware.errors import Code, RunwareError
from server.runware.inputs import ImageInputs

AUTO_LANGUAGE = "auto"  # promptLanguage: detect the prompt's language

DEFAULT_STEPS = 20
DEFAULT_CFG_SCALE = 7.0
DEFAULT_STRENGTH = 0.8  # img2img / inpaint
DEFAULT_SIDE = 512
RANDOM_SEED_MAX = 2**31 - 1
# Legacy ControlNet units name a ControlNet type ("canny"); the catalogue resolves this prefix
# plus the type when the operator bound it, else an installed ControlNet named after the type.
LEGACY_CONTROLNET_PREFIX = "legacy-controlnet:"

CONTROL_MODES: dict[str, ControlMode] = {
    "balanced": ControlMode.BALANCED,
    "prompt": ControlMode.PROMPT,
    "controlnet": ControlMode.CONTROL,
}
PROMPT_WEIGHTINGS: dict[str, PromptWeighting] = {
    "compel": PromptWeighting.COMPEL,
    "sdembeds": PromptWeighting.SDEMBEDS,
}
SAMPLER_DEFAULT = "default"  # Runware's "Default": the model's own scheduler

# A local cost figure for includeCost: USD per megapixel-step of the image, in the range of the
# hosted service's published SD prices (a 512x512, 20-step image costs 0.0013).
COST_PER_MEGAPIXEL_STEP = 0.00025


def image_cost(width: int, height: int, steps: int) -> float:
    return round(width * height / 1_000_000 * steps * COST_PER_MEGAPIXEL_STEP, 10)


def check_prompt(limits: Limits, text: str | None, parameter: str) -> None:
    """A prompt field within max_prompt_chars; invalidParameter naming it otherwise."""
    problem = None if text is None else limits.prompt_problem(text)
    if problem is not None:
        raise RunwareError(Code.INVALID_PARAMETER, f"{parameter} {problem}", parameter)


def check_pixels(
    limits: Limits, size: tuple[int, int], images: int, fields: str, parameter: str
) -> None:
    """width x height x images within max_request_pixels; invalidParameter naming `fields`
    (the message) and `parameter` (the field to lower) otherwise."""
    problem = limits.pixels_problem(*size, images)
    if problem is not None:
        raise RunwareError(Code.INVALID_PARAMETER, f"{fields}: {problem}", parameter)


@dataclass(frozen=True)
class BuiltJob:
    job: GenerationJob
    checkpoint: ModelInfo


class InferenceBuilder:
    def __init__(self, engine: Engine, inputs: ImageInputs, limits: Limits | None = None) -> None:
        self.engine = engine
        self.inputs = inputs
        self.limits = limits or Limits()

    async def build(self, req: wire.ImageInference, owner: str) -> BuiltJob:
        check_prompt(self.limits, req.positivePrompt, "positivePrompt")
        check_prompt(self.limits, req.negativePrompt, "negativePrompt")
        checkpoint = self._resolve(req.model, "checkpoint", "model")
        kind = self._kind(req)
        seed_image = await self._image(req.seedImage, "seedImage", owner)
        mask = await self._image(req.maskImage, "maskImage", owner)
        width, height = self._size(req, seed_image)
        # The field to lower: numberResults when there are several, else the size.
        parameter = "numberResults" if req.numberResults > 1 else "width"
        fields = "width x height x numberResults"
        check_pixels(self.limits, (width, height), req.numberResults, fields, parameter)
        steps = req.steps or checkpoint.default_steps or DEFAULT_STEPS
        guidance = (
            req.CFGScale
            if req.CFGScale is not None
            else checkpoint.default_guidance_scale or DEFAULT_CFG_SCALE
        )
        controls = await asyncio.gather(
            *(
                self._control(unit, i, steps, checkpoint, owner)
                for i, unit in enumerate(req.controlNet or [])
            )
        )
        style = await self._style(req.ipAdapters or [], owner)
        job = GenerationJob(
            kind=kind,
            model=checkpoint.code,
            prompt=req.positivePrompt,
            negative_prompt=req.negativePrompt or "",
            width=width,
            height=height,
            steps=steps,
            guidance_scale=float(guidance),
            seeds=self._seeds(req),
            sampler=self._sampler(req.scheduler, checkpoint),
            clip_skip=(
                req.clipSkip + 1 if req.clipSkip is not None else checkpoint.default_clip_skip or 1
            ),
            init_image=seed_image,
            strength=req.strength if req.strength is not None else DEFAULT_STRENGTH,
            mask=mask,
            mask_blur=req.outpaint.blur if req.outpaint is not None else 0,
            mask_margin=req.maskMargin,
            outpaint=self._padding(req.outpaint),
            controls=tuple(controls),
            style=style,
            sub_models=self._sub_models(req),
            vae=self._resolve(req.vae, "vae", "vae").code if req.vae else None,
            refiner=self._refiner(req.refiner, steps),
            prompt_weighting=PROMPT_WEIGHTINGS[req.promptWeighting]
            if req.promptWeighting
            else None,
            translate_prompts=req.promptLanguage is not None,
            prompt_language=None
            if req.promptLanguage in (None, AUTO_LANGUAGE)
            else req.promptLanguage,
            check_nsfw=bool(req.checkNSFW),
            owner=owner,
        )
        return BuiltJob(job, checkpoint)

    # --- pieces ---

    def _resolve(self, identifier: str, kind: str, parameter: str) -> ModelInfo:
        try:
            return self.engine.resolve_model(identifier, kind)
        except JobError:
            raise RunwareError(
                Code.UNKNOWN_MODEL,
                f"{parameter}: no {kind.replace('_', '-')} model {identifier!r} is installed "
                "(bind the id to a local model with `ids` in the models manifest)",
                parameter,
            ) from None

    async def _image(self, value: str | None, parameter: str, owner: str) -> Image | None:
        return None if value is None else await self.inputs.load(value, parameter, owner)

    @staticmethod
    def _kind(req: wire.ImageInference) -> JobKind:
        if req.seedImage is None:
            for field in ("maskImage", "outpaint", "strength", "maskMargin"):
                if getattr(req, field) is not None:
                    raise RunwareError(
                        Code.MISSING_PARAMETER, f"{field} needs a seedImage", "seedImage"
                    )
            return JobKind.TXT2IMG
        if req.maskImage is not None or req.outpaint is not None:
            return JobKind.INPAINT
        if req.maskMargin is not None:
            raise RunwareError(Code.MISSING_PARAMETER, "maskMargin needs a maskImage", "maskImage")
        return JobKind.IMG2IMG

    @staticmethod
    def _size(req: wire.ImageInference, seed_image: Image | None) -> tuple[int, int]:
        """Explicit sizes win; else the seed image's (plus any outpaint), rounded to 64."""

        def snap(value: int) -> int:
            rounded = round(value / wire.SIDE_MULTIPLE) * wire.SIDE_MULTIPLE
            return min(wire.MAX_SIDE, max(wire.MIN_SIDE, rounded))

        if seed_image is None:
            return req.width or DEFAULT_SIDE, req.height or DEFAULT_SIDE
        pad = req.outpaint or wire.OutpaintItem()
        width = req.width or snap(seed_image.width + pad.left + pad.right)
        height = req.height or snap(seed_image.height + pad.top + pad.bottom)
        return width, height

    @staticmethod
    def _seeds(req: wire.ImageInference) -> tuple[int, ...]:
        """Image i uses seed + i (as the hosted API does); a random seed when none is given."""
        base = req.seed if req.seed is not None else random.randint(1, RANDOM_SEED_MAX)
        return tuple((base + i) % (wire.MAX_SEED + 1) for i in range(req.numberResults))

    @staticmethod
    def _sampler(name: str | None, checkpoint: ModelInfo) -> str | None:
        if name is None or name.strip().lower() == SAMPLER_DEFAULT:
            return checkpoint.default_sampler
        return name.strip()

    @staticmethod
    def _padding(outpaint: wire.OutpaintItem | None) -> Padding | None:
        if outpaint is None:
            return None
        return Padding(
            top=outpaint.top, right=outpaint.right, bottom=outpaint.bottom, left=outpaint.left
        )

    def _sub_models(self, req: wire.ImageInference) -> tuple[SubModel, ...]:
        subs = [
            SubModel(
                kind=SubModelKind.LORA,
                model=self._resolve(item.model, "lora", f"lora[{i}].model").code,
                weight=item.weight,
            )
            for i, item in enumerate(req.lora or [])
        ]
        subs += [
            SubModel(
                kind=SubModelKind.EMBEDDING,
                model=self._resolve(item.model, "embedding", f"embeddings[{i}].model").code,
                weight=item.weight,
            )
            for i, item in enumerate(req.embeddings or [])
        ]
        return tuple(subs)

    async def _control(
        self,
        unit: wire.ControlNetItem,
        index: int,
        steps: int,
        checkpoint: ModelInfo,
        owner: str,
    ) -> ControlUnit:
        where = f"controlNet[{index}]"
        model = self._controlnet(unit.model, checkpoint, f"{where}.model")
        image = await self.inputs.load(unit.guideImage, f"{where}.guideImage", owner)
        start = _fraction(unit.startStep, unit.startStepPercentage, steps, 0.0, f"{where}.start")
        end = _fraction(unit.endStep, unit.endStepPercentage, steps, 1.0, f"{where}.end")
        if end <= start:
            raise RunwareError(
                Code.INVALID_PARAMETER,
                f"{where}: the end step must come after the start step",
                f"{where}.endStep",
            )
        return ControlUnit(
            model=model.code,
            image=image,
            weight=unit.weight,
            start=start,
            end=end,
            mode=CONTROL_MODES[unit.controlMode],
        )

    def _controlnet(self, identifier: str, checkpoint: ModelInfo, parameter: str) -> ModelInfo:
        if identifier.startswith(LEGACY_CONTROLNET_PREFIX):
            try:
                return self.engine.resolve_model(identifier, "controlnet")
            except JobError:
                pass
            kind = identifier.removeprefix(LEGACY_CONTROLNET_PREFIX).lower()
            family = kind.split("_")[0]  # depth_midas -> depth, openpose_full -> openpose
            for name in (kind, family):
                found = [
                    m
                    for m in self.engine.list_models("controlnet")
                    if name in m.code.lower()
                    and m.architecture in (checkpoint.architecture, "unknown")
                ]
                if found:
                    return found[0]
        return self._resolve(identifier, "controlnet", parameter)

    async def _style(self, adapters: list[wire.IpAdapterItem], owner: str) -> StyleReference | None:
        if not adapters:
            return None
        item = adapters[0]
        adapter = self._resolve(item.model, "ip_adapter", "ipAdapters[0].model")
        image = await self.inputs.load(item.guideImage, "ipAdapters[0].guideImage", owner)
        return StyleReference(image=image, strength=item.weight, adapter=adapter.code)

    def _refiner(self, item: wire.RefinerItem | None, steps: int) -> Refiner | None:
        if item is None:
            return None
        model = self._resolve(item.model, "checkpoint", "refiner.model")
        if item.startStep is None and item.startStepPercentage is None:
            raise RunwareError(
                Code.MISSING_PARAMETER,
                "refiner needs startStep or startStepPercentage",
                "refiner.startStep",
            )
        start = _fraction(item.startStep, item.startStepPercentage, steps, 0.8, "refiner.start")
        if not 0.0 < start < 1.0:
            raise RunwareError(
                Code.INVALID_PARAMETER,
                f"refiner.startStep must be between 1 and steps - 1 ({steps - 1})",
                "refiner.startStep",
            )
        return Refiner(model=model.code, start=start)


def _fraction(
    step: int | None, percentage: float | None, steps: int, default: float, parameter: str
) -> float:
    """A step given as a step number or a percentage, as a fraction of the steps."""
    if step is not None and percentage is not None:
        raise RunwareError(
            Code.INVALID_PARAMETER,
            f"{parameter}: give the step or the percentage, not both",
            f"{parameter}Step",
        )
    if step is not None:
        if step > steps:
            raise RunwareError(
                Code.INVALID_PARAMETER,
                f"{parameter}Step {step} is beyond the {steps} steps",
                f"{parameter}Step",
            )
        return step / steps
    if percentage is not None:
        return percentage / 100.0
    return default
