"""The engine's contract: protocol-neutral jobs, their progress and results, and model info.

Front ends translate their wire requests into these dataclasses and never see diffusers; the
engine never sees a wire field name. Nothing here imports torch: jobs can be built, queued,
batched and tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from PIL.Image import Image


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"


class ResizeMode(StrEnum):
    """How an input image is fitted to the requested size."""

    JUST_RESIZE = "just_resize"  # stretch to the target size
    CROP_AND_RESIZE = "crop_and_resize"  # cover the target, crop the overflow (centred)
    RESIZE_AND_FILL = "resize_and_fill"  # fit inside the target, fill the rest from the edges


@dataclass(frozen=True, kw_only=True)
class GenerationJob:
    """One request's worth of images: len(seeds) images, image i from seeds[i]."""

    kind: JobKind
    model: str  # a catalogue identifier: model code, name or alias; "" = default checkpoint
    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]
    sampler: str | None = None  # a name of pipelines.samplers.SAMPLERS; None = model default
    clip_skip: int = 1  # A1111 convention: 1 = last CLIP layer, 2 = penultimate...
    init_image: Image | None = field(default=None, repr=False)
    strength: float = 0.75  # img2img denoising strength: 0 keeps the image, 1 ignores it
    resize_mode: ResizeMode = ResizeMode.RESIZE_AND_FILL
    use_model_vae: bool = True
    owner: str = ""  # who submitted it (API key id): fairness and quotas key on it
    priority: int = 0  # higher runs first

    @property
    def num_images(self) -> int:
        return len(self.seeds)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class JobProgress:
    state: JobState
    step: int = 0
    total_steps: int = 0

    @property
    def fraction(self) -> float:
        if self.state is JobState.FINISHED:
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0


@dataclass(frozen=True)
class JobResult:
    images: tuple[Image, ...] = field(repr=False)
    seeds: tuple[int, ...]


class ErrorCode(StrEnum):
    """Why a job did not produce images; front ends map these to their own codes."""

    BUSY = "busy"  # the queue is full: nothing was accepted
    UNKNOWN_MODEL = "unknown_model"
    INVALID_INPUT = "invalid_input"  # the request cannot run as given (found at run time)
    MODEL_UNAVAILABLE = "model_unavailable"  # the model's weights failed to load
    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out_of_memory"
    INTERRUPTED = "interrupted"  # the server stopped before the job finished
    INTERNAL = "internal"


class JobError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ModelInfo:
    """What front ends may know about an installed model (for listings and validation)."""

    code: str
    name: str
    kind: str  # "checkpoint", "lora", ...
    architecture: str  # "sd1", "sdxl", ...
    description: str = ""
    is_demo: bool = False
    trigger_words: tuple[str, ...] = ()
    default_steps: int | None = None
    default_guidance_scale: float | None = None
    default_sampler: str | None = None
    default_clip_skip: int | None = None
