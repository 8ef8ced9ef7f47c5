"""PICPIK actions: wire requests in, engine jobs and task records out, wire responses back.

Every request is answered with HTTP 200 and the common envelope (RetCode, Action, Message,
request_uuid); failures carry a RetCode from server/picpik/errors.py and a Message naming the
field at fault. Nothing is queued unless the whole request is valid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from PIL.Image import Image
from pydantic import BaseModel, ValidationError

from pipelines.engine import Engine
from pipelines.jobs import GenerationJob, JobError, JobKind, ModelInfo, ResizeMode
from pipelines.samplers import is_known_sampler
from server.images import ImageDecodeError, decode_base64_image
from server.keys import KeyStore
from server.picpik import protocol as wire
from server.picpik.errors import SUBMIT_RET_CODES, TASK_ERROR_CODES, PicpikError, RetCode
from server.picpik.signature import verify
from server.results import image_url
from server.taskstore import TaskRecord, TaskStatus, TaskStore
from server.tracking import TaskTracker

log = logging.getLogger(__name__)

PROTOCOL = "picpik"
W = TypeVar("W", bound=BaseModel)

# PICPIK's documented defaults for the main model's InferenceParams.
DEFAULT_STEPS = 10
DEFAULT_CFG_SCALE = 7.5
DEFAULT_SAMPLER = "Euler"
DEFAULT_CLIP_SKIP = 1
DEFAULT_SIDE = 1024
SIZE_MULTIPLE = 8  # SD latents are 1/8 of the image: sizes are rounded to the nearest multiple

RESIZE_MODES: dict[str, ResizeMode] = {
    "JustResize": ResizeMode.JUST_RESIZE,
    "CropAndResize": ResizeMode.CROP_AND_RESIZE,
    "ResizeAndFill": ResizeMode.RESIZE_AND_FILL,
}

STATUS_NAMES: dict[TaskStatus, str] = {
    TaskStatus.QUEUED: "Queuing",
    TaskStatus.RUNNING: "Running",
    TaskStatus.FINISHED: "Finished",
    TaskStatus.ERROR: "Error",
}

# Actions of the real API that later issues implement; until then they get UNSUPPORTED.
NOT_YET_SERVED = frozenset(
    {
        "ModifyMaskedPixels",
        "ApplyReferenceStyle",
        "GenerateBackgrounds",
        "ListControlNets",
        "RemoveBackground",
        "RemoveBackgroundsInBatch",
        "ExtractContents",
        "RemoveContents",
        "ResizeImage",
        "RestoreFaces",
        "SwitchFace",
        "DescribeImages",
        "ApplyReferencePattern",
        "GeneratePatternsFromImage",
        "TranslatePrompts",
    }
)

UNLIMITED_CREDITS = 2147483647  # a local server has no credit limit


@dataclass(frozen=True)
class Caller:
    owner: str  # the PublicKey that signed the request; "" when the server runs open
    base_url: str  # where result URLs point


Handler = Callable[[dict[str, Any], Caller], Awaitable[dict[str, Any]]]


def round_side(value: int) -> int:
    """Round a side to the model's multiple of 8 (64..2560 stay in range)."""
    return max(64, math.floor(value / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)


def point_cost(width: int, height: int, steps: int, images: int) -> int:
    """ConsumeApiPoint: one point per million pixels per step per image, rounded up."""
    return math.ceil(width * height * steps * images / 1_000_000)


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(model: type[W], body: dict[str, Any]) -> W:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        raise PicpikError(
            RetCode.INVALID_PARAMETER, f"invalid {_loc(first['loc']) or 'request'}: {first['msg']}"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class PicpikService:
    def __init__(
        self,
        engine: Engine,
        store: TaskStore,
        tracker: TaskTracker,
        keys: KeyStore,
        public_url: str | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.tracker = tracker
        self.keys = keys
        self.public_url = public_url
        self.handlers: dict[str, Handler] = {
            "GenerateImages": self.generate_images,
            "ListTasksDetails": self.list_tasks_details,
            "ListRunningTasks": self.list_running_tasks,
            "TerminateTask": self.terminate_task,
            "ListModels": self.list_models,
            "GetCreditBalance": self.get_credit_balance,
        }

    # --- envelope ---

    async def handle(self, raw: bytes, base_url: str) -> dict[str, Any]:
        action, request_uuid = "", ""
        try:
            body = self._decode(raw)
            action = body["Action"]
            request_uuid = (
                body.get("request_uuid") if isinstance(body.get("request_uuid"), str) else ""
            )
            caller = Caller(self._authenticate(body), self.public_url or base_url)
            handler = self.handlers.get(action)
            if handler is None:
                if action in NOT_YET_SERVED:
                    raise PicpikError(
                        RetCode.UNSUPPORTED,
                        f"the action {action} is not supported by this server yet",
                    )
                raise PicpikError(RetCode.UNKNOWN_ACTION, f"unknown action {action!r}")
            payload = await handler(body, caller)
            return {
                "RetCode": 0,
                "Action": action,
                "Message": "",
                "request_uuid": request_uuid,
                **payload,
            }
        except PicpikError as error:
            return self._error(error.code, error.message, action, request_uuid)
        except Exception:
            log.exception("PICPIK %s failed", action or "request")
            return self._error(
                RetCode.INTERNAL_ERROR, "internal server error", action, request_uuid
            )

    @staticmethod
    def _error(code: RetCode, message: str, action: str, request_uuid: str) -> dict[str, Any]:
        return {
            "RetCode": int(code),
            "Action": action,
            "Message": message,
            "request_uuid": request_uuid,
        }

    @staticmethod
    def _decode(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise PicpikError(RetCode.BAD_REQUEST, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise PicpikError(RetCode.BAD_REQUEST, "the request body must be a JSON object")
        action = body.get("Action")
        if not isinstance(action, str) or not action:
            raise PicpikError(RetCode.BAD_REQUEST, "the request has no Action")
        return body

    def _authenticate(self, body: dict[str, Any]) -> str:
        """The owner of the request; PicpikError unless its signature checks out."""
        if self.keys.empty:
            return ""
        public_key = body.get("PublicKey")
        if not isinstance(public_key, str) or not public_key:
            raise PicpikError(RetCode.AUTH_MISSING, "PublicKey is required")
        if not isinstance(body.get("Signature"), str) or not body["Signature"]:
            raise PicpikError(RetCode.AUTH_MISSING, "Signature is required")
        private_key = self.keys.picpik_private_key(public_key)
        if private_key is None:
            raise PicpikError(RetCode.AUTH_UNKNOWN_KEY, "unknown PublicKey")
        if not verify(body, private_key):
            raise PicpikError(RetCode.AUTH_BAD_SIGNATURE, "the Signature does not match")
        return public_key

    # --- generation ---

    async def generate_images(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.GenerateImagesRequest, body)
        for name, used in (
            ("ControlNetList", bool(req.ControlNetList)),
            ("SubModelList", bool(req.SubModelList)),
            ("Tileable", bool(req.Tileable)),
        ):
            if used:
                raise PicpikError(
                    RetCode.UNSUPPORTED, f"{name} is not supported by this server yet"
                )
        model = self._main_model(req.MainModel)
        params = (req.MainModel.InferenceParams if req.MainModel else None) or wire.Params()
        sampler = params.Sampler or model.default_sampler or DEFAULT_SAMPLER
        if not is_known_sampler(sampler):
            raise PicpikError(
                RetCode.INVALID_PARAMETER,
                f"invalid MainModel.InferenceParams.Sampler: unknown sampler {sampler!r}",
            )
        width = round_side(req.Width or DEFAULT_SIDE)
        height = round_side(req.Height or DEFAULT_SIDE)
        steps = params.Steps or model.default_steps or DEFAULT_STEPS
        seed = req.Seed if req.Seed >= 0 else secrets.randbelow(2147483647)
        i2i = req.Image2Image
        init_image = None
        if i2i is not None:
            init_image = await self._image(
                req.ImageAndMaskList, i2i.ImageIndex, "Image2Image.ImageIndex"
            )
        job = GenerationJob(
            kind=JobKind.TXT2IMG if i2i is None else JobKind.IMG2IMG,
            model=model.code,
            prompt=_join(req.PositivePrompts),
            negative_prompt=_join(req.NegativePrompts),
            width=width,
            height=height,
            steps=steps,
            guidance_scale=params.CFGScale or model.default_guidance_scale or DEFAULT_CFG_SCALE,
            sampler=sampler,
            clip_skip=params.ClipSkip or model.default_clip_skip or DEFAULT_CLIP_SKIP,
            seeds=tuple(seed + i for i in range(req.BatchSize)),
            init_image=init_image,
            # ReferStrength is how much of the reference survives.
            strength=0.0 if i2i is None else 1.0 - i2i.ReferStrength,
            resize_mode=RESIZE_MODES[i2i.ResizeMode if i2i else "ResizeAndFill"],
            use_model_vae=req.UseMainModelVAE,
            owner=caller.owner,
        )
        cost = point_cost(width, height, steps, req.BatchSize)
        task_id = self._submit(req.Action, job, caller, cost)
        return {"TaskUID": task_id}

    def _main_model(self, main: wire.ModelRef | None) -> ModelInfo:
        identifier = (main.ModelCode or main.Name) if main else None
        try:
            return self.engine.resolve_model(identifier)
        except JobError as error:
            raise PicpikError(
                RetCode.UNKNOWN_MODEL, f"invalid MainModel: {error.message}"
            ) from None

    async def _image(self, images: list[str] | None, index: int, field: str) -> Image:
        images = images or []
        if index >= len(images):
            raise PicpikError(
                RetCode.INVALID_PARAMETER,
                f"invalid {field}: {index} is out of range (ImageAndMaskList has {len(images)})",
            )
        try:
            return await asyncio.to_thread(decode_base64_image, images[index])
        except ImageDecodeError as error:
            raise PicpikError(RetCode.INVALID_IMAGE, f"ImageAndMaskList[{index}] {error}") from None

    def _submit(self, action: str, job: GenerationJob, caller: Caller, cost: int) -> str:
        task_id = uuid.uuid4().hex
        record = TaskRecord(
            task_id=task_id,
            protocol=PROTOCOL,
            action=action,
            owner=caller.owner,
            seeds=list(job.seeds),
            cost=cost,
            params=job_summary(job),
        )
        self.store.create(record)
        try:
            handle = self.engine.submit(job, job_id=task_id)
        except JobError as error:
            self.store.delete(task_id)
            code = SUBMIT_RET_CODES.get(error.code.value, RetCode.INTERNAL_ERROR)
            raise PicpikError(code, error.message) from None
        self.tracker.follow(task_id, handle)
        self.store.add_usage(caller.owner, cost)
        log.info("task %s queued: %s %s", task_id, action, job.kind.value)
        return task_id

    # --- tasks ---

    def _own_task(self, task_id: str, caller: Caller) -> TaskRecord:
        record = self.store.get(task_id) if isinstance(task_id, str) else None
        if record is None or record.protocol != PROTOCOL or record.owner != caller.owner:
            raise PicpikError(RetCode.TASK_NOT_FOUND, f"task not found: {task_id}")
        return record

    async def list_tasks_details(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.ListTasksDetailsRequest, body)
        records = [self._own_task(task_id, caller) for task_id in req.TaskUIDList]
        return {"TaskDetailList": [self._detail(r, caller).model_dump() for r in records]}

    def _detail(self, record: TaskRecord, caller: Caller) -> wire.TaskDetail:
        error = TASK_ERROR_CODES.get(record.error_code, 20000) if record.error_code else 0
        return wire.TaskDetail(
            TaskUID=record.task_id,
            Action=record.action,
            Status=STATUS_NAMES[record.status],
            ImgList=[image_url(caller.base_url, image_id) for image_id in record.image_ids],
            Seed=record.seeds[0] if record.seeds else 0,
            TxtList=record.texts,
            ConsumeApiPoint=record.cost,
            ErrorCode=int(error),
            ErrorMassage=record.error_message,
            Progress=1.0 if record.status is TaskStatus.FINISHED else round(record.progress, 4),
        )

    async def list_running_tasks(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {
            "TaskUIDList": [
                r.task_id for r in self.store.unfinished(caller.owner) if r.protocol == PROTOCOL
            ]
        }

    async def terminate_task(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        req = parse(wire.TerminateTaskRequest, body)
        record = self._own_task(req.TaskUID, caller)
        if record.status.ended or not self.engine.cancel(record.task_id):
            raise PicpikError(
                RetCode.TASK_ALREADY_ENDED,
                f"task {record.task_id} has already ended ({STATUS_NAMES[record.status]})",
            )
        return {"TaskUID": record.task_id}

    # --- catalogue and account ---

    async def list_models(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        main: dict[str, Any] = {}
        checkpoints = {m.code: m for m in self.engine.list_models("checkpoint")}
        for alias, code in self.engine.model_aliases().items():
            target = checkpoints[code]
            main[alias] = _model_entry(
                target,
                name=alias,
                code=alias,
                official=True,
                description=f"resolves to {target.name} ({code})",
            )
        for model in checkpoints.values():
            name = model.name if model.name not in main else model.code
            main[name] = _model_entry(model, name=name, code=model.code, official=False)
        return {
            "MainModels": main,
            "LoraModels": {},
            "EmbeddingModels": {},
            "HypernetworkModels": {},
        }

    async def get_credit_balance(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {
            "TotalCredits": UNLIMITED_CREDITS,
            "UsedCredits": self.store.usage(caller.owner),
            "ExpireTimestamp": 0,
        }


def job_summary(job: GenerationJob) -> dict[str, Any]:
    """What the task record keeps of a job: every field but the images (JSON-ready)."""
    return {f.name: getattr(job, f.name) for f in fields(job) if not f.name.endswith("_image")}


def _join(prompts: list[str] | None) -> str:
    return ", ".join(p.strip() for p in prompts or [] if p and p.strip())


def _model_entry(
    model: ModelInfo, *, name: str, code: str, official: bool, description: str = ""
) -> dict[str, Any]:
    return wire.ModelEntry(
        Name=name,
        ModelCode=code,
        IsOfficial=official,
        TriggerWordList=list(model.trigger_words),
        InferenceParams={
            "Steps": model.default_steps or DEFAULT_STEPS,
            "CFGScale": model.default_guidance_scale or DEFAULT_CFG_SCALE,
            "Sampler": model.default_sampler or DEFAULT_SAMPLER,
            "ClipSkip": model.default_clip_skip or DEFAULT_CLIP_SKIP,
        },
        Description=description or model.description,
    ).model_dump()
