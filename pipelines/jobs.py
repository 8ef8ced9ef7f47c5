"""The engine's contract: protocol-neutral jobs, their progress and results, and model info.

Front ends translate their wire requests into these dataclasses and never see diffusers; the
engine never sees a wire field name. Nothing here imports torch: jobs can be built, queued,
batched and tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from PIL.Image import Image


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"  # redraw the masked part of init_image (outpainting included)
    BACKGROUND = "background"  # draw a background behind init_image's opaque (RGBA) foreground


class ResizeMode(StrEnum):
    """How an input image is fitted to the requested size."""

    JUST_RESIZE = "just_resize"  # stretch to the target size
    CROP_AND_RESIZE = "crop_and_resize"  # cover the target, crop the overflow (centred)
    RESIZE_AND_FILL = "resize_and_fill"  # fit inside the target, fill the rest from the edges


class ControlMode(StrEnum):
    """How a ControlNet unit's guidance is balanced against the prompt (A1111's three modes)."""

    BALANCED = "balanced"
    PROMPT = "prompt"  # "my prompt is more important": residuals softened layer by layer
    CONTROL = "control"  # "ControlNet is more important": control on the conditional pass only


class SubModelKind(StrEnum):
    LORA = "lora"
    EMBEDDING = "embedding"
    HYPERNETWORK = "hypernetwork"


@dataclass(frozen=True, kw_only=True)
class ControlUnit:
    """One ControlNet unit: a control model guided by an image (preprocessed first, if asked)."""

    model: str  # a catalogue code of kind "controlnet"
    image: Image = field(repr=False)
    # Where the control applies (white); None = everywhere. Already inverted if asked.
    mask: Image | None = field(default=None, repr=False)
    preprocessor: str | None = None  # a code of pipelines.preprocessors; None = image is a map
    preprocessor_options: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({})
    )  # processor-specific, neutral names (e.g. "value_threshold" for MLSD)
    resolution: int = 512  # the preprocessor's working resolution
    weight: float = 1.0
    start: float = 0.0  # fraction of the steps at which the unit starts to act
    end: float = 1.0  # ... and stops
    mode: ControlMode = ControlMode.BALANCED
    resize_mode: ResizeMode = ResizeMode.RESIZE_AND_FILL


@dataclass(frozen=True, kw_only=True)
class SubModel:
    """A LoRA, textual-inversion embedding or hypernetwork applied to one job only."""

    kind: SubModelKind
    model: str  # a catalogue code of that kind
    weight: float = 1.0  # LoRA / hypernetwork strength; embeddings ignore it


@dataclass(frozen=True, kw_only=True)
class StyleReference:
    """An image whose style is injected through an IP-Adapter."""

    image: Image = field(repr=False)
    strength: float = 0.5  # the adapter scale, 0..1
    adapter: str | None = None  # a catalogue code of kind "ip_adapter"; None = the one that fits


class PromptWeighting(StrEnum):
    """How weights written into a prompt are read (Runware's promptWeighting)."""

    COMPEL = "compel"  # compel's syntax: word+, (words)1.3, word--, .blend(), .and()
    SDEMBEDS = "sdembeds"  # A1111's syntax: (word:1.3), (word), [word]; long prompts chunked


@dataclass(frozen=True, kw_only=True)
class Refiner:
    """An SDXL refiner that takes over the denoising for the last steps."""

    model: str  # a checkpoint code (an SDXL refiner, or any SDXL checkpoint)
    start: float  # fraction of the steps (0 < start < 1) at which the refiner takes over


@dataclass(frozen=True, kw_only=True)
class Padding:
    """Pixels added on each side of an image (outpainting)."""

    top: int = 0
    right: int = 0
    bottom: int = 0
    left: int = 0


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
    # img2img: the image to start from. inpaint: the raw image. background: the RGBA foreground.
    init_image: Image | None = field(default=None, repr=False)
    strength: float = 0.75  # denoising strength: 0 keeps the image, 1 ignores it
    resize_mode: ResizeMode = ResizeMode.RESIZE_AND_FILL
    # inpaint: white = redraw (already inverted if the client asked), any size (fitted like the
    # raw image). The raw image is scaled to fit inside width x height; an uncovered border is
    # outpainted.
    mask: Image | None = field(default=None, repr=False)
    mask_blur: int = 0  # radius of the Gaussian blur on the mask edge, in pixels
    # inpaint / background: what the redrawn area starts from instead of the raw image (an extra
    # reference, fitted with resize_mode); None = the raw image / plain noise.
    fill_image: Image | None = field(default=None, repr=False)
    fill_resize_mode: ResizeMode | None = None  # how fill_image is fitted; None = resize_mode
    deep_fusion: bool = False  # background: a harmonisation pass over the composite
    controls: tuple[ControlUnit, ...] = ()
    style: StyleReference | None = None
    sub_models: tuple[SubModel, ...] = ()
    tileable: bool = False
    use_model_vae: bool = True
    vae: str | None = None  # a catalogue code of kind "vae" to decode with; wins over use_model_vae
    refiner: Refiner | None = None  # SDXL txt2img / img2img only
    prompt_weighting: PromptWeighting | None = None  # None: the prompt is plain text
    # inpaint: redraw only the mask's bounding box grown by this many pixels, zoomed to
    # width x height and pasted back (A1111's "inpaint only masked"); None = the whole canvas.
    mask_margin: int | None = None
    # inpaint: the raw image is scaled to (width - left - right) x (height - top - bottom) and
    # placed at (left, top); the border around it is outpainted (added to the mask). None = the
    # centred fit described at `mask`.
    outpaint: Padding | None = None
    # Translate a prompt that is not English into English before generating (a translation
    # model on the worker); prompt_language: the language the client said it is in (ISO
    # 639-1), None = detect it.
    translate_prompts: bool = False
    prompt_language: str | None = None
    check_nsfw: bool = False  # run the safety checker over the images (JobResult.nsfw)
    owner: str = ""  # who submitted it (API key id): fairness and quotas key on it
    priority: int = 0  # higher runs first

    @property
    def num_images(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True, kw_only=True)
class PreprocessJob:
    """Make one ControlNet control map from an image (a standalone utility task)."""

    image: Image = field(repr=False)
    preprocessor: str  # a code of pipelines.preprocessors
    options: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    resolution: int = 512  # the preprocessor's working resolution
    width: int | None = None  # the map's size; None: the input image's
    height: int | None = None
    owner: str = ""
    priority: int = 0

    @property
    def seeds(self) -> tuple[int, ...]:
        return (0,)  # seeded preprocessors (shuffle) draw from seed 0: the same map every time

    @property
    def num_images(self) -> int:
        return 1

    @property
    def steps(self) -> int:
        return 1


@dataclass(frozen=True, kw_only=True)
class Box:
    """A rectangle of an image, in pixels: its top-left corner and its size."""

    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True, kw_only=True)
