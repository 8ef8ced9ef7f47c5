"""PICPIK wire models: exact field names, ranges and defaults of the published documents.

Unknown fields are kept (clients send fields of newer API versions); null is treated as absent
for optional fields. Every range of shared/seeds/000-003 is enforced here, so a bad value is
answered with a Message naming its field before anything is queued.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

ResizeModeName = Literal["JustResize", "CropAndResize", "ResizeAndFill"]
ControlModeName = Literal["Balanced", "prompt-heavy", "control-heavy"]

SeedValue = Annotated[int, Field(ge=-1, le=2147483647)]
SideValue = Annotated[int, Field(ge=64, le=2560)]
IndexValue = Annotated[int, Field(ge=0)]


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class Params(Wire):
    """Parameters of every parent type; each is only meaningful for its own parent."""

    Steps: Annotated[int, Field(ge=6, le=100)] | None = None
    CFGScale: Annotated[float, Field(ge=1, le=30)] | None = None
    Sampler: str | None = None
    ClipSkip: Annotated[int, Field(ge=1, le=12)] | None = None
    LoraWeight: Annotated[float, Field(ge=-1, le=2)] | None = None
    Resolution: Annotated[int, Field(ge=64, le=2048, multiple_of=64)] | None = None
    ControlWeight: Annotated[float, Field(ge=0, le=2)] | None = None
    StartingStep: Annotated[float, Field(ge=0, le=1)] | None = None
    EndingStep: Annotated[float, Field(ge=0, le=1)] | None = None
    ControlMode: ControlModeName | None = None
    ResizeMode: ResizeModeName | None = None


class ModelRef(Wire):
    Name: str | None = None
    ModelCode: str | None = None
    IsOfficial: bool | None = None
    TriggerWordList: list[str] | None = None
    InferenceParams: Params | None = None


class PreProcessorRef(Wire):
    ModelCode: str | None = None
    InferenceParams: Params | None = None


class ControlModelRef(Wire):
    ModelCode: str | None = None
    InferenceParams: Params | None = None


class ControlNetUnit(Wire):
    ImageIndex: IndexValue | None = None
    MaskIndex: IndexValue | None = None
    InvertMask: bool = False
    PreProcessor: PreProcessorRef | None = None
    ControlModel: ControlModelRef | None = None


class Image2ImageParams(Wire):
    ImageIndex: IndexValue
    ReferStrength: Annotated[float, Field(ge=0, le=1)] = 0.5
    ResizeMode: ResizeModeName = "ResizeAndFill"


class MaskParams(Wire):
    """ModifyMaskedPixels' `Masked`: the raw image, its mask (white = redraw) and how to redraw."""

    ImageIndex: IndexValue
    MaskIndex: IndexValue
    ReferStrength: Annotated[float, Field(ge=0, le=2)] = 1.0
    InvertMask: bool = False
    MaskBlur: Annotated[int, Field(ge=0, le=64)] = 12
    PromptsMoreImportant: bool = False


class BackgroundImage2ImageParams(Wire):
    ImageIndex: IndexValue
    ReferStrength: Annotated[float, Field(ge=0, le=1)] = 0.3
    ResizeMode: ResizeModeName = "ResizeAndFill"
    DeepFusion: bool = False


class TransparentForegroundParams(Wire):
    ImageIndex: IndexValue
    ResizeMode: ResizeModeName = "ResizeAndFill"


class Envelope(Wire):
    """The fields every request carries."""

    Action: str
    PublicKey: str | None = None
    Signature: str | None = None
    request_uuid: str | None = None


