"""PICPIK's generation actions: a validated wire request in, one engine job and a TaskUID out.

GenerateImages (txt2img / img2img), ModifyMaskedPixels (inpaint / outpaint), ApplyReferenceStyle
(img2img with an IP-Adapter style image) and GenerateBackgrounds (a background drawn behind a
transparent foreground) share the main model's settings, the sub-models, ControlNet units and the
image list; each action only adds what is its own. Everything is checked here, before anything is
queued; the meaning of every PICPIK parameter that the documents leave open is written down in
docs/picpik.md.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from PIL import ImageOps
from PIL.Image import Image

from pipelines.engine import Engine
from pipelines.jobs import (
    ControlMode,
    ControlUnit,
    GenerationJob,
    JobError,
    JobKind,
    ModelInfo,
    ResizeMode,
    StyleReference,
    SubModel,
    SubModelKind,
)
from pipelines.masking import rgba_foreground
from pipelines.samplers import is_known_sampler
from server.limits import Limits
from server.picpik import protocol as wire
from server.picpik.common import (
    DEFAULT_CFG_SCALE,
    DEFAULT_CLIP_SKIP,
    DEFAULT_SAMPLER,
    DEFAULT_SIDE,
    DEFAULT_STEPS,
    Caller,
    Submit,
    check_prompts,
    check_request_pixels,
    decode_image,
    parse,
    point_cost,
    round_side,
)
from server.picpik.errors import PicpikError, RetCode

RESIZE_MODES: MappingProxyType[str, ResizeMode] = MappingProxyType(
    {
        "JustResize": ResizeMode.JUST_RESIZE,
        "CropAndResize": ResizeMode.CROP_AND_RESIZE,
        "ResizeAndFill": ResizeMode.RESIZE_AND_FILL,
    }
)

CONTROL_MODES: MappingProxyType[str, ControlMode] = MappingProxyType(
    {
        "Balanced": ControlMode.BALANCED,
        "prompt-heavy": ControlMode.PROMPT,
        "control-heavy": ControlMode.CONTROL,
    }
)

# Processor-specific PreProcessor.InferenceParams -> the engine's option names.
PREPROCESSOR_OPTIONS: MappingProxyType[str, str] = MappingProxyType(
    {
        "MLSDValueThreshold": "value_threshold",
        "MLSDDistanceThreshold": "distance_threshold",
        "CannyLowThreshold": "low_threshold",
        "CannyHighThreshold": "high_threshold",
    }
)
# PreProcessor.InferenceParams every processor takes (not options of one processor).
GENERIC_PREPROCESSOR_PARAMS = frozenset({"Resolution"})
NO_PREPROCESSOR = frozenset({"", "none", "None"})

# Sub-model kinds, in the order a SubModelList code is looked up.
SUB_MODEL_KINDS: tuple[SubModelKind, ...] = (
    SubModelKind.LORA,
    SubModelKind.EMBEDDING,
    SubModelKind.HYPERNETWORK,
)

# Masked.ReferStrength (0..2: how much the masked area keeps of the original) -> denoising
# strength, interpolated linearly between these points. 1 (the default) is A1111's default 0.75.
MASK_REFER_STRENGTH: tuple[tuple[float, float], ...] = ((0.0, 1.0), (1.0, 0.75), (2.0, 0.25))
# ApplyReferenceStyle redraws the raw image at this denoising strength: enough for the style to
# take over, little enough for the raw image's layout to stay.
STYLE_DENOISING_STRENGTH = 0.75
# DeepFusion's harmonisation pass: points per million pixels per step per image.
DEEP_FUSION_POINTS = 6


def mask_strength(refer_strength: float) -> float:
    points = MASK_REFER_STRENGTH
    for (x0, y0), (x1, y1) in pairwise(points):
        if refer_strength <= x1:
            return y0 + (y1 - y0) * (refer_strength - x0) / (x1 - x0)
    return points[-1][1]


class ImageInputs:
    """A request's image list (ImageAndMaskList or ImageList), each entry decoded once."""

    def __init__(self, images: list[str] | None, name: str, limits: Limits) -> None:
        self.images = images or []
        self.name = name
        self.limits = limits
        self._decoded: dict[int, Image] = {}

    async def get(self, index: int, field: str) -> Image:
        if index >= len(self.images):
            raise PicpikError(
                RetCode.INVALID_PARAMETER,
                f"invalid {field}: {index} is out of range ({self.name} has {len(self.images)})",
            )
        if index not in self._decoded:
            field = f"{self.name}[{index}]"
            self._decoded[index] = await decode_image(self.images[index], field, self.limits)
        return self._decoded[index]

    async def mask(self, index: int, field: str, invert: bool) -> Image:
        """A mask as 8-bit grey, white = selected (inverted first when asked)."""
        mask = (await self.get(index, field)).convert("L")
        return ImageOps.invert(mask) if invert else mask


