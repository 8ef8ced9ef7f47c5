"""Tileable (seamless) images: circular padding in the UNet and the VAE for one job.

The standard "seamless" trick: every padded torch.nn.Conv2d of the checkpoint's UNet and VAE
(and of the server VAE the job decodes with, ctx.vae) pads circularly instead of with zeros, so
the image wraps around: its left edge continues its right edge, its top its bottom. ControlNet
models are not patched (their residuals follow the control image, which need not tile). The
padding modes are restored exactly on exit, also when the job fails or is cancelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from torch import nn

from pipelines.jobs import GenerationJob
from pipelines.runners.common import RunContext

CIRCULAR: Final = "circular"


def _padded(conv: nn.Conv2d) -> bool:
    """Whether the convolution pads at all (1x1 projections do not: nothing to wrap)."""
    if isinstance(conv.padding, str):
        return conv.padding == "same"
    return any(p > 0 for p in conv.padding)


def padded_convolutions(models: Iterable[Any]) -> list[nn.Conv2d]:
    """The padded Conv2d layers of the given models, each once."""
    seen: dict[int, nn.Conv2d] = {}
    for model in models:
        if model is None:
            continue
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and _padded(module):
                seen.setdefault(id(module), module)
    return list(seen.values())


@contextmanager
def circular_padding(models: Iterable[Any]) -> Iterator[None]:
    """Circular padding in every padded Conv2d of models while inside; the old modes after."""
    saved = [(conv, conv.padding_mode) for conv in padded_convolutions(models)]
    try:
        for conv, _ in saved:
            conv.padding_mode = CIRCULAR
        yield
    finally:
        for conv, mode in saved:
            conv.padding_mode = mode


@contextmanager
def applied(pipe: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> Iterator[None]:
    if not job.tileable:
        yield
        return
    models = (getattr(pipe, "unet", None), getattr(pipe, "vae", None), ctx.vae)
    with circular_padding(models):
        yield
