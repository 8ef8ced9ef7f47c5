"""Runware wire models: the task objects clients send, with Runware's exact field names.

SDKs send unset optional fields as explicit null, so every optional field treats null as absent.
Unknown fields are ignored (SDK versions add fields easel has no use for, such as
`includeCost`-era extras); anything easel cannot honour is refused by name elsewhere.
Ranges follow Runware's documentation except where easel allows more (small sizes, for tests
and tiny models).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from server.outbound import OutboundError, parse_url
from server.runware.errors import Code, RunwareError
from server.validation import error_location

W = TypeVar("W", bound=BaseModel)

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 64
MAX_RESULTS = 20
MAX_STEPS = 100
MAX_SEED = 2**63 - 1


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _first_of_list(value: Any) -> Any:
    """A text sent as a one-element list (runware 0.5 types caption prompts as lists)."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
OutputType = Literal["URL", "base64Data", "dataURI"]
OutputFormat = Annotated[Literal["JPG", "JPEG", "PNG", "WEBP"], BeforeValidator(_upper)]


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """SDKs send unset fields as null (runware 0.5 even inside controlNet entries)."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Task(Wire):
    """What every task object has."""

    taskType: str
    taskUUID: str = Field(min_length=1, max_length=128)


class OutputOptions(Wire):
    outputType: Annotated[list[OutputType], BeforeValidator(_as_list)] | None = None
    outputFormat: OutputFormat | None = None
    outputQuality: Annotated[int, Field(ge=20, le=99)] | None = None
    includeCost: bool | None = None


class LoraItem(Wire):
    model: str = Field(min_length=1)
    weight: Annotated[float, Field(ge=-4.0, le=4.0)] = 1.0


class EmbeddingItem(Wire):
    model: str = Field(min_length=1)
    weight: Annotated[float, Field(ge=-4.0, le=4.0)] = 1.0


class ControlNetItem(Wire):
    model: str = Field(min_length=1)
    guideImage: str = Field(min_length=1)
    weight: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    startStep: Annotated[int, Field(ge=0)] | None = None
    endStep: Annotated[int, Field(ge=0)] | None = None
    startStepPercentage: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    endStepPercentage: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    controlMode: Annotated[Literal["balanced", "prompt", "controlnet"], BeforeValidator(_lower)] = (
        "balanced"
    )


class IpAdapterItem(Wire):
    model: str = Field(min_length=1)
    guideImage: str = Field(min_length=1)
    weight: Fraction = 1.0


class RefinerItem(Wire):
    model: str = Field(min_length=1)
    startStep: Annotated[int, Field(ge=1)] | None = None
    startStepPercentage: Annotated[float, Field(gt=0.0, lt=100.0)] | None = None


class OutpaintItem(Wire):
    top: Annotated[int, Field(ge=0)] = 0
    right: Annotated[int, Field(ge=0)] = 0
    bottom: Annotated[int, Field(ge=0)] = 0
    left: Annotated[int, Field(ge=0)] = 0
    blur: Annotated[int, Field(ge=0, le=32)] = 0


def _usable_url(value: str) -> str:
    """A delivery URL that could be used at all (http(s), a host, a valid port): checked as the
    task arrives, so a mistyped one fails before the images are made. Its addresses are checked
    when it is used (server.outbound), as every hop's are."""
    try:
        parse_url(value)
    except OutboundError as error:
        raise PydanticCustomError("url", "{reason}", {"reason": str(error)}) from None
    return value


DeliveryURL = Annotated[str, AfterValidator(_usable_url)]


class Delivery(Wire):
    """Where a finished task's results go besides the reply: PUT to uploadEndpoint, POST to
    webhookURL; deliveryMethod async answers at once and the client polls getResponse."""

    uploadEndpoint: DeliveryURL | None = None
    deliveryMethod: Annotated[Literal["sync", "async"], BeforeValidator(_lower)] | None = None
    webhookURL: DeliveryURL | None = None