class GenerationRequest(Envelope):
    """Fields shared by the generation actions."""

    MainModel: ModelRef | None = None
    SubModelList: list[ModelRef] | None = None
    PositivePrompts: list[str] | None = None
    NegativePrompts: list[str] | None = None
    TranslatePrompts: bool = True
    Seed: SeedValue = -1
    Width: SideValue | None = None
    Height: SideValue | None = None
    BatchSize: Annotated[int, Field(ge=1, le=16)] = 1
    UseMainModelVAE: bool = False

    @field_validator("Seed", "BatchSize", "TranslatePrompts", "UseMainModelVAE", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        if value is None:
            return cls.model_fields[info.field_name].default
        return value


class GenerateImagesRequest(GenerationRequest):
    ControlNetList: Annotated[list[ControlNetUnit], Field(max_length=3)] | None = None
    Image2Image: Image2ImageParams | None = None
    Tileable: bool | None = None
    ImageAndMaskList: list[str] | None = None


class ModifyMaskedPixelsRequest(GenerationRequest):
    Masked: MaskParams
    ControlNetList: Annotated[list[ControlNetUnit], Field(max_length=3)] | None = None
    Image2Image: Image2ImageParams | None = None
    ImageAndMaskList: list[str] | None = None


class ApplyReferenceStyleRequest(GenerationRequest):
    RawImageIndex: IndexValue
    StyleImageIndex: IndexValue
    StyleReferStrength: Annotated[float, Field(ge=0, le=1)] = 0.5
    ImageList: list[str] | None = None

    @field_validator("StyleReferStrength", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value


class GenerateBackgroundsRequest(GenerationRequest):
    TransparentForeground: TransparentForegroundParams | None = None
    # The published request example names the foreground this way instead: the first index.
    TransparentImageIndexList: Annotated[list[IndexValue], Field(max_length=1)] | None = None
    BackgroundImage2Image: BackgroundImage2ImageParams | None = None
    ImageList: list[str] | None = None


# --- image utilities (their request fields are not published: easel's choice, documented) ---


class BoxParams(Wire):
    """A region of the raw image, in pixels; also accepted as [X, Y, Width, Height]."""

    X: Annotated[int, Field(ge=0)]
    Y: Annotated[int, Field(ge=0)]
    Width: Annotated[int, Field(ge=1)]
    Height: Annotated[int, Field(ge=1)]


def _box_from_list(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 4:
        return dict(zip(("X", "Y", "Width", "Height"), value, strict=True))
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class BackgroundRemovalParams(Envelope):
    """What RemoveBackground and RemoveBackgroundsInBatch share."""

    Box: Annotated[BoxParams, BeforeValidator(_box_from_list)] | None = None
    ErodeSize: Annotated[int, Field(ge=0, le=40)] = 15
    ForegroundThreshold: Annotated[int, Field(ge=0, le=255)] = 240
    BackgroundThreshold: Annotated[int, Field(ge=0, le=255)] = 15
    HairOptimization: Annotated[Literal["auto", "on", "off"], BeforeValidator(_lower)] = "auto"
    OnlyMask: bool = False

    @field_validator(
        "ErodeSize",
        "ForegroundThreshold",
        "BackgroundThreshold",
        "HairOptimization",
        "OnlyMask",
        mode="before",
    )
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value


class RemoveBackgroundRequest(BackgroundRemovalParams):
    RawImage: str = Field(min_length=1)


class RemoveBackgroundsInBatchRequest(BackgroundRemovalParams):
    RawImageList: Annotated[list[str], Field(min_length=1, max_length=16)]


class ResizeImageRequest(Envelope):
    RawImage: str = Field(min_length=1)
    Width: Annotated[int, Field(ge=64, le=4096)] | None = None
    Height: Annotated[int, Field(ge=64, le=4096)] | None = None


class DescribeImagesRequest(Envelope):
    ImageList: Annotated[list[str], Field(min_length=1, max_length=16)]
    TranslateDescription: str | None = None  # a language code; None / "en": English


class ListTasksDetailsRequest(Envelope):
    TaskUIDList: Annotated[list[str], Field(min_length=1, max_length=100)]


class TerminateTaskRequest(Envelope):
    TaskUID: str


# --- responses ---


TaskStatusName = Literal["Queuing", "Running", "Finished", "Error"]


class TaskDetail(BaseModel):
    TaskUID: str
    Action: str
    Status: TaskStatusName
    ImgList: list[str]
    Seed: int
    TxtList: list[str]
    ConsumeApiPoint: int
    ErrorCode: int
    ErrorMassage: str  # sic: the documented field name
    Progress: float  # extension: 0..1
    # extension: the prompts as translated for the job (TranslatePrompts), else null:
    # {"Language": the source language, "PositivePrompt": ..., "NegativePrompt": ...}
    TranslatedPrompts: dict[str, str] | None = None


class ModelEntry(BaseModel):
    Name: str
    ModelCode: str
    IsOfficial: bool
    TriggerWordList: list[str]
    InferenceParams: dict[str, Any]
    Description: str = ""  # extension: what the model is (the demo says it draws noise)
