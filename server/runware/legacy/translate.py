"""Legacy (picfinder) messages <-> current-protocol tasks and results: pure functions, no I/O.

A legacy client sends one plain object per frame ({"newTask": {...}}, {"ping": true}...). The
WebSocket handler calls `parse_message`, which gives a `NewConnection`, a `Ping` or a
`LegacyTask` whose `task` is an ordinary current-protocol task dict (imageInference,
imageUpload, imageControlNetPreProcess, imageCaption, promptEnhance, imageUpscale,
imageBackgroundRemoval). The handler runs that task like any other and hands the result items
it produced to `legacy_reply`, which builds the legacy frame (newImages, newUploadedImageUUID,
...). Failures are `LegacyError`s; `error_frame` and `error_frame_from_current` make the legacy
error frame, `{"error": true, "errorId": N, "errorMessage": ...}` (plus taskUUID when known).

Conventions: a field sent as null is absent, and so is an empty string in an optional text field
(the legacy Go SDK sends "" for what it does not set). Unknown fields are ignored. useCache,
saveToCache and offset are accepted and ignored: easel keeps no cache of other users' images and
always generates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any

from server.runware.legacy.tables import (
    CONTROLNET_TYPES,
    DEFAULT_SIZE_ID,
    DEFAULT_TASK_TYPE,
    INFERENCE_TASK_TYPES,
    LANGUAGE_CODES,
    LANGUAGES,
    LEGACY_CONTROLNET_PREFIX,
    LEGACY_MODEL_IDS,
    OPENPOSE_WITH_HANDS_AND_FACE,
    PREPROCESSORS,
    PROMPT_SLOT,
    SCHEDULERS,
    SIZES,
    STYLES,
    TASK_TYPE_MESSAGES,
    TASK_TYPES,
    Need,
    Style,
)

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5  # the legacy default (the current protocol's is 7): always sent
DEFAULT_STRENGTH = 0.8
DEFAULT_PROMPT_MAX_LENGTH = 380  # the legacy JS SDK's default
DEFAULT_UPSCALE_FACTOR = 2
MAX_SEED = 2**63 - 1
CONTROL_MODES = frozenset({"balanced", "prompt", "controlnet"})
AUTO_LANGUAGE = "auto"  # imageInference's promptLanguage: detect the prompt's language
OUTPUT_TYPE = "URL"  # legacy replies carry image URLs (imageSrc / newImageSrc)
# Options each easel preprocessor takes from newPreProcessControlNet. The SDKs send the canny
# thresholds with every type (the Go SDK defaults them to 100 / 200), so others drop them.
PREPROCESS_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"canny": ("lowThresholdCanny", "highThresholdCanny")}
)
_NO_TOKEN = re.compile(r"(?:^|\s)-no(?:\s|$)")


# --- errors -------------------------------------------------------------------------------------


class ErrorId(IntEnum):
    """The errorId of a legacy error frame. Only 19 is Runware's (the legacy SDKs test for it);
    the rest are easel's own, one per cause, and must stay stable."""

    INTERNAL_ERROR = 1
    INVALID_MESSAGE = 2  # not a JSON object, or no known message in it
    INVALID_PARAMETER = 3  # a field is missing or has a bad value: errorMessage names it
    UNSUPPORTED = 4  # a documented value easel cannot serve (a scheduler, a preprocessor...)
    UNKNOWN_MODEL = 5
    MODEL_UNAVAILABLE = 6  # installed, but its weights cannot be loaded
    SERVER_BUSY = 7  # the queue is full: retry later
    TASK_FAILED = 8  # accepted, then failed (out of memory, cancelled, server stopped...)
    INVALID_IMAGE = 9  # an image input that cannot be found, fetched or decoded
    NOT_AUTHENTICATED = 18  # a task before newConnection
    INVALID_API_KEY = 19


# Current-protocol error codes (server/runware/errors.py) -> legacy errorIds; any other code
# becomes TASK_FAILED.
CURRENT_ERROR_IDS: Mapping[str, ErrorId] = MappingProxyType(
    {
        "invalidApiKey": ErrorId.INVALID_API_KEY,
        "missingApiKey": ErrorId.NOT_AUTHENTICATED,
        "conflictTaskUUID": ErrorId.INVALID_PARAMETER,
        "invalidMessage": ErrorId.INVALID_MESSAGE,
        "unknownTaskType": ErrorId.INVALID_MESSAGE,
        "unsupportedTaskType": ErrorId.UNSUPPORTED,
        "missingParameter": ErrorId.INVALID_PARAMETER,
        "invalidParameter": ErrorId.INVALID_PARAMETER,
        "invalidImage": ErrorId.INVALID_IMAGE,
        "unknownModel": ErrorId.UNKNOWN_MODEL,
        "modelUnavailable": ErrorId.MODEL_UNAVAILABLE,
        "taskNotFound": ErrorId.INVALID_PARAMETER,
        "serverBusy": ErrorId.SERVER_BUSY,
        "outOfMemory": ErrorId.TASK_FAILED,
        "cancelled": ErrorId.TASK_FAILED,
        "interrupted": ErrorId.TASK_FAILED,
        "deliveryFailed": ErrorId.TASK_FAILED,
        "internalError": ErrorId.INTERNAL_ERROR,
        "payloadTooLarge": ErrorId.INVALID_MESSAGE,
        "tooManyMessages": ErrorId.SERVER_BUSY,
        "rateLimitExceeded": ErrorId.SERVER_BUSY,
        "concurrentTaskLimitExceeded": ErrorId.SERVER_BUSY,
    }
)
INVALID_API_KEY_MESSAGE = "Invalid api key"  # the protocol's own wording


