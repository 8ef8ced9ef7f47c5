"""A style reference image, injected through an IP-Adapter for one job.

The job's adapter, or else the first installed one that fits the checkpoint's cross-attention
width (read from the .safetensors header; a pickle's from its scanned or manifest architecture),
is loaded into the shared pipeline with diffusers' own `load_ip_adapter`, from weights and an
image encoder kept loaded in the device's component cache (see models/ip_adapter.py for where
the files live). The runners pass the style image as `ip_adapter_image`; the variant pipelines
they build share the base's components, the image encoder and feature extractor included.

How strongly the image acts: SD 1.x takes the strength as the adapter scale of every
cross-attention layer. SDXL follows InstantStyle: only the style block (the second attention of
the first up block) sees the image, so a raw image keeps its layout and content and borrows the
reference's colours and texture instead of its objects. Strength 0 draws exactly the picture
without a style: diffusers skips a layer's image attention at scale 0.

On exit, also on errors and cancels, the pipeline gets back exactly what it had: attention
processors (the same objects), image encoder / feature extractor components and config entries,
the UNet's encoder_hid_proj and config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from models.catalogue import ModelKind, ModelSpec
from models.ip_adapter import (
    IPAdapterWeights,
    context_width,
    encoder_input,
    file_context_width,
    image_encoder_for,
    load_image_encoder,
    load_ip_adapter_weights,
)
from pipelines.jobs import ErrorCode, GenerationJob, JobError, StyleReference
from pipelines.runners.common import Resources, RunContext

ScaleConfig = float | dict[str, Any]  # what DiffusionPipeline.set_ip_adapter_scale takes


def everywhere(strength: float) -> ScaleConfig:
    return strength


def style_blocks_only(strength: float) -> ScaleConfig:
    """InstantStyle's "style only" scale: SDXL's up block 0, its middle attention."""
    return {"up": {"block_0": [0.0, strength, 0.0]}}


# Loaded checkpoint's pipeline class name -> how a style strength becomes adapter scales.
STYLE_SCALES: dict[str, Callable[[float], ScaleConfig]] = {
    "StableDiffusionPipeline": everywhere,
    "StableDiffusionInpaintPipeline": everywhere,
    "StableDiffusionXLPipeline": style_blocks_only,
    "StableDiffusionXLInpaintPipeline": style_blocks_only,
}

# Pipeline components an adapter brings; restored with their config entries on exit.
COMPONENTS: tuple[str, ...] = ("image_encoder", "feature_extractor")


@contextmanager
def applied(pipe: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> Iterator[None]:
    if job.style is None:
        yield
        return
    scales = _scales(pipe, job.style)
    resources = ctx.resources
    if resources is None:
        raise JobError(ErrorCode.INTERNAL, "style reference: the worker passed no resources")
    width = pipe.unet.config.cross_attention_dim
    spec = _adapter(job.style, resources, width)
    weights = _weights(spec, resources)
    found = context_width(weights)
    if found != width:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"IP-Adapter {spec.code} is for checkpoints with cross-attention width {found}; "
            f"this checkpoint's is {width} (an SD 1.x adapter on SDXL, or the reverse?)",
        )
    encoder = _image_encoder(spec, weights, resources)
    saved = _Saved.of(pipe)
    try:
        pipe.register_modules(image_encoder=encoder)
        try:
            pipe.load_ip_adapter(
                weights, subfolder=None, weight_name=None, image_encoder_folder=None
            )
            pipe.set_ip_adapter_scale(scales)
        except torch.OutOfMemoryError:
            raise  # a RuntimeError too, but the worker reports it as such
        except (KeyError, ValueError, RuntimeError) as e:
            raise JobError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"IP-Adapter {spec.code} ({spec.path}) does not fit this checkpoint: "
                f"{type(e).__name__}: {e}",
            ) from e
        yield
    finally:
        saved.restore(pipe)


def _scales(pipe: DiffusionPipeline, style: StyleReference) -> ScaleConfig:
    if not 0.0 <= style.strength <= 1.0:
        raise JobError(ErrorCode.INVALID_INPUT, f"style strength {style.strength} is outside 0..1")
    scale = STYLE_SCALES.get(type(pipe).__name__)
    if scale is None:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"style references are not supported for {type(pipe).__name__} checkpoints",
        )
    return scale(style.strength)


def _adapter(style: StyleReference, resources: Resources, width: int) -> ModelSpec:
    """The job's adapter, else the first installed one for this cross-attention width."""
    catalogue = resources.catalogue
    if style.adapter:
        return catalogue.resolve(style.adapter, ModelKind.IP_ADAPTER)
    installed = catalogue.by_kind(ModelKind.IP_ADAPTER)
    spec = next((s for s in installed if file_context_width(s) == width), None)
    if spec is None:
        dims = "SD 1.x: ip-adapter_sd15.safetensors; SDXL: ip-adapter_sdxl_vit-h.safetensors"
        where = resources.models_dir / "ipadapter" if resources.models_dir else "ipadapter/"
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"no IP-Adapter for this checkpoint (cross-attention width {width}) is installed: "
            f"put one (h94/IP-Adapter, {dims}) in {where}, with its CLIP image encoder "
            "(see the documentation of the models directory)",
        )
    return spec