@dataclass(frozen=True)
class MainSettings:
    """The main model and its InferenceParams with defaults filled in."""

    model: ModelInfo
    steps: int
    guidance_scale: float
    sampler: str
    clip_skip: int


class GenerationActions:
    def __init__(self, engine: Engine, submit: Submit, limits: Limits | None = None) -> None:
        self.engine = engine
        self.submit = submit
        self.limits = limits or Limits()

    # --- actions ---

    async def generate_images(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.GenerateImagesRequest, body)
        main = self._main_settings(req.MainModel)
        images = ImageInputs(req.ImageAndMaskList, "ImageAndMaskList", self.limits)
        i2i = req.Image2Image
        init_image = None
        if i2i is not None:
            init_image = await images.get(i2i.ImageIndex, "Image2Image.ImageIndex")
        width = round_side(req.Width or DEFAULT_SIDE)
        height = round_side(req.Height or DEFAULT_SIDE)
        job = GenerationJob(
            kind=JobKind.TXT2IMG if i2i is None else JobKind.IMG2IMG,
            init_image=init_image,
            # ReferStrength is how much of the reference survives.
            strength=0.0 if i2i is None else 1.0 - i2i.ReferStrength,
            resize_mode=RESIZE_MODES[i2i.ResizeMode if i2i else "ResizeAndFill"],
            **await self._controls(req.ControlNetList, images),
            tileable=bool(req.Tileable),
            **self._common(req, main, caller, width, height),
        )
        return self._queue(req, job, caller, main)

    async def modify_masked_pixels(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.ModifyMaskedPixelsRequest, body)
        main = self._main_settings(req.MainModel)
        images = ImageInputs(req.ImageAndMaskList, "ImageAndMaskList", self.limits)
        masked = req.Masked
        raw = await images.get(masked.ImageIndex, "Masked.ImageIndex")
        mask = await images.mask(masked.MaskIndex, "Masked.MaskIndex", masked.InvertMask)
        i2i = req.Image2Image
        fill = None
        strength = mask_strength(masked.ReferStrength)
        if i2i is not None:
            fill = await images.get(i2i.ImageIndex, "Image2Image.ImageIndex")
            strength = 1.0 - i2i.ReferStrength
        if masked.PromptsMoreImportant:
            strength = 1.0  # the masked area is drawn from noise: only the prompt decides it
        width, height = self._size(req, raw)
        job = GenerationJob(
            kind=JobKind.INPAINT,
            init_image=raw,
            mask=mask,
            mask_blur=masked.MaskBlur,
            fill_image=fill,
            fill_resize_mode=RESIZE_MODES[i2i.ResizeMode] if i2i else None,
            strength=strength,
            **await self._controls(req.ControlNetList, images),
            **self._common(req, main, caller, width, height),
        )
        return self._queue(req, job, caller, main)

    async def apply_reference_style(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.ApplyReferenceStyleRequest, body)
        main = self._main_settings(req.MainModel)
        images = ImageInputs(req.ImageList, "ImageList", self.limits)
        raw = await images.get(req.RawImageIndex, "RawImageIndex")
        style = await images.get(req.StyleImageIndex, "StyleImageIndex")
        width, height = self._size(req, raw)
        job = GenerationJob(
            kind=JobKind.IMG2IMG,
            init_image=raw,
            strength=STYLE_DENOISING_STRENGTH,
            style=StyleReference(image=style.convert("RGB"), strength=req.StyleReferStrength),
            **self._common(req, main, caller, width, height),
        )
        return self._queue(req, job, caller, main)

    async def generate_backgrounds(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.GenerateBackgroundsRequest, body)
        main = self._main_settings(req.MainModel)
        images = ImageInputs(req.ImageList, "ImageList", self.limits)
        foreground_params = req.TransparentForeground
        if foreground_params is None and req.TransparentImageIndexList:
            foreground_params = wire.TransparentForegroundParams(
                ImageIndex=req.TransparentImageIndexList[0]
            )
        if foreground_params is None:
            raise PicpikError(
                RetCode.INVALID_PARAMETER, "invalid TransparentForeground: Field required"
            )
        index = foreground_params.ImageIndex
        try:
            foreground = rgba_foreground(await images.get(index, "TransparentForeground"))
        except JobError as error:
            raise PicpikError(
                RetCode.INVALID_IMAGE, f"ImageList[{index}]: {error.message}"
            ) from None
        background = req.BackgroundImage2Image
        fill = None
        if background is not None:
            fill = await images.get(background.ImageIndex, "BackgroundImage2Image.ImageIndex")
        width, height = self._size(req, foreground)
        job = GenerationJob(
            kind=JobKind.BACKGROUND,
            init_image=foreground,
            fill_image=fill,
            # Without a reference the background is drawn from noise.
            strength=1.0 if background is None else 1.0 - background.ReferStrength,
            resize_mode=RESIZE_MODES[foreground_params.ResizeMode],
            fill_resize_mode=RESIZE_MODES[background.ResizeMode] if background else None,
            deep_fusion=background is not None and background.DeepFusion,
            **self._common(req, main, caller, width, height),
        )
        extra = 0
        if job.deep_fusion:
            pixels = width * height * main.steps * req.BatchSize
            extra = -(-DEEP_FUSION_POINTS * pixels // 1_000_000)
        return self._queue(req, job, caller, main, extra_cost=extra)

    # --- shared translation ---

    def _main_settings(self, main: wire.ModelRef | None) -> MainSettings:
        identifier = (main.ModelCode or main.Name) if main else None
        try:
            model = self.engine.resolve_model(identifier)
        except JobError as error:
            raise PicpikError(
                RetCode.UNKNOWN_MODEL, f"invalid MainModel: {error.message}"
            ) from None
        params = (main.InferenceParams if main else None) or wire.Params()
        sampler = params.Sampler or model.default_sampler or DEFAULT_SAMPLER
        if not is_known_sampler(sampler):
            raise PicpikError(
                RetCode.INVALID_PARAMETER,
                f"invalid MainModel.InferenceParams.Sampler: unknown sampler {sampler!r}",
            )
        return MainSettings(
            model=model,
            steps=params.Steps or model.default_steps or DEFAULT_STEPS,
            guidance_scale=params.CFGScale or model.default_guidance_scale or DEFAULT_CFG_SCALE,
            sampler=sampler,
            clip_skip=params.ClipSkip or model.default_clip_skip or DEFAULT_CLIP_SKIP,
        )

    @staticmethod
    def _size(req: wire.GenerationRequest, image: Image) -> tuple[int, int]:
        """The requested size; a side left out is the input image's (rounded to 8)."""
        return round_side(req.Width or image.width), round_side(req.Height or image.height)

    def _common(
        self,
        req: wire.GenerationRequest,
        main: MainSettings,
        caller: Caller,
        width: int,
        height: int,
    ) -> dict[str, Any]:
        """GenerationJob fields every action sets the same way; the request's limits (prompt
        lengths, Width x Height x BatchSize) are checked here."""
        seed = req.Seed if req.Seed >= 0 else secrets.randbelow(2147483647)
        prompt, negative = _join(req.PositivePrompts), _join(req.NegativePrompts)
        check_prompts("PositivePrompts", req.PositivePrompts, prompt, self.limits)
        check_prompts("NegativePrompts", req.NegativePrompts, negative, self.limits)
        check_request_pixels(width, height, req.BatchSize, self.limits)
        return {
            "model": main.model.code,
            "prompt": prompt,
            "negative_prompt": negative,
            "width": width,
            "height": height,
            "steps": main.steps,
            "guidance_scale": main.guidance_scale,
            "sampler": main.sampler,
            "clip_skip": main.clip_skip,
            "seeds": tuple(seed + i for i in range(req.BatchSize)),
            "sub_models": self._sub_models(req.SubModelList, prompt, negative),
            "use_model_vae": req.UseMainModelVAE,
            "translate_prompts": req.TranslatePrompts,
            "owner": caller.owner,
        }

    def _queue(
        self,
        req: wire.GenerationRequest,
        job: GenerationJob,
        caller: Caller,
        main: MainSettings,
        extra_cost: int = 0,
    ) -> dict[str, Any]:
        cost = point_cost(job.width, job.height, main.steps, req.BatchSize) + extra_cost
        return {"TaskUID": self.submit(req.Action, job, caller, cost)}

    def _sub_models(
        self, entries: list[wire.ModelRef] | None, prompt: str, negative: str
    ) -> tuple[SubModel, ...]:
        """SubModelList entries (LoRA, embedding or hypernetwork, found by code or name), plus
        every installed embedding whose token a prompt uses, as A1111 users expect."""
        chosen: list[SubModel] = []
        for i, entry in enumerate(entries or []):
            identifier = entry.ModelCode or entry.Name
            if not identifier:
                raise PicpikError(
                    RetCode.INVALID_PARAMETER, f"invalid SubModelList[{i}]: ModelCode is required"
                )
            found = self._find_sub_model(identifier)
            if found is None:
                raise PicpikError(
                    RetCode.UNKNOWN_MODEL,
                    f"invalid SubModelList[{i}]: {identifier!r} is not an installed LoRA, "
                    "embedding or hypernetwork",
                )
            kind, model = found
            weight = entry.InferenceParams.LoraWeight if entry.InferenceParams else None
            chosen.append(SubModel(kind=kind, model=model.code, weight=_or(weight, 1.0)))
        named = {(s.kind, s.model) for s in chosen}
        words = set(_WORD.findall(f"{prompt} {negative}"))
        for embedding in self.engine.list_models(SubModelKind.EMBEDDING.value):
            key = (SubModelKind.EMBEDDING, embedding.code)
            if embedding.code in words and key not in named:
                chosen.append(SubModel(kind=SubModelKind.EMBEDDING, model=embedding.code))
        return tuple(chosen)

    def _find_sub_model(self, identifier: str) -> tuple[SubModelKind, ModelInfo] | None:
        for kind in SUB_MODEL_KINDS:
            try:
                return kind, self.engine.resolve_model(identifier, kind.value)
            except JobError:
                continue
        return None

    async def _controls(
        self, units: list[wire.ControlNetUnit] | None, images: ImageInputs
    ) -> dict[str, Any]:
        """The job's `controls`, and its `style` when a unit names an IP-Adapter instead of a
        ControlNet (A1111's ControlNet extension lists `ip-adapter_sd15` among control models)."""
        controls: list[ControlUnit] = []
        style: StyleReference | None = None
        for i, unit in enumerate(units or []):
            where = f"ControlNetList[{i}]"
            if unit.ControlModel is None or not unit.ControlModel.ModelCode:
                raise PicpikError(
                    RetCode.INVALID_PARAMETER,
                    f"invalid {where}.ControlModel: ModelCode is required",
                )
            if unit.ImageIndex is None:
                raise PicpikError(
                    RetCode.INVALID_PARAMETER, f"invalid {where}.ImageIndex: Field required"
                )
            code = unit.ControlModel.ModelCode
            control = unit.ControlModel.InferenceParams or wire.Params()
            image = (await images.get(unit.ImageIndex, f"{where}.ImageIndex")).convert("RGB")
            adapter = self._ip_adapter(code)
            if adapter is not None:
                if style is not None:
                    raise PicpikError(
                        RetCode.INVALID_PARAMETER,
                        f"invalid {where}: only one IP-Adapter unit per request",
                    )
                weight = min(1.0, _or(control.ControlWeight, 1.0))
                style = StyleReference(image=image, strength=weight, adapter=adapter.code)
                continue
            try:
                model = self.engine.resolve_model(code, "controlnet")
            except JobError as error:
                raise PicpikError(
                    RetCode.UNKNOWN_MODEL, f"invalid {where}.ControlModel: {error.message}"
                ) from None
            start, end = _or(control.StartingStep, 0.0), _or(control.EndingStep, 1.0)
            if start >= end:
                raise PicpikError(
                    RetCode.INVALID_PARAMETER,
                    f"invalid {where}.ControlModel.InferenceParams: StartingStep ({start}) must "
                    f"be before EndingStep ({end})",
                )
            preprocessor, options, resolution = self._preprocessor(unit.PreProcessor, where)
            mask = None
            if unit.MaskIndex is not None:
                mask = await images.mask(unit.MaskIndex, f"{where}.MaskIndex", unit.InvertMask)
            controls.append(
                ControlUnit(
                    model=model.code,
                    image=image,
                    mask=mask,
                    preprocessor=preprocessor,
                    preprocessor_options=MappingProxyType(options),
                    resolution=resolution,
                    weight=_or(control.ControlWeight, 1.0),
                    start=start,
                    end=end,
                    mode=CONTROL_MODES[control.ControlMode or "Balanced"],
                    resize_mode=RESIZE_MODES[control.ResizeMode or "ResizeAndFill"],
                )
            )
        return {"controls": tuple(controls), "style": style}

    def _ip_adapter(self, code: str) -> ModelInfo | None:
        try:
            return self.engine.resolve_model(code, "ip_adapter")
        except JobError:
            return None

    def _preprocessor(
        self, ref: wire.PreProcessorRef | None, where: str
    ) -> tuple[str | None, dict[str, float], int]:
        """(code or None for a ready control map, options, resolution)."""
        params = (ref.InferenceParams if ref else None) or wire.Params()
        resolution = params.Resolution or 512
        code = ref.ModelCode if ref else None
        if code is None or code in NO_PREPROCESSOR:
            return None, {}, resolution
        known = {p.code: p for p in self.engine.list_preprocessors()}
        if code not in known:
            raise PicpikError(
                RetCode.UNKNOWN_MODEL,
                f"invalid {where}.PreProcessor: unknown preprocessor {code!r} "
                f"(known: {', '.join(sorted(known))})",
            )
        if not known[code].available:
            raise PicpikError(
                RetCode.UNKNOWN_MODEL,
                f"invalid {where}.PreProcessor: {code!r} is not installed: {known[code].hint}",
            )
        options: dict[str, float] = {}
        for name, value in (params.model_extra or {}).items():
            if name in GENERIC_PREPROCESSOR_PARAMS:
                continue
            option = PREPROCESSOR_OPTIONS.get(name)
            if option is None or option not in known[code].options:
                allowed = [k for k, v in PREPROCESSOR_OPTIONS.items() if v in known[code].options]
                raise PicpikError(
                    RetCode.INVALID_PARAMETER,
                    f"invalid {where}.PreProcessor.InferenceParams.{name}: not a parameter of "
                    f"{code} (allowed: {', '.join(['Resolution', *allowed])})",
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PicpikError(
                    RetCode.INVALID_PARAMETER,
                    f"invalid {where}.PreProcessor.InferenceParams.{name}: must be a number",
                )
            options[option] = float(value)
        return code, options, resolution


_WORD = re.compile(r"[\w.-]+")


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _join(prompts: list[str] | None) -> str:
    return ", ".join(p.strip() for p in prompts or [] if p and p.strip())