class LegacyError(Exception):
    """A legacy message that cannot be served; answered with `frame()`."""

    def __init__(
        self,
        message: str,
        task_uuid: str | None = None,
        error_id: ErrorId = ErrorId.INVALID_PARAMETER,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.task_uuid = task_uuid
        self.error_id = error_id

    def frame(self) -> dict[str, Any]:
        return error_frame(self.message, self.error_id, self.task_uuid)


def error_frame(
    message: str, error_id: int = ErrorId.INVALID_PARAMETER, task_uuid: str | None = None
) -> dict[str, Any]:
    """The legacy error frame. taskUUID is easel's addition (the SDKs ignore it), so a client that
    runs several tasks at once can tell which one failed."""
    frame: dict[str, Any] = {"error": True, "errorId": int(error_id), "errorMessage": message}
    if task_uuid is not None:
        frame["taskUUID"] = task_uuid
    return frame


def error_frame_from_current(item: Mapping[str, Any]) -> dict[str, Any]:
    """A current-protocol error item ({code, message, taskUUID...}) as a legacy error frame."""
    error_id = CURRENT_ERROR_IDS.get(str(item.get("code")), ErrorId.TASK_FAILED)
    return error_frame(str(item.get("message", "")), error_id, item.get("taskUUID"))


# --- messages -----------------------------------------------------------------------------------


class Kind(StrEnum):
    """A legacy task message, named by its key."""

    NEW_TASK = "newTask"
    IMAGE_UPLOAD = "newImageUpload"
    PREPROCESS = "newPreProcessControlNet"
    REVERSE_CLIP = "newReverseImageClip"
    PROMPT_ENHANCE = "newPromptEnhance"
    UPSCALE = "newUpscaleGan"
    REMOVE_BACKGROUND = "newRemoveBackground"


CONNECTION_KEY = "newConnection"
PING_KEY = "ping"


@dataclass(frozen=True)
class NewConnection:
    """{"newConnection": {"apiKey", "connectionSessionUUID"?}}: authenticate, maybe resume."""

    api_key: str
    session_uuid: str | None = None

    def auth_task(self) -> dict[str, Any]:
        """The same request as a current-protocol authentication task."""
        task: dict[str, Any] = {"taskType": "authentication", "apiKey": self.api_key}
        if self.session_uuid is not None:
            task["connectionSessionUUID"] = self.session_uuid
        return task


@dataclass(frozen=True)
class Ping:
    """{"ping": true}: answer `pong_reply()` at once."""


@dataclass(frozen=True)
class LegacyTask:
    """A legacy task message as the current-protocol task that serves it."""

    kind: Kind
    task_uuid: str
    task: dict[str, Any]  # a current-protocol task object
    expected: int = 1  # result items that complete it (numberResults, promptVersions)
    alt_text: str = ""  # newTask: the imageAltText of its images


LegacyMessage = NewConnection | Ping | LegacyTask


def parse_message(obj: Any) -> LegacyMessage:
    """One legacy frame (the decoded JSON) as a message; LegacyError if it is none."""
    if not isinstance(obj, dict):
        raise LegacyError(
            'a legacy message is a JSON object such as {"newTask": {...}}',
            error_id=ErrorId.INVALID_MESSAGE,
        )
    if PING_KEY in obj:
        return Ping()
    keys = [key for key in obj if key == CONNECTION_KEY or key in _TASKS]
    if len(keys) != 1:
        known = ", ".join([CONNECTION_KEY, PING_KEY, *_TASKS])
        what = "several messages" if keys else f"no known message (keys: {', '.join(obj)})"
        raise LegacyError(
            f"one message per frame, one of {known}; got {what}",
            _uuid_in(obj),
            ErrorId.INVALID_MESSAGE,
        )
    key = keys[0]
    body = obj[key]
    if not isinstance(body, dict):
        raise LegacyError(f"{key} must be a JSON object", error_id=ErrorId.INVALID_MESSAGE)
    if key == CONNECTION_KEY:
        return _new_connection(body)
    return _TASKS[Kind(key)](body)


def _uuid_in(obj: Mapping[str, Any]) -> str | None:
    """The taskUUID of an unrecognised message, when it has one: its error can carry it."""
    for value in obj.values():
        if isinstance(value, dict) and isinstance(value.get("taskUUID"), str):
            return value["taskUUID"]
    return None


def _new_connection(body: Mapping[str, Any]) -> NewConnection:
    fields = _Fields(body, None)
    api_key = fields.text("apiKey")
    if api_key is None:
        raise LegacyError("newConnection needs an apiKey", error_id=ErrorId.INVALID_API_KEY)
    return NewConnection(api_key, fields.text("connectionSessionUUID"))


# --- field reading ------------------------------------------------------------------------------


class _Fields:
    """Typed reads of one message body (or of one item in it), with errors that name the field.

    `where` prefixes field names in messages ("controlNet[0].")."""

    def __init__(self, body: Mapping[str, Any], task_uuid: str | None, where: str = "") -> None:
        self.body = body
        self.task_uuid = task_uuid
        self.where = where

    def error(
        self, key: str, problem: str, error_id: ErrorId = ErrorId.INVALID_PARAMETER
    ) -> LegacyError:
        return LegacyError(f"{self.where}{key} {problem}", self.task_uuid, error_id)

    def text(self, key: str, required: bool = False) -> str | None:
        value = self.body.get(key)
        if value is None or value == "":
            if required:
                raise self.error(key, "is required")
            return None
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_shown(value)}")
        return value

    def integer(
        self,
        key: str,
        minimum: int | None = None,
        maximum: int | None = None,
        zero_is_absent: bool = False,
    ) -> int | None:
        """An integer (20 or 20.0); zero_is_absent for fields the Go SDK sends as 0 when unset."""
        value = self.body.get(key)
        if value is None or (zero_is_absent and value == 0 and not isinstance(value, bool)):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {_shown(value)}")
        self._check_range(key, value, minimum, maximum)
        return value

    def count(self, key: str, default: int, minimum: int = 1, zero_is_absent: bool = False) -> int:
        """An integer with a default (so never None)."""
        value = self.integer(key, minimum=minimum, zero_is_absent=zero_is_absent)
        return default if value is None else value

    def number(
        self,
        key: str,
        default: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float | None:
        value = self.body.get(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.error(key, f"must be a number, not {_shown(value)}")
        self._check_range(key, value, minimum, maximum)
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {_shown(value)}")
        return value

    def identifier(self, key: str) -> int | str | None:
        """An id sent as a number, or as a string (numeric strings become numbers)."""
        value = self.body.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            value = value.strip()
            return int(value) if value.isdecimal() else value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a number or a string, not {_shown(value)}")
        return value

    def items(self, key: str) -> list[_Fields]:
        """A list of objects, each as its own _Fields ("key[i].")."""
        value = self.body.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, not {_shown(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{i}]", f"must be an object, not {_shown(item)}")
            out.append(_Fields(item, self.task_uuid, f"{self.where}{key}[{i}]."))
        return out

    def _check_range(
        self, key: str, value: float, minimum: float | None, maximum: float | None
    ) -> None:
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, not {value}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _task_uuid(body: Mapping[str, Any]) -> str:
    value = body.get("taskUUID")
    if not isinstance(value, str) or not value.strip():
        raise LegacyError("taskUUID is required (a UUID string the replies will carry)")
    return value


def _lookup_error(
    fields: _Fields, key: str, value: object, known: Mapping[int, object]
) -> LegacyError:
    return fields.error(key, f"{value} is unknown; known ids: {_ranges(known)}")


def _ranges(ids: Mapping[int, object]) -> str:
    """1, 2, 3, 5 -> "1-3, 5": short lists of known ids for error messages."""
    numbers = sorted(ids)
    parts: list[str] = []
    start = previous = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == previous + 1:
            previous = n
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if n is not None:
            start = previous = n
    return ", ".join(parts)


# --- prompts ------------------------------------------------------------------------------------


def split_negative(prompt_text: str) -> tuple[str, str]:
    """Old SDKs send "<positive> -no <negative>" in promptText: split it.

    The split is at the first "-no" that stands as a word of its own (whitespace or the start of
    the text before it, whitespace or the end after it); "-no" is case-sensitive, and "-nothing"
    or "x-no" do not split. Everything after that token is the negative prompt, later "-no"
    tokens included. Both parts are stripped; without the token the negative prompt is ""."""
    match = _NO_TOKEN.search(prompt_text)
    if match is None:
        return prompt_text.strip(), ""
    return prompt_text[: match.start()].strip(), prompt_text[match.end() :].strip()


def apply_style(style: Style, positive: str, negative: str) -> tuple[str, str]:
    """The positive prompt put into the style's template; its negative words appended to the
    client's negative prompt (", " between them)."""
    styled = style.positive.replace(PROMPT_SLOT, positive)
    negatives = ", ".join(part for part in (negative, style.negative) if part)
    return styled, negatives


# --- newTask ------------------------------------------------------------------------------------


def new_task_to_inference(task: Mapping[str, Any]) -> dict[str, Any]:
    """A legacy newTask body as a current-protocol imageInference task.

    - sizeId -> width / height (SIZES; default 1, 512x512, as the legacy Go SDK sends);
      schedulerId -> scheduler (SCHEDULERS; ids whose scheduler easel cannot run are refused);
      modelId: a number (or numeric string) -> its LEGACY_MODEL_IDS public id ("legacy:13",
      bound to a checkpoint in the models manifest); any other string (an AIR id such as
      "civitai:132942@146296" or "runware:100@1") is kept as it is.
    - promptText: split on " -no " (split_negative); styleId then applies its template
      (apply_style). promptLanguageId must be a documented language; the prompts are translated
      to English from it (promptLanguage: its ISO code, or "auto" to detect the language when it
      is null or has no two-letter code), as the hosted service did. English passes untouched.
    - gScale -> CFGScale (default 7.5), steps default 20, numberResults default 1.
    - seed is passed through: image i of the task uses seed + i, as the legacy protocol says,
      because current imageInference does the same. Without a seed, imageInference draws one.
    - imageInitiatorUUID -> seedImage (task types 2, 3, 10; strength default 0.8),
      imageMaskInitiatorUUID -> maskImage (type 3, and 10 for ControlNet inpainting); an image
      or mask that the task type does not take is refused, not ignored.
    - lora [{modelId, weight}] -> lora [{model, weight}] (weight default 1).
    - controlNet units: `preprocessor` names the ControlNet type -> model
      "legacy-controlnet:<type>" (the catalogue resolves it: an operator binding, else an
      installed ControlNet of that type); guideImageUUID / guideImageUrl -> guideImage;
      startStep / endStep pass as they are, startStepPercentage / endStepPercentage (legacy
      fractions 0-1) become current percentages (0-100); endStep 0 means "to the end" (the Go
      SDK sends 0 when unset). Task types 9 and 10 need at least one unit.
    - usePromptWeighting -> promptWeighting "compel"; checkNsfw -> checkNSFW; uploadEndpoint kept.
    - useCache, saveToCache and offset are accepted and ignored: easel always generates.
    """
    return _new_task(task).task


def _new_task(body: Mapping[str, Any]) -> LegacyTask:
    uuid = _task_uuid(body)
    fields = _Fields(body, uuid)
    task_type = fields.count("taskType", DEFAULT_TASK_TYPE)
    if task_type not in INFERENCE_TASK_TYPES:
        raise _task_type_error(fields, task_type)

    positive, negative = split_negative(fields.text("promptText", required=True) or "")
    if not positive:
        raise fields.error("promptText", "has no positive prompt (only a negative after -no)")
    alt_text = positive
    style_id = fields.integer("styleId")
    if style_id is not None:
        style = STYLES.get(style_id)
        if style is None:
            raise _lookup_error(fields, "styleId", style_id, STYLES)
        positive, negative = apply_style(style, positive, negative)
    language = _prompt_language(fields)

    size_id = fields.count("sizeId", DEFAULT_SIZE_ID)
    size = SIZES.get(size_id)
    if size is None:
        raise _lookup_error(fields, "sizeId", size_id, SIZES)
    number_results = fields.count("numberResults", 1)

    inference: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": uuid,
        "positivePrompt": positive,
    }
    if negative:
        inference["negativePrompt"] = negative
    inference |= {
        "model": _model(fields),
        "width": size[0],
        "height": size[1],
        "steps": fields.count("steps", DEFAULT_STEPS),
        "CFGScale": fields.number("gScale", DEFAULT_GUIDANCE, minimum=0),
        "numberResults": number_results,
        "outputType": OUTPUT_TYPE,
        "promptLanguage": language,
    }
    seed = fields.integer("seed", minimum=0, maximum=MAX_SEED)
    if seed is not None:
        inference["seed"] = seed
    scheduler = _scheduler(fields)
    if scheduler is not None:
        inference["scheduler"] = scheduler
    clip_skip = fields.integer("clipSkip", minimum=0, maximum=2)
    if clip_skip is not None:
        inference["clipSkip"] = clip_skip
    inference |= _images(fields, task_type)
    loras = [_lora(item) for item in fields.items("lora")]
    if loras:
        inference["lora"] = loras
    units = [_control_unit(item) for item in fields.items("controlNet")]
    _need(fields, "controlNet", units, "control_net", task_type, "at least one unit")
    if units:
        inference["controlNet"] = units
    if fields.boolean("usePromptWeighting"):
        inference["promptWeighting"] = "compel"
    check_nsfw = fields.boolean("checkNsfw")
    if check_nsfw is not None:
        inference["checkNSFW"] = check_nsfw
    upload_endpoint = fields.text("uploadEndpoint")
    if upload_endpoint is not None:
        inference["uploadEndpoint"] = upload_endpoint
    return LegacyTask(Kind.NEW_TASK, uuid, inference, number_results, alt_text)


def _task_type_error(fields: _Fields, task_type: int) -> LegacyError:
    name = TASK_TYPES.get(task_type)
    if name is None:
        return _lookup_error(fields, "taskType", task_type, TASK_TYPES)
    served = ", ".join(f"{n} ({TASK_TYPES[n]})" for n in INFERENCE_TASK_TYPES)
    return fields.error(
        "taskType",
        f"{task_type} ({name}) is not served by newTask: send {TASK_TYPE_MESSAGES[task_type]}; "
        f"newTask serves {served}",
        ErrorId.UNSUPPORTED,
    )


def _check_language(fields: _Fields) -> None:
    language = fields.identifier("promptLanguageId")
    if language is not None and language not in LANGUAGES:
        raise fields.error(
            "promptLanguageId",
            f"{language!r} is unknown; known ids: {_ranges(LANGUAGES)} (null: detect)",
        )


def _prompt_language(fields: _Fields) -> str:
    """imageInference's promptLanguage for promptLanguageId: the ISO code, or "auto"."""
    _check_language(fields)
    language = fields.identifier("promptLanguageId")
    return (
        LANGUAGE_CODES.get(language, AUTO_LANGUAGE) if isinstance(language, int) else AUTO_LANGUAGE
    )


def _model(fields: _Fields) -> str:
    model = fields.identifier("modelId")
    if model is None:
        raise fields.error("modelId", "is required")
    if isinstance(model, str):
        return model
    legacy = LEGACY_MODEL_IDS.get(model)
    if legacy is None:
        known = ", ".join(f"{n} ({m.name})" for n, m in LEGACY_MODEL_IDS.items())
        raise fields.error(
            "modelId",
            f"{model} is not a legacy model id; known ones: {known}, or send an AIR id "
            "such as runware:100@1",
            ErrorId.UNKNOWN_MODEL,
        )
    return legacy.public_id


def _scheduler(fields: _Fields) -> str | None:
    scheduler_id = fields.integer("schedulerId")
    if scheduler_id is None:
        return None
    scheduler = SCHEDULERS.get(scheduler_id)
    if scheduler is None:
        raise _lookup_error(fields, "schedulerId", scheduler_id, SCHEDULERS)
    if scheduler.unsupported:
        raise fields.error(
            "schedulerId",
            f"{scheduler_id} ({scheduler.name}) is not available: {scheduler.unsupported}",
            ErrorId.UNSUPPORTED,
        )
    return scheduler.name


def _images(fields: _Fields, task_type: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seed_image = fields.text("imageInitiatorUUID")
    _need(fields, "imageInitiatorUUID", seed_image, "seed_image", task_type, "an image")
    mask = fields.text("imageMaskInitiatorUUID")
    _need(fields, "imageMaskInitiatorUUID", mask, "mask", task_type, "a mask image")
    strength = fields.number("strength", minimum=0, maximum=1)
    if seed_image is not None:
        out["seedImage"] = seed_image
        out["strength"] = DEFAULT_STRENGTH if strength is None else strength
    elif strength is not None:
        raise fields.error("strength", "needs an imageInitiatorUUID (task types 2, 3 and 10)")
    if mask is not None:
        out["maskImage"] = mask
    return out


def _need(
    fields: _Fields, key: str, value: object, attribute: str, task_type: int, what: str
) -> None:
    """Refuses an input that the task type requires and lacks, or forbids and has; `attribute`
    names the input in InferenceTaskType."""
    need = getattr(INFERENCE_TASK_TYPES[task_type], attribute)
    name = f"taskType {task_type} ({TASK_TYPES[task_type]})"
    if need is Need.REQUIRED and not value:
        raise fields.error(key, f"is required: {name} needs {what}")
    if need is Need.FORBIDDEN and value:
        takers = [
            str(n)
            for n, rules in INFERENCE_TASK_TYPES.items()
            if getattr(rules, attribute) is not Need.FORBIDDEN
        ]
        raise fields.error(key, f"is not taken by {name}; task types {', '.join(takers)} take it")


def _lora(fields: _Fields) -> dict[str, Any]:
    model = fields.identifier("modelId")
    if model is None:
        model = fields.identifier("loraCivitaiAIR")  # an early SDK's name for it
    if model is None:
        raise fields.error("modelId", "is required (a LoRA's AIR id)")
    return {"model": str(model), "weight": fields.number("weight", 1.0)}


def _control_unit(fields: _Fields) -> dict[str, Any]:
    kind = fields.text("preprocessor", required=True) or ""
    kind = kind.strip().lower()
    if kind not in CONTROLNET_TYPES:
        raise fields.error(
            "preprocessor", f"{kind!r} is not a ControlNet type; known: {', '.join(PREPROCESSORS)}"
        )
    unit: dict[str, Any] = {
        "model": LEGACY_CONTROLNET_PREFIX + kind,
        "guideImage": _guide_image(fields),
    }
    weight = fields.number("weight")
    if weight is not None:
        unit["weight"] = weight
    unit |= _control_step(fields, "start", zero_is_absent=False)
    unit |= _control_step(fields, "end", zero_is_absent=True)
    mode = fields.text("controlMode")
    if mode is not None:
        mode = mode.strip().lower()
        if mode not in CONTROL_MODES:
            raise fields.error(
                "controlMode", f"{mode!r} is not one of {', '.join(sorted(CONTROL_MODES))}"
            )
        unit["controlMode"] = mode
    return unit


def _control_step(fields: _Fields, end: str, zero_is_absent: bool) -> dict[str, Any]:
    step_key, fraction_key = f"{end}Step", f"{end}StepPercentage"
    step = fields.integer(step_key, minimum=0, zero_is_absent=zero_is_absent)
    fraction = fields.number(fraction_key, minimum=0, maximum=1)
    if step is not None and fraction is not None:
        raise fields.error(step_key, f"and {fraction_key} both given: send one of them")
    if step is not None:
        return {step_key: step}
    if fraction is not None:
        return {fraction_key: round(fraction * 100, 6)}  # legacy fraction -> current percent
    return {}


def _guide_image(fields: _Fields) -> str:
    uuid, url = fields.text("guideImageUUID"), fields.text("guideImageUrl")
    if uuid is not None and url is not None:
        raise fields.error("guideImageUUID", "and guideImageUrl both given: send one of them")
    image = uuid if uuid is not None else url
    if image is None:
        raise fields.error("guideImageUUID", "is required (or guideImageUrl)")
    return image


# --- utility messages ---------------------------------------------------------------------------


def _image_uuid(fields: _Fields) -> str:
    return fields.text("imageUUID", required=True) or ""


def new_image_upload_to_task(msg: Mapping[str, Any]) -> dict[str, Any]:
    """newImageUpload {imageBase64, taskUUID} -> imageUpload {image}."""
    return _image_upload(msg).task


def _image_upload(body: Mapping[str, Any]) -> LegacyTask:
    uuid = _task_uuid(body)
    image = _Fields(body, uuid).text("imageBase64", required=True)
    task = {"taskType": "imageUpload", "taskUUID": uuid, "image": image}
    return LegacyTask(Kind.IMAGE_UPLOAD, uuid, task)


def preprocess_to_task(msg: Mapping[str, Any]) -> dict[str, Any]:
    """newPreProcessControlNet -> imageControlNetPreProcess.

    preProcessorType (a legacy name or group: depth_midas, normalbae, openpose...) becomes the
    easel preprocessor code of PREPROCESSORS, which the current protocol accepts as well;
    includeHandsAndFaceOpenPose turns a plain openpose into openpose_full. guideImageUUID (or
    guideImageUrl) -> inputImage; width / height 0 mean unset (the Go SDK's zero values); the
    canny thresholds go only with canny (the SDKs send them with every type)."""
    return _preprocess(msg).task


def _preprocess(body: Mapping[str, Any]) -> LegacyTask:
    uuid = _task_uuid(body)
    fields = _Fields(body, uuid)
    name = (fields.text("preProcessorType", required=True) or "").strip().lower()
    entry = PREPROCESSORS.get(name)
    if entry is None:
        raise fields.error(
            "preProcessorType", f"{name!r} is unknown; known: {', '.join(PREPROCESSORS)}"
        )
    if entry.code is None:
        raise fields.error(
            "preProcessorType",
            f"{name!r} is not available: {entry.unsupported}",
            ErrorId.UNSUPPORTED,
        )
    code = entry.code
    if fields.boolean("includeHandsAndFaceOpenPose"):
        code = OPENPOSE_WITH_HANDS_AND_FACE.get(code, code)
    task: dict[str, Any] = {
        "taskType": "imageControlNetPreProcess",
        "taskUUID": uuid,
        "inputImage": _guide_image(fields),
        "preProcessorType": code,
        "outputType": OUTPUT_TYPE,
    }
    for key in ("width", "height"):
        value = fields.integer(key, minimum=1, zero_is_absent=True)
        if value is not None:
            task[key] = value
    for key in PREPROCESS_OPTIONS.get(code, ()):
        value = fields.integer(key, minimum=0, maximum=255)
        if value is not None:
            task[key] = value
    return LegacyTask(Kind.PREPROCESS, uuid, task)


def reverse_clip_to_task(msg: Mapping[str, Any]) -> dict[str, Any]:
    """newReverseImageClip {imageUUID} -> imageCaption {inputImage}."""
    return _reverse_clip(msg).task


def _reverse_clip(body: Mapping[str, Any]) -> LegacyTask:
    uuid = _task_uuid(body)
    task = {
        "taskType": "imageCaption",
        "taskUUID": uuid,
        "inputImage": _image_uuid(_Fields(body, uuid)),
    }
    return LegacyTask(Kind.REVERSE_CLIP, uuid, task)


def prompt_enhance_to_task(msg: Mapping[str, Any]) -> dict[str, Any]:
    """newPromptEnhance {prompt, promptMaxLength, promptVersions, promptLanguageId} ->
    promptEnhance (max length default 380, versions default 1; the language is checked and the
    prompt passed through untranslated)."""
    return _prompt_enhance(msg).task


def _prompt_enhance(body: Mapping[str, Any]) -> LegacyTask:
    uuid = _task_uuid(body)
    fields = _Fields(body, uuid)
    # The Go SDK's source calls the field promptText in a comment: take either name.
    prompt = fields.text("prompt") or fields.text("promptText")
    if prompt is None:
        raise fields.error("prompt", "is required")
    _check_language(fields)
    versions = fields.count("promptVersions", 1)
    task = {
        "taskType": "promptEnhance",
        "taskUUID": uuid,
        "prompt": prompt,
        "promptMaxLength": fields.count(
            "promptMaxLength", DEFAULT_PROMPT_MAX_LENGTH, zero_is_absent=True
        ),
        "promptVersions": versions,
    }
    return LegacyTask(Kind.PROMPT_ENHANCE, uuid, task, expected=versions)


def upscale_to_task(msg: Mapping[str, Any]) -> dict[str, Any]:
    """newUpscaleGan {imageUUID, upscaleFactor} -> imageUpscale {inputImage, upscaleFactor}
    (factor default 2; 0 means unset)."""
    return _upscale(msg).task


def _upscale(body: Mapping[str, Any]) -> LegacyTask:
    uuid = _task_uuid(body)
    fields = _Fields(body, uuid)
    task = {
        "taskType": "imageUpscale",
        "taskUUID": uuid,
        "inputImage": _image_uuid(fields),
        "upscaleFactor": fields.count("upscaleFactor", DEFAULT_UPSCALE_FACTOR, zero_is_absent=True),
        "outputType": OUTPUT_TYPE,
    }
    return LegacyTask(Kind.UPSCALE, uuid, task)


def remove_background_to_task(msg: Mapping[str, Any]) -> dict[str, Any]:
    """newRemoveBackground {imageUUID} -> imageBackgroundRemoval {inputImage}."""
    return _remove_background(msg).task


def _remove_background(body: Mapping[str, Any]) -> LegacyTask:
    uuid = _task_uuid(body)
    task = {
        "taskType": "imageBackgroundRemoval",
        "taskUUID": uuid,
        "inputImage": _image_uuid(_Fields(body, uuid)),
        "outputType": OUTPUT_TYPE,
    }
    return LegacyTask(Kind.REMOVE_BACKGROUND, uuid, task)


_TASKS: Mapping[Kind, Callable[[Mapping[str, Any]], LegacyTask]] = MappingProxyType(
    {
        Kind.NEW_TASK: _new_task,
        Kind.IMAGE_UPLOAD: _image_upload,
        Kind.PREPROCESS: _preprocess,
        Kind.REVERSE_CLIP: _reverse_clip,
        Kind.PROMPT_ENHANCE: _prompt_enhance,
        Kind.UPSCALE: _upscale,
        Kind.REMOVE_BACKGROUND: _remove_background,
    }
)


# --- replies ------------------------------------------------------------------------------------


def pong_reply() -> dict[str, Any]:
    return {"pong": True}


def session_reply(session_uuid: str) -> dict[str, Any]:
    """The answer to a good newConnection."""
    return {"newConnectionSessionUUID": {"connectionSessionUUID": session_uuid}}


def invalid_api_key_frame() -> dict[str, Any]:
    return error_frame(INVALID_API_KEY_MESSAGE, ErrorId.INVALID_API_KEY)


def _value(item: Mapping[str, Any], key: str) -> Any:
    value = item.get(key)
    if value is None:
        raise LegacyError(
            f"a result item has no {key} (keys: {', '.join(item)})",
            item.get("taskUUID"),
            ErrorId.INTERNAL_ERROR,
        )
    return value


def _image_entry(item: Mapping[str, Any], alt_text: str) -> dict[str, Any]:
    return {
        "imageSrc": _value(item, "imageURL"),
        "imageUUID": _value(item, "imageUUID"),
        "bNSFWContent": bool(item.get("NSFWContent", False)),
        "imageAltText": alt_text,
        "taskUUID": _value(item, "taskUUID"),
    }


def _text_entry(item: Mapping[str, Any]) -> dict[str, Any]:
    return {"taskUUID": _value(item, "taskUUID"), "text": _value(item, "text")}


def inference_items_to_new_images(
    items: Sequence[Mapping[str, Any]], alt_text: str = "", total: int | None = None
) -> dict[str, Any]:
    """imageInference result items (taskUUID, imageUUID, imageURL, NSFWContent) -> newImages.

    imageAltText is the task's positive prompt as the client wrote it (after the -no split,
    before any style template): the hosted service filled it from its cache with the prompt, and
    clients that show it get the same kind of text. totalAvailableResults is the number of
    images the task makes (`total`, its numberResults; default: the items given): easel has no
    cache of earlier images to count. A task's images may come in several frames."""
    return {
        "newImages": {
            "images": [_image_entry(item, alt_text) for item in items],
            "totalAvailableResults": len(items) if total is None else total,
        }
    }


def uploaded_image_reply(item: Mapping[str, Any]) -> dict[str, Any]:
    """An imageUpload result item -> newUploadedImageUUID."""
    return {
        "newUploadedImageUUID": {
            "newImageUUID": _value(item, "imageUUID"),
            "newImageSrc": _value(item, "imageURL"),
            "taskUUID": _value(item, "taskUUID"),
        }
    }


def preprocess_reply(item: Mapping[str, Any]) -> dict[str, Any]:
    """An imageControlNetPreProcess result item (guideImageUUID, guideImageURL,
    inputImageUUID) -> newPreProcessControlNet (newImageUUID, newImageSrc, and initImageUUID as
    the legacy Go SDK reads it)."""
    reply: dict[str, Any] = {
        "taskUUID": _value(item, "taskUUID"),
        "newImageUUID": _value(item, "guideImageUUID"),
        "newImageSrc": _value(item, "guideImageURL"),
        "bNSFWContent": False,
    }
    if item.get("inputImageUUID") is not None:
        reply["initImageUUID"] = item["inputImageUUID"]
    return {"newPreProcessControlNet": reply}


def reverse_clip_reply(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """imageCaption result items ({text}) -> newReverseClip {texts: [{taskUUID, text}]}."""
    return {"newReverseClip": {"texts": [_text_entry(item) for item in items]}}


def prompt_enhancer_reply(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """promptEnhance result items (one per version) -> newPromptEnhancer {texts: [...]}."""
    return {"newPromptEnhancer": {"texts": [_text_entry(item) for item in items]}}


def upscale_reply(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """imageUpscale result items -> newUpscaleGan {images: [...]}."""
    return {"newUpscaleGan": {"images": [_image_entry(item, "") for item in items]}}


def remove_background_reply(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """imageBackgroundRemoval result items -> newRemoveBackground {images: [...]}."""
    return {"newRemoveBackground": {"images": [_image_entry(item, "") for item in items]}}


def _single(build: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def reply(task: LegacyTask, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if len(items) != 1:
            raise LegacyError(
                f"{task.kind.value} makes one result, got {len(items)}",
                task.task_uuid,
                ErrorId.INTERNAL_ERROR,
            )
        return build(items[0])

    return reply


_REPLIES: Mapping[Kind, Callable[[LegacyTask, Sequence[Mapping[str, Any]]], dict[str, Any]]] = (
    MappingProxyType(
        {
            Kind.NEW_TASK: lambda task, items: inference_items_to_new_images(
                items, task.alt_text, task.expected
            ),
            Kind.IMAGE_UPLOAD: _single(uploaded_image_reply),
            Kind.PREPROCESS: _single(preprocess_reply),
            Kind.REVERSE_CLIP: lambda task, items: reverse_clip_reply(items),
            Kind.PROMPT_ENHANCE: lambda task, items: prompt_enhancer_reply(items),
            Kind.UPSCALE: lambda task, items: upscale_reply(items),
            Kind.REMOVE_BACKGROUND: lambda task, items: remove_background_reply(items),
        }
    )
)


def legacy_reply(task: LegacyTask, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The legacy frame for some (or all) of a task's current-protocol result items."""
    return _REPLIES[task.kind](task, items)