class BackgroundRemovalJob:
    """Cut the subject out of each image (a segmentation model's mask as the alpha channel).

    The mask is refined by alpha matting when asked: pixels the model is sure of (above
    foreground_threshold / below background_threshold, eroded by erode_size) stay fixed and the
    band between them is solved from the image's colours, which keeps hair and fur.
    """

    images: tuple[Image, ...] = field(repr=False)  # one result per image
    model: str | None = None  # an installed background-removal model's name; None: the default
    box: Box | None = None  # only this region is segmented, and the result is cropped to it
    only_mask: bool = False  # the result is the mask (mode L), not the cut-out
    alpha_matting: bool | None = False  # None: when the mask's edge is soft (hair, fur)
    foreground_threshold: int = 240  # 0..255: mask values above are certainly foreground
    background_threshold: int = 10  # 0..255: mask values below are certainly background
    erode_size: int = 10  # pixels the certain regions shrink by before matting
    post_process_mask: bool = False  # smooth the mask and drop its speckles (rembg's)
    background: tuple[int, int, int, int] | None = None  # RGBA behind the subject; None: clear
    owner: str = ""
    priority: int = 0

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(0 for _ in self.images)

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def steps(self) -> int:
        return 1


@dataclass(frozen=True, kw_only=True)
class CaptionJob:
    """Describe each image in a sentence (an image-to-text model); texts, one per image."""

    images: tuple[Image, ...] = field(repr=False)
    model: str | None = None  # an installed captioning model's name; None: the default
    prompt: str = ""  # text the caption must start from (conditional captioning)
    language: str | None = None  # translate the captions into this language (ISO 639-1)
    max_tokens: int = 60
    owner: str = ""
    priority: int = 0

    @property
    def seeds(self) -> tuple[int, ...]:
        return ()

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def steps(self) -> int:
        return 1


@dataclass(frozen=True, kw_only=True)
class PromptEnhanceJob:
    """Expand a short prompt into `versions` distinct, richer ones (a small causal LM)."""

    prompt: str
    versions: int = 1
    max_length: int = 380  # characters per enhanced prompt
    seed: int = 0  # sampling seed: the same seed gives the same versions
    model: str | None = None  # an installed prompt-enhancing model's name; None: the default
    owner: str = ""
    priority: int = 0

    @property
    def seeds(self) -> tuple[int, ...]:
        return (self.seed,)

    @property
    def num_images(self) -> int:
        return 1

    @property
    def steps(self) -> int:
        return self.versions


@dataclass(frozen=True, kw_only=True)
class UpscaleJob:
    """Enlarge an image with a super-resolution model (ESRGAN class), to a factor or a size."""

    image: Image = field(repr=False)
    factor: float = 2.0  # output = input x factor, when width / height are not given
    width: int | None = None  # an exact output size (PICPIK ResizeImage); smaller: downscaled
    height: int | None = None
    model: str | None = None  # an installed upscaler's name; None: the default
    owner: str = ""
    priority: int = 0

    @property
    def seeds(self) -> tuple[int, ...]:
        return (0,)

    @property
    def num_images(self) -> int:
        return 1

    @property
    def steps(self) -> int:
        return 1


# Jobs that run a utility model instead of a checkpoint (pipelines.utilities serves them).
UtilityJob = BackgroundRemovalJob | CaptionJob | PromptEnhanceJob | UpscaleJob

Job = (
    GenerationJob
    | PreprocessJob
    | BackgroundRemovalJob
    | CaptionJob
    | PromptEnhanceJob
    | UpscaleJob
)


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
class Translation:
    """A prompt the engine translated to English before generating (what the job used)."""

    source_language: str  # ISO 639-1, detected or as the client said
    prompt: str
    negative_prompt: str


@dataclass(frozen=True)
class JobResult:
    images: tuple[Image, ...] = field(repr=False)
    seeds: tuple[int, ...]
    texts: tuple[str, ...] = ()  # text results: captions, enhanced prompts
    nsfw: tuple[bool, ...] = ()  # per image, when the job asked for an NSFW check
    translation: Translation | None = None  # the prompt as translated for the job


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
class PreprocessorInfo:
    """A ControlNet preprocessor the engine knows, and whether it can run here."""

    code: str  # e.g. "canny", "mlsd"
    available: bool  # False: its weights are not installed
    hint: str = ""  # when unavailable: which file to install where
    options: tuple[str, ...] = ()  # option names it takes (ControlUnit.preprocessor_options)
    defaults: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({})
    )  # per option


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
    public_ids: tuple[str, ...] = ()  # ids the manifest binds to it (Runware AIR ids...)
