"""ControlNet units -> the models and call arguments of a diffusers ControlNet pipeline.

Per unit: the image is preprocessed (pipelines.preprocessors) at the unit's resolution, then
fitted to the job's size with the unit's resize mode; the ControlNet is loaded once per device
(component cache); weight, start and end become diffusers' controlnet_conditioning_scale and
control_guidance_start / _end. The units (up to three) run as one diffusers MultiControlNetModel
whose members are `UnitControlNet`s: a thin wrapper around a ControlNetModel that applies what
diffusers has no per-unit switch for, A1111's way:

- control mode BALANCED: diffusers as it is.
- CONTROL ("ControlNet is more important"): diffusers' guess_mode, the control acting on the
  conditional half of the CFG batch only, residuals scaled by logspace(-1, 0). When every unit is
  in this mode the pipeline runs with guess_mode=True, exactly diffusers' own path; mixed with
  other modes, the wrapper zeroes the unit's residuals on the unconditional half itself. (A1111
  scales this mode's residuals by its soft-injection factors below instead of logspace: the two
  curves run from 0.1 to 1 almost alike.)
- PROMPT ("my prompt is more important"): A1111's soft injection, residual i (of 13, the middle
  block last) scaled by 0.825 ** (12 - i); SDXL's 10 residuals take the first 10 of those
  factors, as A1111 does.
- unit mask (A1111's effective region mask; white = where the unit acts): each residual is
  multiplied by the mask resized bilinearly to its resolution.

Global-pooling ControlNets (shuffle) act on the conditional half only, as in diffusers and A1111;
the wrapper handles that per unit, so its config says global_pool_conditions=False to keep the
pipeline from switching every unit to guess mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import FrozenDict
from diffusers.models.controlnets.controlnet import ControlNetModel
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL.Image import Image

from models.catalogue import Architecture, ModelKind, ModelSpec, UnknownModelError
from models.controlnet import load_controlnet
from pipelines.imaging import fit_image
from pipelines.jobs import ControlMode, ControlUnit, ErrorCode, GenerationJob, JobError
from pipelines.preprocessors import is_map, preprocess

if TYPE_CHECKING:  # the runners import this module: no import of pipelines.runners at run time
    from pipelines.runners.common import Resources, RunContext

MAX_UNITS = 3
SOFT_INJECTION_BASE = 0.825  # A1111: "my prompt is more important"
SOFT_INJECTION_LAYERS = 13  # factors are 0.825 ** (12 - i) for residual i of SD 1.x's 13


def soft_injection_scales(count: int) -> list[float]:
    """A1111's factors for the first `count` residuals (the middle block's is the last)."""
    top = SOFT_INJECTION_LAYERS - 1
    return [SOFT_INJECTION_BASE ** float(top - i) for i in range(count)]


@dataclass
class PreparedControl:
    """What a ControlNet pipeline call needs for a job's units."""

    controlnet: Any  # the pipeline's `controlnet` component (a MultiControlNetModel)
    images: list[Image]  # one control map per unit, at the job's size
    args: dict[str, Any] = field(default_factory=dict)  # conditioning scales, start/end, modes