def _weights(spec: ModelSpec, resources: Resources) -> IPAdapterWeights:
    cache = resources.cache

    def load() -> IPAdapterWeights:
        return load_ip_adapter_weights(
            spec, device=cache.device, dtype=cache.dtype, allow_pickle=cache.allow_pickle
        )

    return cache.component(("ip_adapter", str(spec.path)), load)


def _image_encoder(spec: ModelSpec, weights: IPAdapterWeights, resources: Resources) -> Any:
    cache = resources.cache
    folder = image_encoder_for(spec, encoder_input(spec, weights), resources.models_dir)

    def load() -> Any:
        return load_image_encoder(
            folder, device=cache.device, dtype=cache.dtype, allow_pickle=cache.allow_pickle
        )

    return cache.component(("image_encoder", str(folder)), load)


_ABSENT = object()


@dataclass(frozen=True)
class _Saved:
    """What `load_ip_adapter` changes on a pipeline, as it was before."""

    config: Any  # the pipeline's FrozenDict (replaced, never mutated, by register_modules)
    components: dict[str, Any]
    processors: dict[str, Any]
    encoder_hid_proj: Any
    unet_config: Any
    unet_config_attrs: dict[str, Any]  # diffusers sets encoder_hid_dim_type as an attribute

    @classmethod
    def of(cls, pipe: DiffusionPipeline) -> _Saved:
        unet = pipe.unet
        return cls(
            config=pipe.config,  # its _internal_dict, the very object
            components={name: vars(pipe).get(name, _ABSENT) for name in COMPONENTS},
            processors=dict(unet.attn_processors),
            encoder_hid_proj=unet.encoder_hid_proj,
            unet_config=unet._internal_dict,
            unet_config_attrs=dict(vars(unet._internal_dict)),
        )

    def restore(self, pipe: DiffusionPipeline) -> None:
        unet = pipe.unet
        unet.set_attn_processor(dict(self.processors))
        # Back where it was: a plain None attribute stays out of the module registry.
        unet._modules.pop("encoder_hid_proj", None)
        unet.encoder_hid_proj = self.encoder_hid_proj
        unet._internal_dict = self.unet_config
        attrs = vars(self.unet_config)
        attrs.clear()
        attrs.update(self.unet_config_attrs)
        for name, value in self.components.items():
            if value is _ABSENT:
                vars(pipe).pop(name, None)
            else:
                vars(pipe)[name] = value  # bypasses __setattr__, which would edit the config
        pipe._internal_dict = self.config  # type: ignore[has-type]  # untyped in diffusers
