"""PICPIK actions: wire requests in, engine jobs and task records out, wire responses back.

Every request is answered with HTTP 200 and the common envelope (RetCode, Action, Message,
request_uuid); failures carry a RetCode from server/picpik/errors.py and a Message naming the
field at fault. Nothing is queued unless the whole request is valid.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pipelines.engine import Engine
from pipelines.jobs import Job, JobError, ModelInfo
from server import jsonbody
from server.access import Admission, QuotaExceeded, QuotaKind
from server.dispatch import Dispatcher
from server.keys import KeyStore
from server.limits import Limits
from server.metrics import count_error_reply
from server.picpik import protocol as wire
from server.picpik.common import (
    DEFAULT_CFG_SCALE,
    DEFAULT_CLIP_SKIP,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    PROTOCOL,
    Caller,
    Handler,
    job_summary,
    parse,
)
from server.picpik.errors import SUBMIT_RET_CODES, TASK_ERROR_CODES, PicpikError, RetCode
from server.picpik.generation import PREPROCESSOR_OPTIONS, GenerationActions
from server.picpik.signature import verify
from server.picpik.utilities import UtilityActions
from server.results import image_url
from server.taskstore import TaskRecord, TaskStatus, TaskStore

log = logging.getLogger(__name__)

STATUS_NAMES: dict[TaskStatus, wire.TaskStatusName] = {
    TaskStatus.QUEUED: "Queuing",
    TaskStatus.RUNNING: "Running",
    TaskStatus.FINISHED: "Finished",
    TaskStatus.ERROR: "Error",
}

# Actions of the real API easel does not serve yet: they get UNSUPPORTED.
NOT_YET_SERVED = frozenset(
    {
        "ExtractContents",
        "RemoveContents",
        "RestoreFaces",
        "SwitchFace",
        "ApplyReferencePattern",
        "GeneratePatternsFromImage",
    }
)

# Actions that queue no work: they are not counted against a key's task rate.
UNMETERED_ACTIONS = frozenset(
    {
        "ListControlNets",
        "ListTasksDetails",
        "ListRunningTasks",
        "TerminateTask",
        "ListModels",
        "GetCreditBalance",
    }
)
QUOTA_RET_CODES: dict[QuotaKind, RetCode] = {
    QuotaKind.RATE: RetCode.RATE_LIMITED,
    QuotaKind.CONCURRENCY: RetCode.TOO_MANY_TASKS,
}

UNLIMITED_CREDITS = 2147483647  # a local server has no credit limit
DEFAULT_PREPROCESSOR_RESOLUTION = 512
# Aliases ListModels leaves out: Runware's legacy numeric model ids ("legacy:13"), which the
# catalogue points at a default checkpoint; they are no PICPIK models.
UNLISTED_ALIAS_PREFIXES = ("legacy:",)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class PicpikService:
    def __init__(
        self,
        engine: Engine,
        dispatcher: Dispatcher,
        store: TaskStore,
        keys: KeyStore,
        public_url: str | None = None,
        admission: Admission | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.engine = engine  # the model catalogue: listings and request validation
        self.dispatcher = dispatcher
        self.store = store
        self.keys = keys
        self.public_url = public_url
        self.admission = admission or Admission(keys, store)
        self.limits = limits or Limits()
        generation = GenerationActions(engine, self._submit, self.limits)
        utilities = UtilityActions(self._submit, self.limits)
        self.handlers: dict[str, Handler] = {
            "GenerateImages": generation.generate_images,
            "ModifyMaskedPixels": generation.modify_masked_pixels,
            "ApplyReferenceStyle": generation.apply_reference_style,
            "GenerateBackgrounds": generation.generate_backgrounds,
            "ListControlNets": self.list_controlnets,
            "ListTasksDetails": self.list_tasks_details,
            "ListRunningTasks": self.list_running_tasks,
            "TerminateTask": self.terminate_task,
            "ListModels": self.list_models,
            "GetCreditBalance": self.get_credit_balance,
            **utilities.handlers,
        }

    # --- envelope ---

    async def handle(self, raw: bytes, base_url: str) -> dict[str, Any]:
        action, request_uuid = "", ""
        try:
            body = self._decode(raw)
            action = body["Action"]
            uuid = body.get("request_uuid")
            request_uuid = uuid if isinstance(uuid, str) else ""
            caller = Caller(self._authenticate(body), self.public_url or base_url)
            handler = self.handlers.get(action)
            if handler is None:
                if action in NOT_YET_SERVED:
                    raise PicpikError(
                        RetCode.UNSUPPORTED,
                        f"the action {action} is not supported by this server yet",
                    )
                raise PicpikError(RetCode.UNKNOWN_ACTION, f"unknown action {action!r}")
            if action not in UNMETERED_ACTIONS:
                self._admit(caller)
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
        count_error_reply(PROTOCOL, str(int(code)))  # GET /metrics: easel_error_replies_total
        return {
            "RetCode": int(code),
            "Action": action,
            "Message": message,
            "request_uuid": request_uuid,
        }

    @staticmethod
    def _decode(raw: bytes) -> dict[str, Any]:
        try:
            body = jsonbody.loads(raw, parse_constant=_reject_constant)
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
        if self.keys.open:
            return ""
        public_key = body.get("PublicKey")
        if not isinstance(public_key, str) or not public_key:
            raise PicpikError(RetCode.AUTH_MISSING, "PublicKey is required")
        if not isinstance(body.get("Signature"), str) or not body["Signature"]:
            raise PicpikError(RetCode.AUTH_MISSING, "Signature is required")
        key = self.keys.picpik_key(public_key)
        if key is None:
            raise PicpikError(RetCode.AUTH_UNKNOWN_KEY, "unknown PublicKey")
        if not verify(body, key.private_key):
            raise PicpikError(RetCode.AUTH_BAD_SIGNATURE, "the Signature does not match")
        return key.owner

    def _admit(self, caller: Caller) -> None:
        """PicpikError unless the caller's key may queue one more task now."""
        try:
            self.admission.admit(caller.owner)
        except QuotaExceeded as error:
            raise PicpikError(QUOTA_RET_CODES[error.kind], error.message) from None

    # --- generation ---

    def _submit(self, action: str, job: Job, caller: Caller, cost: int) -> str:
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
            self.dispatcher.submit(task_id, job)
        except JobError as error:
            self.store.delete(task_id)
            code = SUBMIT_RET_CODES.get(error.code.value, RetCode.INTERNAL_ERROR)
            raise PicpikError(code, error.message) from None
        self.store.add_usage(caller.owner, cost)
        log.info("task %s queued: %s", task_id, action)
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
            TranslatedPrompts=_translated_prompts(record.outputs.get("translation")),
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
        if record.status.ended or not self.dispatcher.cancel(record.task_id):
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
            if alias.startswith(UNLISTED_ALIAS_PREFIXES):
                continue
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
            "LoraModels": self._sub_model_entries("lora", {"LoraWeight": 1}),
            "EmbeddingModels": self._sub_model_entries("embedding", {}),
            "HypernetworkModels": self._sub_model_entries("hypernetwork", {"LoraWeight": 1}),
        }

    def _sub_model_entries(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        for model in self.engine.list_models(kind):
            name = model.name if model.name not in entries else model.code
            entries[name] = wire.ModelEntry(
                Name=name,
                ModelCode=model.code,
                IsOfficial=False,
                # An embedding is used through its token: the code, as in A1111.
                TriggerWordList=list(model.trigger_words)
                or ([model.code] if kind == "embedding" else []),
                InferenceParams=params,
                Description=model.description,
            ).model_dump()
        return entries

    async def list_controlnets(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Installed ControlNet models (the demo set's, for the codes no installed one has), and
        the preprocessors that can run here."""
        preprocessors = {
            p.code: {
                "ModelCode": p.code,
                "InferenceParams": {"Resolution": DEFAULT_PREPROCESSOR_RESOLUTION}
                # Its PICPIK parameters, with the engine's defaults.
                | {
                    name: p.defaults[option]
                    for name, option in PREPROCESSOR_OPTIONS.items()
                    if option in p.defaults
                },
            }
            for p in self.engine.list_preprocessors()
            if p.available
        }
        control_models = {
            model.name: {
                "ModelCode": model.code,
                # Extension, as in ListModels: what the model is (a demo one says it draws noise).
                "Description": model.description,
                "InferenceParams": {
                    "ControlWeight": 1,
                    "StartingStep": 0,
                    "EndingStep": 1,
                    "ControlMode": "Balanced",
                    "ResizeMode": "ResizeAndFill",
                },
            }
            for model in self.engine.list_models("controlnet")
        }
        return {"PreProcessors": preprocessors, "ControlModels": control_models}

    async def get_credit_balance(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {
            "TotalCredits": UNLIMITED_CREDITS,
            "UsedCredits": self.store.usage(caller.owner),
            "ExpireTimestamp": 0,
        }


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


def _translated_prompts(translation: dict[str, Any] | None) -> dict[str, str] | None:
    if not translation:
        return None
    return {
        "Language": translation["source_language"],
        "PositivePrompt": translation["prompt"],
        "NegativePrompt": translation["negative_prompt"],
    }
