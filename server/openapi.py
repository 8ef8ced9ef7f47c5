"""OpenAPI request bodies for the two endpoints that read their body raw.

PICPIK `POST /` and Runware `POST /v1` parse the body themselves, so that every error comes back
in the protocol's own format (a FastAPI body model would answer 422). Their OpenAPI operations
would then say nothing about what to send; this module describes it from the same pydantic wire
models the handlers parse with: PICPIK as one schema per Action (the Action a const), Runware as
an array of task objects (one schema per taskType). The models' nested definitions are hoisted
into components/schemas with a protocol prefix (PicpikModelRef, RunwareLoraItem...), which
`install` adds to the app's document. Schema-driven tools (/docs, schemathesis in tests/fuzz)
read these; the routes themselves do not validate against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from server.picpik import protocol as picpik
from server.runware import protocol as runware

JsonSchema = dict[str, Any]
COMPONENTS_PREFIX = "#/components/schemas/"
DEMO_MODEL = "easel-demo"  # the embedded demo model: the examples run on a fresh install

# PICPIK Action -> the request model its handler parses (the envelope alone: no own fields).
PICPIK_ACTIONS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {
        "GenerateImages": picpik.GenerateImagesRequest,
        "ModifyMaskedPixels": picpik.ModifyMaskedPixelsRequest,
        "ApplyReferenceStyle": picpik.ApplyReferenceStyleRequest,
        "GenerateBackgrounds": picpik.GenerateBackgroundsRequest,
        "RemoveBackground": picpik.RemoveBackgroundRequest,
        "RemoveBackgroundsInBatch": picpik.RemoveBackgroundsInBatchRequest,
        "ResizeImage": picpik.ResizeImageRequest,
        "DescribeImages": picpik.DescribeImagesRequest,
        "ListTasksDetails": picpik.ListTasksDetailsRequest,
        "TerminateTask": picpik.TerminateTaskRequest,
        "ListRunningTasks": picpik.Envelope,
        "ListModels": picpik.Envelope,
        "ListControlNets": picpik.Envelope,
        "GetCreditBalance": picpik.Envelope,
    }
)

# Runware taskType -> the task model its handler parses (the SDKs' canonical names; the
# short aliases caption / upscale / removeBackground take the same fields).
RUNWARE_TASKS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {
        "imageInference": runware.ImageInference,
        "imageUpload": runware.ImageUpload,
        "getResponse": runware.GetResponse,
        "imageControlNetPreProcess": runware.ControlNetPreProcess,
        "imageBackgroundRemoval": runware.BackgroundRemoval,
        "imageCaption": runware.Caption,
        "promptEnhance": runware.PromptEnhance,
        "imageUpscale": runware.Upscale,
        "modelSearch": runware.ModelSearch,
    }
)
# The tasks the transports answer themselves, without a model.
RUNWARE_CONTROL_TASKS: Mapping[str, JsonSchema] = MappingProxyType(
    {
        "authentication": {
            "properties": {
                "apiKey": {"type": "string"},
                "connectionSessionUUID": {"type": "string"},
            },
            "required": ["apiKey"],
        },
        "ping": {"properties": {"ping": {"type": "boolean"}}},
    }
)

API_DESCRIPTION = """\
easel serves two image-generation APIs on one port. Every example below runs on a fresh install
(the embedded demo model, `easel-demo`): press *Try it out*, then *Execute*.

**PICPIK** (`POST /`): one JSON object per request, its `Action` says what to do. Generation
actions answer with a `TaskUID`; poll `ListTasksDetails` until `Status` is `Finished`, then
download `ImgList`. `TaskDetail.Progress` (0..1, an easel extension) tells how far a running
task is. With API keys configured, send `PublicKey` and `Signature`: the SHA-1 of the request's
fields sorted by name and concatenated (nested values flattened the same way) followed by the
private key. A server without a keys file accepts any request.

