"""Hypothesis strategies for Runware messages (current task arrays and legacy picfinder objects)
and for raw request bodies.

A generated task is mostly a valid one with a few fields changed: a value of the wrong type,
out of range, huge, negative, NaN, unicode, nested junk, or a field dropped. Fully random
objects rarely get past the first check; mutated valid ones reach the translation, the limits,
the image decoding and the engine. Every number a valid task may carry is small (64x64, one or
two steps, one or two images): the fuzzed jobs that do run take a fraction of a second on a CPU.
Legacy sizes start at 512x512, so a legacy task that would really generate is a rare draw.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st
from PIL import Image

from server.openapi import RUNWARE_TASKS
from tests.fuzz.harness import DEMO_MODEL, tiny_legacy, tiny_picpik, tiny_runware

# --- images -------------------------------------------------------------------------------------


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge image and whose data is a few bytes (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PNG_64 = _png((64, 64))
IMAGE_DATA_URI = "data:image/png;base64," + _b64(PNG_64)
IMAGES = st.sampled_from(
    [
        IMAGE_DATA_URI,
        _b64(PNG_64),
        "data:image/png;base64," + _b64(_png((64, 64), "RGBA")),
        "data:image/png;base64," + _b64(_png((1, 1))),
        "data:image/png;base64," + _b64(_png_claiming(60000, 60000)),
        "data:image/png;base64," + _b64(PNG_64[:40]),  # truncated
        "data:image/jpeg;base64," + _b64(b"\xff\xd8\xff\xe0 not a jpeg"),
        "data:image/png;base64,!!!not base64!!!",
        "data:,",
        "data:image/png;base64,",
        "",
        "not an image",
        "00000000-0000-0000-0000-000000000000",  # an imageUUID nobody uploaded
        "http://127.0.0.1:9/image.png",  # loopback: the outbound policy refuses it
        "ftp://127.0.0.1/image.png",
        "file:///etc/passwd",
    ]
)


# --- values -------------------------------------------------------------------------------------

SURROGATE = "a\ud800b"  # a lone surrogate: legal JSON ("\ud800"), not encodable as UTF-8
HUGE = st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(2**63) - 1, 1e308, -1e308])
NUMBERS = st.integers() | st.floats() | HUGE  # floats() includes NaN and +-Infinity
TEXT = st.text(max_size=40) | st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a red fox",
        "狐狸在雪中",
        "🦊" * 20,
        "\u202e\u0301",
        "\ud800",
        SURROGATE,
        "x" * 3001,
        "-no",
    ]
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JUNK = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)


def number(valid: list[Any], low: float, high: float) -> st.SearchStrategy[Any]:
    """A field's valid values (small ones only) or an invalid one: outside low..high, huge,
    fractional, NaN, a string, junk."""
    return st.one_of(
        st.sampled_from(valid),
        st.integers(max_value=int(low) - 1),
        st.integers(min_value=int(high) + 1),
        st.floats(allow_nan=True) | HUGE,
        st.sampled_from([str(valid[0]), True, None, [valid[0]], {"value": valid[0]}]),
        JUNK,
    )


def choice(valid: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(valid) | TEXT | JUNK


def fresh_uuid() -> str:
    """A taskUUID of its own for each generated task. Not drawn: derandomized hypothesis draws
    the same few UUIDs in every run, and a reused one only ever meets conflictTaskUUID (the
    `taskUUID` mutations still send reused and malformed ones)."""
    return str(uuid.uuid4())


def uuids() -> st.SearchStrategy[Any]:
    return st.uuids().map(str) | st.sampled_from(["", " ", "x" * 129, "not-a-uuid"]) | JUNK


# Values for Runware fields by name (any task type); other fields get JUNK.
# The optional fields of a ControlNet unit, alike in the current and the legacy protocol.
CONTROL_UNIT_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {
    "weight": NUMBERS,
    "startStep": NUMBERS,
    "endStep": NUMBERS,
    "startStepPercentage": NUMBERS,
    "endStepPercentage": NUMBERS,
    "controlMode": choice(["balanced", "prompt", "controlnet"]),
}
RUNWARE_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {
    "taskUUID": uuids(),
    "positivePrompt": TEXT,
    "negativePrompt": TEXT,
    "prompt": TEXT,
    "model": choice(
        [DEMO_MODEL, "runware:100@1", "civitai:1@1", "legacy:13", "legacy-controlnet:x"]
    ),
    "width": number([64, 128], 64, 2048),
    "height": number([64, 128], 64, 2048),
    "steps": number([1, 2], 1, 100),
    "numberResults": number([1, 2], 1, 20),
    "CFGScale": number([0, 7.5, 50], 0, 50),
    "seed": number([0, 42, 2**63 - 1], 0, 2**63 - 1),
    "clipSkip": number([0, 1, 2], 0, 2),
    "strength": number([0, 0.5, 1], 0, 1),
    "maskMargin": number([32, 128], 32, 128),
    "outputQuality": number([20, 99], 20, 99),
    "ttl": number([60], 60, 10**9),
    "promptMaxLength": number([4, 64], 4, 400),
    "promptVersions": number([1, 2], 1, 5),
    "upscaleFactor": number([1, 2], 1, 4),
    "limit": number([1, 100], 1, 100),
    "offset": number([0, 5], 0, 10**6),
    "lowThresholdCanny": number([0, 100, 255], 0, 255),
    "highThresholdCanny": number([0, 200, 255], 0, 255),
    "alphaMattingForegroundThreshold": number([1, 240], 1, 255),
    "alphaMattingBackgroundThreshold": number([1, 10], 1, 255),
    "alphaMattingErodeSize": number([1, 10], 1, 255),
    "scheduler": choice(["Euler", "DPM++ 2M Karras", "UniPC", "euler_a", "LCM"]),
    "outputType": choice(["URL", "base64Data", "dataURI", ["URL", "dataURI"]]),
    "outputFormat": choice(["PNG", "JPG", "webp", "TIFF"]),
    "deliveryMethod": choice(["sync", "async", "ASYNC"]),
    "uploadEndpoint": choice(["http://127.0.0.1:9/upload", "not a url"]),
    "webhookURL": choice(["http://127.0.0.1:9/hook", "gopher://127.0.0.1/"]),
    "promptWeighting": choice(["compel", "sdembeds", "COMPEL"]),
    "promptLanguage": choice(["auto", "en", "de", "zz", "EN"]),
    "preProcessorType": choice(["canny", "depth", "openpose", "tile", "seg", "lineart_anime"]),
    "seedImage": IMAGES,
    "maskImage": IMAGES,
    "inputImage": IMAGES,
    "image": IMAGES,
    "guideImage": IMAGES,
    "inputImages": st.lists(IMAGES, max_size=3) | JUNK,
    "inputs": st.fixed_dictionaries({}, optional={"image": IMAGES}) | JUNK,
    "settings": st.dictionaries(st.sampled_from(["upscaleFactor", "rgba", "x"]), SCALARS) | JUNK,
    "rgba": st.lists(NUMBERS, max_size=5) | JUNK,
    "outpaint": st.dictionaries(
        st.sampled_from(["top", "right", "bottom", "left", "blur"]),
        number([0, 16], 0, 32),
        max_size=5,
    )
    | JUNK,
    "lora": st.lists(
        st.fixed_dictionaries(
            {"model": choice(["civitai:1@1", DEMO_MODEL])}, optional={"weight": NUMBERS}
        ),
        max_size=3,
    )
    | JUNK,
    "controlNet": st.lists(
        st.fixed_dictionaries(
            {"model": choice(["legacy-controlnet:canny", "civitai:1@1"]), "guideImage": IMAGES},
            optional=CONTROL_UNIT_FIELDS,
        ),
        max_size=4,
    )
    | JUNK,
    "ipAdapters": st.lists(st.fixed_dictionaries({"model": TEXT, "guideImage": IMAGES}), max_size=2)
    | JUNK,
    "refiner": st.fixed_dictionaries({"model": TEXT}, optional={"startStep": NUMBERS}) | JUNK,
    "apiKey": TEXT | JUNK,
    "connectionSessionUUID": uuids(),
}

# A valid task of each type (what a mutation starts from); the tasks the transports answer
# themselves (authentication, ping) and real task types easel does not serve come too.
RUNWARE_BASES: Mapping[str, dict[str, Any]] = {
    "imageInference": {
        "positivePrompt": "a red fox in the snow",
        "model": DEMO_MODEL,
        "width": 64,
        "height": 64,
        "steps": 1,
    },
    "imageUpload": {"image": IMAGE_DATA_URI},
    "getResponse": {},
    "imageControlNetPreProcess": {"inputImage": IMAGE_DATA_URI, "preProcessorType": "canny"},
    "controlNetPreprocess": {
        "model": "runware:controlnet-preprocess@canny",
        "inputs": {"image": IMAGE_DATA_URI},
    },
    "imageBackgroundRemoval": {"inputImage": IMAGE_DATA_URI},
    "removeBackground": {"inputs": {"image": IMAGE_DATA_URI}},
    "imageCaption": {"inputImage": IMAGE_DATA_URI},
    "caption": {"inputs": {"image": IMAGE_DATA_URI}},
    "promptEnhance": {"prompt": "a fox", "promptMaxLength": 64},
    "imageUpscale": {"inputImage": IMAGE_DATA_URI, "upscaleFactor": 2},
    "upscale": {"inputs": {"image": IMAGE_DATA_URI}, "settings": {"upscaleFactor": 2}},
    "modelSearch": {"search": "demo"},
    "authentication": {"apiKey": "fuzz"},
    "ping": {"ping": True},
    "videoInference": {"positivePrompt": "a fox"},
}
_MODEL_FIELDS = {
    task_type: sorted(model.model_fields) for task_type, model in RUNWARE_TASKS.items()
}


def _fields_of(task_type: str) -> list[str]:
    return _MODEL_FIELDS.get(task_type) or sorted(RUNWARE_BASES.get(task_type, {})) or ["x"]


@st.composite
def mutated(
    draw: st.DrawFn,
    base: dict[str, Any],
    fields: list[str],
    values: Mapping[str, st.SearchStrategy[Any]],
) -> dict[str, Any]:
    """base with some of `fields` (and maybe an unknown field) set to drawn values, and maybe
    some of its fields dropped."""
    out = dict(base)
    names = st.sampled_from(fields) | st.text(max_size=12)
    for name in draw(st.lists(names, max_size=3, unique=True)):
        out[name] = draw(values.get(name, JUNK))
    for name in draw(st.lists(st.sampled_from(sorted(out) or ["x"]), max_size=2, unique=True)):
        if draw(st.integers(0, 3)) == 0:  # dropping is rarer than changing
            out.pop(name, None)
    return out


@st.composite
def current_task(draw: st.DrawFn) -> Any:
    """One element of a current-protocol message: usually a mutated valid task."""
    kind = draw(st.integers(0, 19))  # hypothesis starts from 0: a plain mutated task
    if kind == 19:
        return draw(JUNK)  # not even an object
    task_type = draw(st.sampled_from(list(RUNWARE_BASES)))
    base = {"taskType": task_type, "taskUUID": fresh_uuid(), **RUNWARE_BASES[task_type]}
    if kind == 18:  # a taskType nobody knows, or not a string
        base["taskType"] = draw(TEXT | JUNK)
    return draw(mutated(base, _fields_of(task_type), RUNWARE_FIELDS))


# An array of tasks; or one task object on its own (REST takes it as an array of one, the
# socket as a legacy message). Sizes a task left out are filled in small (tiny_runware).
CURRENT_ARRAYS = st.lists(current_task(), max_size=4).map(tiny_runware)
CURRENT_MESSAGES = CURRENT_ARRAYS | current_task().map(lambda task: tiny_runware([task])[0])


# --- legacy (picfinder) -------------------------------------------------------------------------

LEGACY_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {
    "taskUUID": uuids(),
    "taskType": number([1, 2, 3, 9, 10], 1, 20),
    "promptText": TEXT,
    "prompt": TEXT,
    # the demo model is rare: a legacy image is 512x512 at least
    "modelId": st.sampled_from(
        [13, 0, -1, 2**40, "13", "civitai:1@1", "runware:100@1", "", " ", "ghost", DEMO_MODEL]
    )
    | JUNK,
    "sizeId": number([1, 10, 12, 19], 0, 21),  # 10, 12, 19: ids no size has
    "steps": number([1], 1, 100),
    "numberResults": number([1], 1, 20),
    "gScale": number([0, 7.5], 0, 50),
    "seed": number([0, 42], 0, 2**63 - 1),
    "styleId": number([1, 3], 1, 200),
    "schedulerId": number([17, 1], 0, 40),
    "clipSkip": number([0, 2], 0, 2),
    "strength": number([0.5], 0, 1),
    "promptLanguageId": number([1, 2], 1, 300),
    "imageInitiatorUUID": IMAGES,
    "imageMaskInitiatorUUID": IMAGES,
    "imageBase64": IMAGES,
    "imageUUID": IMAGES,
    "guideImageUUID": IMAGES,
    "guideImageUrl": IMAGES,
    "preProcessorType": choice(["canny", "depth_midas", "openpose", "seg_ofade20k", "tile"]),
    "width": number([64], 1, 2048),
    "height": number([64], 1, 2048),
    "lowThresholdCanny": number([100], 0, 255),
    "highThresholdCanny": number([200], 0, 255),
    "includeHandsAndFaceOpenPose": st.booleans() | JUNK,
    "usePromptWeighting": st.booleans() | JUNK,
    "checkNsfw": st.booleans() | JUNK,
    "useCache": st.booleans() | JUNK,
    "upscaleFactor": number([2], 0, 4),
    "promptMaxLength": number([64], 0, 400),
    "promptVersions": number([1], 1, 5),
    "uploadEndpoint": choice(["http://127.0.0.1:9/upload"]),
    "apiKey": TEXT | JUNK,
    "connectionSessionUUID": uuids(),
    "lora": st.lists(
        st.fixed_dictionaries({}, optional={"modelId": JUNK | TEXT, "weight": NUMBERS}),
        max_size=3,
    )
    | JUNK,
    "controlNet": st.lists(
        st.fixed_dictionaries(
            {"preprocessor": choice(["canny", "depth", "openpose"])},
            optional={
                "guideImageUUID": IMAGES,
                "guideImageUrl": IMAGES,
                **CONTROL_UNIT_FIELDS,
            },
        ),
        max_size=4,
    )
    | JUNK,
}
LEGACY_BASES: Mapping[str, dict[str, Any]] = {
    "newTask": {
        "taskType": 1,
        "promptText": "a red fox -no blurry",
        "modelId": 13,
        "sizeId": 1,
        "steps": 1,
        "numberResults": 1,
    },
    "newImageUpload": {"imageBase64": IMAGE_DATA_URI},
    "newPreProcessControlNet": {"preProcessorType": "canny", "guideImageUUID": IMAGE_DATA_URI},
    "newReverseImageClip": {"imageUUID": IMAGE_DATA_URI},
    "newPromptEnhance": {"prompt": "a fox"},
    "newUpscaleGan": {"imageUUID": IMAGE_DATA_URI, "upscaleFactor": 2},
    "newRemoveBackground": {"imageUUID": IMAGE_DATA_URI},
    "newConnection": {"apiKey": "fuzz"},
}
_LEGACY_FIELDS = sorted(LEGACY_FIELDS)


@st.composite
def legacy_message(draw: st.DrawFn) -> Any:
    """One legacy frame: a mutated valid message, a ping, several messages in one object, or an
    object that is none."""
    kind = draw(st.integers(0, 19))  # hypothesis starts from 0: a plain mutated message
    if kind == 19:
        return {"ping": draw(JUNK)}
    if kind == 18:
        return draw(st.dictionaries(TEXT, JUNK, max_size=3))
    key = draw(st.sampled_from(list(LEGACY_BASES)))
    base = dict(LEGACY_BASES[key])
    if key != "newConnection":
        base["taskUUID"] = fresh_uuid()
    body = draw(mutated(base, _LEGACY_FIELDS, LEGACY_FIELDS))
    message: dict[str, Any] = {key: body}
    if kind == 17:
        message[draw(st.sampled_from(list(LEGACY_BASES)))] = draw(JUNK)
    if kind == 16:
        message[key] = draw(JUNK)  # the body is not an object
    return tiny_legacy(message)


# --- PICPIK -------------------------------------------------------------------------------------

PNG_B64 = _b64(PNG_64)
MASK_B64 = _b64(_png((64, 64), "L"))
RGBA_B64 = _b64(_png((64, 64), "RGBA"))
PICPIK_ACTIONS = [
    "GenerateImages",
    "ModifyMaskedPixels",
    "ApplyReferenceStyle",
    "GenerateBackgrounds",
    "RemoveBackground",
    "RemoveBackgroundsInBatch",
    "ResizeImage",
    "DescribeImages",
    "ListTasksDetails",
    "TerminateTask",
    "ListRunningTasks",
    "ListModels",
    "ListControlNets",
    "GetCreditBalance",
    "SwitchFace",  # a real action easel does not serve
]
INDEX = number([0, 1], 0, 10**6)
PICPIK_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "Steps": number([6], 6, 100),
        "CFGScale": number([1, 7.5, 30], 1, 30),
        "Sampler": choice(["Euler", "Euler a", "DPM++ 2M Karras", "UniPC", "nope"]),
        "ClipSkip": number([1, 2, 12], 1, 12),
        "LoraWeight": number([-1, 1, 2], -1, 2),
        "Resolution": number([64], 64, 2048),
        "ControlWeight": number([0, 1, 2], 0, 2),
        "StartingStep": number([0, 0.5], 0, 1),
        "EndingStep": number([0.5, 1], 0, 1),
        "ControlMode": choice(["Balanced", "prompt-heavy", "control-heavy"]),
        "ResizeMode": choice(["JustResize", "CropAndResize", "ResizeAndFill"]),
    },
)
PICPIK_MODEL = st.fixed_dictionaries(
    {},
    optional={
        "ModelCode": choice([DEMO_MODEL, "PICPIK General", "ghost", ""]),
        "Name": TEXT,
        "IsOfficial": st.booleans() | JUNK,
        "TriggerWordList": st.lists(TEXT, max_size=2) | JUNK,
        "InferenceParams": PICPIK_PARAMS | JUNK,
    },
)
PICPIK_IMAGES = st.lists(IMAGES | st.sampled_from([PNG_B64, MASK_B64, RGBA_B64]), max_size=3)
PICPIK_FIELDS: Mapping[str, st.SearchStrategy[Any]] = {
    "Action": choice(PICPIK_ACTIONS),
    "PublicKey": TEXT | JUNK,
    "Signature": TEXT | JUNK,
    "request_uuid": TEXT | JUNK,
    "MainModel": PICPIK_MODEL | JUNK,
    "SubModelList": st.lists(PICPIK_MODEL, max_size=3) | JUNK,
    "PositivePrompts": st.lists(TEXT, max_size=3) | JUNK,
    "NegativePrompts": st.lists(TEXT, max_size=3) | JUNK,
    "TranslatePrompts": st.booleans() | JUNK,
    "Seed": number([-1, 0, 2147483647], -1, 2147483647),
    "Width": number([64, 128], 64, 2560),
    "Height": number([64, 128], 64, 2560),
    "BatchSize": number([1, 2], 1, 16),
    "UseMainModelVAE": st.booleans() | JUNK,
    "Tileable": st.booleans() | JUNK,
    "ControlNetList": st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "ImageIndex": INDEX,
                "MaskIndex": INDEX,
                "InvertMask": st.booleans() | JUNK,
                "PreProcessor": st.fixed_dictionaries(
                    {"ModelCode": choice(["canny", "none", "depth_midas", "tile"])},
                    optional={"InferenceParams": PICPIK_PARAMS | JUNK},
                ),
                "ControlModel": st.fixed_dictionaries(
                    {"ModelCode": TEXT}, optional={"InferenceParams": PICPIK_PARAMS}
                ),
            },
        ),
        max_size=4,
    )
    | JUNK,
    "Image2Image": st.fixed_dictionaries(
        {"ImageIndex": INDEX},
        optional={
            "ReferStrength": number([0, 0.5, 1], 0, 1),
            "ResizeMode": choice(["JustResize", "CropAndResize", "ResizeAndFill"]),
        },
    )
    | JUNK,
    "Masked": st.fixed_dictionaries(
        {"ImageIndex": INDEX, "MaskIndex": INDEX},
        optional={
            "ReferStrength": number([0, 1, 2], 0, 2),
            "InvertMask": st.booleans() | JUNK,
            "MaskBlur": number([0, 12, 64], 0, 64),
            "PromptsMoreImportant": st.booleans() | JUNK,
        },
    )
    | JUNK,
    "ImageAndMaskList": PICPIK_IMAGES | JUNK,
    "ImageList": PICPIK_IMAGES | JUNK,
    "RawImageIndex": INDEX,
    "StyleImageIndex": INDEX,
    "StyleReferStrength": number([0, 0.5, 1], 0, 1),
    "TransparentForeground": st.fixed_dictionaries({"ImageIndex": INDEX}) | JUNK,
    "TransparentImageIndexList": st.lists(INDEX, max_size=2) | JUNK,
    "BackgroundImage2Image": st.fixed_dictionaries(
        {"ImageIndex": INDEX},
        optional={"ReferStrength": NUMBERS, "DeepFusion": st.booleans() | JUNK},
    )
    | JUNK,
    "RawImage": IMAGES,
    "RawImageList": st.lists(IMAGES, max_size=3) | JUNK,
    "Box": st.lists(NUMBERS, max_size=5) | JUNK,
    "ErodeSize": number([0, 15, 40], 0, 40),
    "ForegroundThreshold": number([0, 240], 0, 255),
    "BackgroundThreshold": number([15, 255], 0, 255),
    "HairOptimization": choice(["auto", "on", "OFF"]),
    "OnlyMask": st.booleans() | JUNK,
    "TranslateDescription": choice(["en", "de", "zh", "english", "xx1"]),
    "TaskUIDList": st.lists(TEXT, max_size=3) | JUNK,
    "TaskUID": TEXT | JUNK,
}
GENERATION = {
    "MainModel": {"ModelCode": DEMO_MODEL, "InferenceParams": {"Steps": 6}},
    "PositivePrompts": ["a red fox in the snow"],
    "Width": 64,
    "Height": 64,
}
PICPIK_BASES: Mapping[str, dict[str, Any]] = {
    "GenerateImages": GENERATION,
    "ModifyMaskedPixels": {
        **GENERATION,
        "ImageAndMaskList": [PNG_B64, MASK_B64],
        "Masked": {"ImageIndex": 0, "MaskIndex": 1},
    },
    "ApplyReferenceStyle": {
        **GENERATION,
        "ImageList": [PNG_B64, PNG_B64],
        "RawImageIndex": 0,
        "StyleImageIndex": 1,
    },
    "GenerateBackgrounds": {
        **GENERATION,
        "ImageList": [RGBA_B64],
        "TransparentImageIndexList": [0],
    },
    "RemoveBackground": {"RawImage": PNG_B64},
    "RemoveBackgroundsInBatch": {"RawImageList": [PNG_B64]},
    "ResizeImage": {"RawImage": PNG_B64, "Width": 128},
    "DescribeImages": {"ImageList": [PNG_B64]},
    "ListTasksDetails": {"TaskUIDList": ["0" * 32]},
    "TerminateTask": {"TaskUID": "0" * 32},
    **{action: {} for action in PICPIK_ACTIONS[10:]},
}
_PICPIK_FIELDS = sorted(PICPIK_FIELDS)


@st.composite
def picpik_request(draw: st.DrawFn) -> Any:
    """A PICPIK body: usually a mutated valid request of one action (tiny sizes)."""
    if draw(st.integers(0, 19)) == 19:
        return draw(JUNK)
    action = draw(st.sampled_from(list(PICPIK_BASES)))
    body = {"Action": action, **PICPIK_BASES[action]}
    return tiny_picpik(draw(mutated(body, _PICPIK_FIELDS, PICPIK_FIELDS)))


# --- raw frames and bodies ----------------------------------------------------------------------

DEEP = 100_000  # nesting far past Python's recursion limit
RAW_TEXTS = st.sampled_from(
    [
        "",
        " ",
        "not json",
        "[",
        "{",
        "NaN",
        "-Infinity",
        "null",
        "true",
        "0",
        '"a string"',
        "{}",
        "[]",
        "[[]]",
        "[null]",
        '{"": null}',
        "[" * DEEP + "]" * DEEP,
        '{"a":' * DEEP + "0" + "}" * DEEP,
        "[" * DEEP,
        '[{"taskType": "imageInference", "width": ' + "9" * 5000 + "}]",
        '{"newTask": {"taskUUID": "x", "steps": ' + "9" * 5000 + "}}",
        '[{"taskType": "ping"}]' + "garbage",
        "\ufeff[]",
    ]
) | st.text(max_size=60)
RAW_BYTES = st.binary(max_size=60) | st.sampled_from(
    [b"\xff\xfe[\x00]\x00", b'["\xff"]', b"\x80", b'{"Action": "\xc3\x28"}']
)


def to_json(message: Any) -> str:
    """A message as JSON text (NaN and Infinity as JavaScript writes them: not strict JSON)."""
    return json.dumps(message)