class ImageInference(Task, OutputOptions, Delivery):
    # Prompt lengths are the server's limit (Limits.max_prompt_chars), checked after parsing.
    positivePrompt: str = Field(min_length=1)
    negativePrompt: str | None = None
    model: str = Field(min_length=1)
    width: Side | None = None  # None: the seed image's size, else 512
    height: Side | None = None
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    CFGScale: Annotated[float, Field(ge=0.0, le=50.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    numberResults: Annotated[int, Field(ge=1, le=MAX_RESULTS)] = 1
    scheduler: str | None = None
    clipSkip: Annotated[int, Field(ge=0, le=2)] | None = None
    seedImage: str | None = None
    strength: Fraction | None = None
    maskImage: str | None = None
    maskMargin: Annotated[int, Field(ge=32, le=128)] | None = None
    outpaint: OutpaintItem | None = None
    lora: list[LoraItem] | None = None
    embeddings: list[EmbeddingItem] | None = None
    controlNet: Annotated[list[ControlNetItem], Field(max_length=3)] | None = None
    ipAdapters: Annotated[list[IpAdapterItem], Field(max_length=1)] | None = None
    vae: str | None = None
    refiner: RefinerItem | None = None
    promptWeighting: Annotated[Literal["compel", "sdembeds"], BeforeValidator(_lower)] | None = None
    checkNSFW: bool | None = None
    # easel extension (the legacy protocol's promptLanguageId): translate the prompts from this
    # language (ISO 639-1, or "auto" to detect it) to English before generating.
    promptLanguage: (
        Annotated[str, Field(pattern=r"^(auto|[a-z]{2})$"), BeforeValidator(_lower)] | None
    ) = None
    ttl: Annotated[int, Field(ge=60)] | None = None


class ImageUpload(Task):
    image: str = Field(min_length=1)


class GetResponse(Task):
    pass


class ControlNetPreProcess(Task, OutputOptions):
    inputImage: str = Field(min_length=1)
    preProcessorType: Annotated[str, BeforeValidator(_lower)]
    width: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)] | None = None
    height: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)] | None = None
    lowThresholdCanny: Annotated[int, Field(ge=0, le=255)] | None = None
    highThresholdCanny: Annotated[int, Field(ge=0, le=255)] | None = None
    includeHandsAndFaceOpenPose: bool | None = None


class BackgroundRemoval(Task, OutputOptions, Delivery):
    inputImage: str = Field(min_length=1)
    model: str | int | None = None
    rgba: (
        Annotated[list[Annotated[float, Field(ge=0, le=255)]], Field(min_length=4, max_length=4)]
        | None
    ) = None
    postProcessMask: bool = False
    returnOnlyMask: bool = False
    alphaMatting: bool = False
    alphaMattingForegroundThreshold: Annotated[int, Field(ge=1, le=255)] = 240
    alphaMattingBackgroundThreshold: Annotated[int, Field(ge=1, le=255)] = 10
    alphaMattingErodeSize: Annotated[int, Field(ge=1, le=255)] = 10


class Caption(Task, Delivery):
    inputImage: str | None = Field(default=None, min_length=1)
    inputImages: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=16)]
        | None
    ) = None
    model: str | None = None
    prompt: Annotated[str, BeforeValidator(_first_of_list)] | None = None
    includeCost: bool | None = None


class PromptEnhance(Task, Delivery):
    prompt: str = Field(min_length=1)  # at most Limits.max_prompt_chars, checked after parsing
    promptMaxLength: Annotated[int, Field(ge=4, le=400)] = 380
    promptVersions: Annotated[int, Field(ge=1, le=5)] = 1
    includeCost: bool | None = None


class Upscale(Task, OutputOptions, Delivery):
    inputImage: str = Field(min_length=1)
    upscaleFactor: Annotated[float, Field(ge=1, le=4)] = 2
    model: str | None = None


class ModelSearch(Task):
    search: str | None = None
    tags: list[str] | None = None
    category: str | None = None
    type: str | None = None
    architecture: str | None = None
    visibility: str | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    offset: Annotated[int, Field(ge=0)] = 0


def parse(model: type[W], task: dict[str, Any]) -> W:
    """The task as its wire model; RunwareError naming the first bad field otherwise."""
    try:
        return model.model_validate(task)
    except ValidationError as error:
        first = error.errors()[0]
        where = error_location(first["loc"]) or None
        if first["type"] == "missing":
            raise RunwareError(Code.MISSING_PARAMETER, f"missing {where}", where) from None
        raise RunwareError(
            Code.INVALID_PARAMETER, f"invalid {where or 'task'}: {first['msg']}", where
        ) from None