**Runware** (`POST /v1`, and the WebSocket `ws://HOST:PORT/v1`): a JSON array of tasks, each with
`taskType` and a `taskUUID` you choose. Authenticate with an `authentication` task first in the
array, or an `Authorization: Bearer KEY` header (REST). `deliveryMethod: "async"` answers at
once with a `processing` item; poll `getResponse` with the same taskUUID. Over the WebSocket an
async task's progress is pushed as `{"status": "processing", "progress": 0..100}` items, then
its result items, without polling.

Errors come in each protocol's own format: PICPIK `RetCode` + `Message` (HTTP 200), Runware
`errors[]` items carrying the taskUUID.

Operators: `GET /` is the playground page, `/metrics` is for Prometheus, `/healthz` and
`/readyz` are for probes, `/engine/status` and `/engine/events` (Server-Sent Events) show the
queue and the running batches.
"""

API_TAGS: list[JsonSchema] = [
    {"name": "PICPIK", "description": "Action-style JSON over HTTP; TaskUIDs polled."},
    {"name": "Runware", "description": "Task arrays over REST (and the WebSocket at /v1)."},
    {"name": "results", "description": "Result images by their id (the URLs tasks return)."},
    {"name": "health", "description": "Probes, metrics and the engine's state."},
]

# A tiny PNG for the examples that take an image (img2img, uploads): any size works.
EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAGUlEQVR42mNkYKiQY2DARC"
    "wMcgxYweCUAABSsQI6ZfI4AwAAAABJRU5ErkJggg=="
)

PICPIK_EXAMPLES: Mapping[str, JsonSchema] = MappingProxyType(
    {
        "GenerateImages": {
            "summary": "a 64x64 image from the demo model",
            "value": {
                "Action": "GenerateImages",
                "MainModel": {"ModelCode": DEMO_MODEL, "InferenceParams": {"Steps": 6}},
                "PositivePrompts": ["a red fox in the snow"],
                "NegativePrompts": ["blurry"],
                "Width": 64,
                "Height": 64,
                "Seed": 42,
                "BatchSize": 1,
            },
        },
        "ListModels": {"summary": "the installed models", "value": {"Action": "ListModels"}},
        "ListControlNets": {
            "summary": "ControlNet models and preprocessors",
            "value": {"Action": "ListControlNets"},
        },
        "ListRunningTasks": {
            "summary": "the caller's unfinished tasks",
            "value": {"Action": "ListRunningTasks"},
        },
        "GetCreditBalance": {"summary": "credits", "value": {"Action": "GetCreditBalance"}},
    }
)

RUNWARE_EXAMPLES: Mapping[str, JsonSchema] = MappingProxyType(
    {
        "imageInference": {
            "summary": "a 64x64 image from the demo model",
            "value": [
                {
                    "taskType": "imageInference",
                    "taskUUID": "6f1c1f5e-3b8e-4a51-9c43-1d2b7a0f9e01",
                    "positivePrompt": "a red fox in the snow",
                    "model": DEMO_MODEL,
                    "width": 64,
                    "height": 64,
                    "steps": 4,
                    "seed": 42,
                    "outputFormat": "PNG",
                }
            ],
        },
        "imageInference async": {
            "summary": "answered at once; poll getResponse with the taskUUID",
            "value": [
                {
                    "taskType": "imageInference",
                    "taskUUID": "9a0e6c1d-52f4-4d3b-a7e1-3c8f0b2d4e03",
                    "positivePrompt": "a lighthouse at dusk",
                    "model": DEMO_MODEL,
                    "width": 64,
                    "height": 64,
                    "steps": 8,
                    "numberResults": 2,
                    "deliveryMethod": "async",
                }
            ],
        },
        "imageInference img2img": {
            "summary": "image to image from an inline PNG",
            "value": [
                {
                    "taskType": "imageInference",
                    "taskUUID": "2c5b8e7a-0d19-4f6e-b3a2-8e4d1c7f9a04",
                    "positivePrompt": "an oil painting",
                    "model": DEMO_MODEL,
                    "seedImage": EXAMPLE_IMAGE,
                    "strength": 0.7,
                    "width": 64,
                    "height": 64,
                    "steps": 4,
                }
            ],
        },
        "imageUpload": {
            "summary": "store an image; its imageUUID can stand in for it later",
            "value": [
                {
                    "taskType": "imageUpload",
                    "taskUUID": "e3f7a9b1-6c2d-4e8f-9a1b-5d3c7e0f2a05",
                    "image": EXAMPLE_IMAGE,
                }
            ],
        },
        "modelSearch": {
            "summary": "the installed checkpoints",
            "value": [
                {
                    "taskType": "modelSearch",
                    "taskUUID": "0b7d3e52-2f0c-4c4e-8d37-5a9e2f1b6c02",
                    "category": "checkpoint",
                }
            ],
        },
        "ping": {"summary": "keepalive", "value": [{"taskType": "ping", "ping": True}]},
    }
)


def _hoisted(model: type[BaseModel], prefix: str, components: dict[str, JsonSchema]) -> JsonSchema:
    """The model's JSON schema with its nested definitions moved into `components` under
    `prefix`+name (the same definition met twice is the same schema)."""
    schema = model.model_json_schema(ref_template=COMPONENTS_PREFIX + prefix + "{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components[prefix + name] = definition
    return schema


def _variant(
    model: type[BaseModel] | None,
    extra: JsonSchema,
    key: str,
    value: str,
    prefix: str,
    components: dict[str, JsonSchema],
) -> str:
    """One request variant as a component whose `key` is the const `value`; its ref."""
    schema: JsonSchema = (
        _hoisted(model, prefix, components)
        if model is not None
        else {"type": "object", "properties": {}, **extra}
    )
    schema["title"] = prefix + value[:1].upper() + value[1:]
    fields = {name: field for name, field in schema["properties"].items() if name != key}
    schema["properties"] = {key: {"const": value, "type": "string"}, **fields}
    schema["required"] = [key, *(name for name in schema.get("required", []) if name != key)]
    components[schema["title"]] = schema
    return COMPONENTS_PREFIX + schema["title"]


def _one_of(refs: Mapping[str, str], key: str) -> JsonSchema:
    return {
        "oneOf": [{"$ref": ref} for ref in refs.values()],
        "discriminator": {"propertyName": key, "mapping": dict(refs)},
    }


def build() -> tuple[JsonSchema, JsonSchema, dict[str, JsonSchema]]:
    """(PICPIK operation extra, Runware operation extra, the components they refer to)."""
    components: dict[str, JsonSchema] = {}
    actions = {
        action: _variant(model, {}, "Action", action, "Picpik", components)
        for action, model in PICPIK_ACTIONS.items()
    }
    tasks = {
        task_type: _variant(model, {}, "taskType", task_type, "Runware", components)
        for task_type, model in RUNWARE_TASKS.items()
    } | {
        task_type: _variant(None, extra, "taskType", task_type, "Runware", components)
        for task_type, extra in RUNWARE_CONTROL_TASKS.items()
    }
    picpik_extra = _request_body(_one_of(actions, "Action"), PICPIK_EXAMPLES)
    runware_schema = {"type": "array", "items": _one_of(tasks, "taskType")}
    runware_extra = _request_body(runware_schema, RUNWARE_EXAMPLES)
    return picpik_extra, runware_extra, components


def _request_body(schema: JsonSchema, examples: Mapping[str, JsonSchema]) -> JsonSchema:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "examples": dict(examples)}},
        }
    }


PICPIK_OPENAPI, RUNWARE_OPENAPI, COMPONENTS = build()


def install(app: FastAPI) -> None:
    """Add the components the two request bodies refer to to the app's OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()
        document.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