class UnitControlNet(torch.nn.Module):
    """One unit's ControlNet as diffusers' MultiControlNetModel calls it, with the unit's mode
    and mask applied to its residuals. Built per job; the wrapped model is the cached one."""

    def __init__(
        self,
        net: ControlNetModel,
        *,
        mode: ControlMode = ControlMode.BALANCED,
        cfg: bool = True,
        mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.mode = mode
        self.cfg = cfg  # the batch holds [unconditional, conditional] halves
        self.mask = mask  # [1, 1, H, W] in 0..1, or None
        self.pooled = bool(net.config["global_pool_conditions"])
        self._config = FrozenDict({**net.config, "global_pool_conditions": False})

    @property
    def config(self) -> FrozenDict:
        return self._config

    @property
    def dtype(self) -> torch.dtype:
        return self.net.dtype

    @property
    def conditional_only(self) -> bool:
        """The unit acts on the conditional half of the CFG batch only."""
        return self.mode is ControlMode.CONTROL or self.pooled

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = False,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """guess_mode=True from the pipeline means the batch holds the conditional half alone."""
        down, mid = self.net(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=controlnet_cond,
            conditioning_scale=conditioning_scale,
            class_labels=class_labels,
            timestep_cond=timestep_cond,
            attention_mask=attention_mask,
            added_cond_kwargs=added_cond_kwargs,
            cross_attention_kwargs=cross_attention_kwargs,
            guess_mode=self.mode is ControlMode.CONTROL,
            return_dict=False,
        )
        residuals = [*down, mid]
        if self.mode is ControlMode.PROMPT:
            scales = soft_injection_scales(len(residuals))
            residuals = [r * s for r, s in zip(residuals, scales, strict=True)]
        if self.conditional_only and self.cfg and not guess_mode:
            residuals = [_conditional_half(r) for r in residuals]
        if self.mask is not None:
            residuals = [r * self._mask_like(r) for r in residuals]
        return residuals[:-1], residuals[-1]

    def _mask_like(self, residual: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(device=residual.device, dtype=residual.dtype)  # type: ignore[union-attr]
        return F.interpolate(mask, size=residual.shape[-2:], mode="bilinear")


def _conditional_half(residual: torch.Tensor) -> torch.Tensor:
    """Zero on the unconditional (first) half of a CFG batch, as diffusers' guess mode does."""
    unconditional, conditional = residual.chunk(2)
    return torch.cat([torch.zeros_like(unconditional), conditional])


# --- preparing a job's units ---------------------------------------------------------------------


def prepare_controls(
    base: DiffusionPipeline, job: GenerationJob, ctx: RunContext
) -> PreparedControl | None:
    """None when the job has no ControlNet units."""
    if not job.controls:
        return None
    if len(job.controls) > MAX_UNITS:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"at most {MAX_UNITS} ControlNet units per job, got {len(job.controls)}",
        )
    resources = ctx.resources
    if resources is None:
        raise JobError(ErrorCode.INTERNAL, "ControlNet units need the worker's resources")
    checkpoint = resources.catalogue.resolve(job.model)
    cfg = job.guidance_scale > 1 and base.unet.config.time_cond_proj_dim is None
    nets: list[UnitControlNet] = []
    images: list[Image] = []
    for index, unit in enumerate(job.controls):
        _check_steps(unit, index)
        model = controlnet_for(unit.model, base, checkpoint, resources)
        images.append(control_image(unit, job, resources))
        mask = None if unit.mask is None else mask_tensor(unit, job)
        nets.append(UnitControlNet(model, mode=unit.mode, cfg=cfg, mask=mask))
    args: dict[str, Any] = {
        "controlnet_conditioning_scale": [float(u.weight) for u in job.controls],
        "control_guidance_start": [float(u.start) for u in job.controls],
        "control_guidance_end": [float(u.end) for u in job.controls],
        "guess_mode": all(net.conditional_only for net in nets),
    }
    # diffusers annotates ControlNetModel; it only calls each net, as UnitControlNet is called
    multi = MultiControlNetModel(nets)  # type: ignore[arg-type]  # duck-typed ControlNetModel
    return PreparedControl(multi, images, args)


def _check_steps(unit: ControlUnit, index: int) -> None:
    if not 0.0 <= unit.start < unit.end <= 1.0:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"ControlNet unit {index + 1}: start {unit.start} and end {unit.end} must satisfy "
            "0 <= start < end <= 1",
        )


def controlnet_for(
    code: str, base: DiffusionPipeline, checkpoint: ModelSpec, resources: Resources
) -> ControlNetModel:
    """The unit's ControlNet, loaded once per device; refused when it does not fit the model."""
    try:
        spec = resources.catalogue.resolve(code, ModelKind.CONTROLNET)
    except UnknownModelError as error:
        raise JobError(ErrorCode.UNKNOWN_MODEL, str(error)) from None
    architecture = checkpoint.architecture
    if spec.architecture not in (Architecture.UNKNOWN, architecture):
        raise JobError(ErrorCode.INVALID_INPUT, _mismatch(spec, checkpoint))
    cache = resources.cache
    model = cache.component(
        (ModelKind.CONTROLNET.value, spec.code, architecture.value),
        lambda: load_controlnet(
            spec, architecture=architecture, device=cache.device, dtype=cache.dtype
        ),
    )
    if not _fits(model, base):
        raise JobError(ErrorCode.INVALID_INPUT, _mismatch(spec, checkpoint))
    return model


def _fits(model: ControlNetModel, base: DiffusionPipeline) -> bool:
    """Same residual shapes and context width as the checkpoint's UNet expects."""
    unet = base.unet.config
    config = model.config
    return tuple(config["block_out_channels"]) == tuple(unet.block_out_channels) and (
        config["cross_attention_dim"] == unet.cross_attention_dim
    )


def _mismatch(spec: ModelSpec, checkpoint: ModelSpec) -> str:
    return (
        f"ControlNet {spec.code!r} ({spec.architecture.value}) does not fit the checkpoint "
        f"{checkpoint.code!r} ({checkpoint.architecture.value}): use a ControlNet made for "
        f"{checkpoint.architecture.value} models"
    )


def control_image(unit: ControlUnit, job: GenerationJob, resources: Resources) -> Image:
    """The unit's control map at the job's size: preprocessed if asked, then fitted."""
    image = unit.image.convert("RGB")
    if not is_map(unit.preprocessor):
        image = preprocess(
            unit.preprocessor or "",
            image,
            resolution=unit.resolution,
            options=unit.preprocessor_options,
            models_dir=resources.models_dir,
            cache=resources.cache,
            seed=job.seeds[0] if job.seeds else 0,
        )
    return fit_image(image, job.width, job.height, unit.resize_mode)


def mask_tensor(unit: ControlUnit, job: GenerationJob) -> torch.Tensor:
    """The unit's mask fitted like its image, as a [1, 1, height, width] tensor in 0..1."""
    assert unit.mask is not None
    fitted = fit_image(unit.mask, job.width, job.height, unit.resize_mode).convert("L")
    return torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0)[None, None]
