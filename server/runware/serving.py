"""Runware tasks: wire task objects in, engine jobs and task records out, result items back.

Transport-neutral: the WebSocket and REST front ends (server/runware/router.py) and the legacy
protocol all call `RunwareService.run` once per task and send what it returns. A task's errors
always carry its taskUUID and taskType; its success items never carry code/error/errorId.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from pipelines.engine import Engine
from pipelines.jobs import Job, JobError, ModelInfo, PreprocessJob
from server.access import Admission, QuotaExceeded, QuotaKind
from server.dispatch import Dispatcher
from server.keys import KeyStore
from server.limits import Limits
from server.outbound import Outbound, OutboundError
from server.results import MEDIA_TYPES, PNG, Encoding, ImageFormat, ResultStore, image_url
from server.runware import protocol as wire
from server.runware.common import (
    OPENPOSE_WITH_HANDS_AND_FACE,
    PREPROCESSORS,
    PROTOCOL,
    UNSUPPORTED_PREPROCESSORS,
    Caller,
    Push,
    Reply,
    json_object,
)
from server.runware.errors import Code, RunwareError
from server.runware.inference import InferenceBuilder, image_cost
from server.runware.inputs import ImageInputs
from server.runware.progress import push_progress
from server.runware.utilities import UtilityTasks
from server.summary import job_summary
from server.taskstore import TaskExists, TaskRecord, TaskStatus, TaskStore

log = logging.getLogger(__name__)

TaskHandler = Callable[[dict[str, Any], Caller], Awaitable[list[dict[str, Any]]]]


class DeliveredTask(Protocol):
    """What delivery reads of a task (wire.Task + wire.Delivery). Read-only, so a wire model
    whose deliveryMethod is a Literal and the frozen _Delivery both qualify."""

    @property
    def taskType(self) -> str: ...
    @property
    def taskUUID(self) -> str: ...
    @property
    def uploadEndpoint(self) -> str | None: ...
    @property
    def deliveryMethod(self) -> str | None: ...
    @property
    def webhookURL(self) -> str | None: ...


# Real Runware task types easel does not serve (video, audio, PhotoMaker...): a clear error.
NOT_YET_SERVED = frozenset(
    {
        "photoMaker",
        "imageMasking",
        "vectorize",
        "videoInference",
        "audioInference",
        "textInference",
    }
)
OUTPUT_FORMATS: dict[str, ImageFormat] = {
    "PNG": ImageFormat.PNG,
    "JPG": ImageFormat.JPEG,
    "JPEG": ImageFormat.JPEG,
    "WEBP": ImageFormat.WEBP,
}
DEFAULT_OUTPUT_FORMAT = "JPG"  # Runware's default
DEFAULT_OUTPUT_QUALITY = 95
DEFAULT_OUTPUT_TYPE: Final = "URL"
# Runware model categories and architectures, as modelSearch reports them.
CATEGORIES: dict[str, str] = {
    "checkpoint": "checkpoint",
    "lora": "lora",
    "embedding": "embeddings",
    "hypernetwork": "hypernetwork",
    "controlnet": "controlnet",
    "ip_adapter": "ipadapter",
    "vae": "vae",
}
ARCHITECTURES: dict[str, str] = {
    "sd1": "sd1x",
    "sd2": "sd2x",
    "sdxl": "sdxl",
    "sdxl-refiner": "sdxl",
}
# The task store keeps engine error codes; a failed upload is the front end's own.
DELIVERY_FAILED = "delivery_failed"
# Tasks that queue no work: they are not counted against a key's task rate.
UNMETERED_TASKS = frozenset({"getResponse", "modelSearch"})
QUOTA_CODES: dict[QuotaKind, Code] = {
    QuotaKind.RATE: Code.RATE_LIMITED,
    QuotaKind.CONCURRENCY: Code.TOO_MANY_TASKS,
}
# includeCost figures are dollars; a key's usage counter keeps whole micro-dollars.
MICRO_DOLLARS = 1_000_000


class RunwareService:
    def __init__(
        self,
        engine: Engine,
        dispatcher: Dispatcher,
        store: TaskStore,
        results: ResultStore,
        keys: KeyStore,
        outbound: Outbound,
        public_url: str | None = None,
        admission: Admission | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.engine = engine  # the model catalogue: listings and request validation
        self.dispatcher = dispatcher
        self.store = store
        self.results = results
        self.keys = keys
        self.outbound = outbound
        self.public_url = public_url
        self.admission = admission or Admission(keys, store)
        self.limits = limits or Limits()
        self.inputs = ImageInputs(results, outbound, self.limits)
        self.builder = InferenceBuilder(engine, self.inputs, self.limits)
        self._background: set[asyncio.Task[None]] = set()
        self.utilities = UtilityTasks(self)
        self.handlers: dict[str, TaskHandler] = {
            "imageInference": self.image_inference,
            "imageUpload": self.image_upload,
            "getResponse": self.get_response,
            "imageControlNetPreProcess": self.controlnet_preprocess,
            "controlNetPreprocess": self.controlnet_preprocess,
            "modelSearch": self.model_search,
            **self.utilities.handlers,
        }

    # --- authentication ---

    def authenticate(self, api_key: Any) -> str:
        """The owner id of an API key; RunwareError invalidApiKey otherwise. With no keys
        configured the server runs open and any key (or none) is accepted."""
        if self.keys.open:
            return ""
        if not isinstance(api_key, str) or not api_key:
            raise RunwareError(Code.MISSING_API_KEY, "an apiKey is required", "apiKey")
        key = self.keys.runware_key(api_key)
        if key is None:
            raise RunwareError(Code.INVALID_API_KEY, "Invalid API key", "apiKey")
        return key.owner

    def admit(self, caller: Caller) -> None:
        """RunwareError unless the caller's key may queue one more task now."""
        try:
            self.admission.admit(caller.owner)
        except QuotaExceeded as error:
            raise RunwareError(QUOTA_CODES[error.kind], error.message) from None

    def caller(self, owner: str, base_url: str) -> Caller:
        return Caller(owner, self.public_url or base_url)

    # --- one task ---

    async def run(self, task: Any, caller: Caller) -> Reply:
        """Run one task to its answer: its data items, or its error items."""
        task_type = task.get("taskType") if isinstance(task, dict) else None
        task_uuid = task.get("taskUUID") if isinstance(task, dict) else None
        task_type = task_type if isinstance(task_type, str) else None
        task_uuid = task_uuid if isinstance(task_uuid, str) else None
        try:
            if not isinstance(task, dict):
                raise RunwareError(Code.INVALID_MESSAGE, "each task must be a JSON object")
            if task_type is None:
                raise RunwareError(Code.MISSING_PARAMETER, "missing taskType", "taskType")
            if task_type == "ping":
                return Reply(data=[{"taskType": "ping", "pong": True}])
            handler = self.handlers.get(task_type)
            if handler is None:
                if task_type in NOT_YET_SERVED:
                    raise RunwareError(
                        Code.UNSUPPORTED_TASK_TYPE,
                        f"the task type {task_type} is not supported by this server yet",
                        "taskType",
                    )
                raise RunwareError(
                    Code.UNKNOWN_TASK_TYPE, f"unknown taskType {task_type!r}", "taskType"
                )
            if task_uuid is None:
                raise RunwareError(Code.MISSING_PARAMETER, "missing taskUUID", "taskUUID")
            if task_type not in UNMETERED_TASKS:
                self.admit(caller)
            return Reply(data=await handler(task, caller))
        except RunwareError as error:
            return Reply(errors=[error.item(task_type, task_uuid)])
        except Exception:
            log.exception("Runware %s %s failed", task_type, task_uuid)
            internal = RunwareError(Code.INTERNAL_ERROR, "internal server error")
            return Reply(errors=[internal.item(task_type, task_uuid)])

    # --- imageInference ---

    async def image_inference(self, task: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        req = wire.parse(wire.ImageInference, task)
        output = self.output_options(req)
        built = await self.builder.build(req, caller.owner)
        job = built.job
        cost = image_cost(job.width, job.height, job.steps)
        record = TaskRecord(
            task_id=req.taskUUID,
            protocol=PROTOCOL,
            action=req.taskType,
            owner=caller.owner,
            seeds=list(job.seeds),
            params={
                "job": job_summary(job),
                "output": {**output, "cost": cost},
                "deliveryMethod": req.deliveryMethod or "sync",
            },
        )
        encoding = Encoding(ImageFormat(output["format"]), output["quality"])
        follower = self.submit(record, job, encoding, self.delivery(req, caller))
        return await self.deliver(req, record, caller, follower)

    @staticmethod
    def output_options(req: wire.OutputOptions) -> dict[str, Any]:
        """The record's `output` params: result types, image format and quality, includeCost."""
        fmt = OUTPUT_FORMATS[req.outputFormat or DEFAULT_OUTPUT_FORMAT]
        return {
            "types": list(req.outputType or [DEFAULT_OUTPUT_TYPE]),
            "format": fmt.value,
            "quality": req.outputQuality or DEFAULT_OUTPUT_QUALITY,
            "include_cost": bool(req.includeCost),
        }

    def submit(
        self,
        record: TaskRecord,
        job: Job,
        encoding: Encoding,
        delivery: dict[str, Any] | None = None,
    ) -> asyncio.Task[None]:
        """Store the record, queue the job; the tracker's follower (ends with the record)."""
        self._create(record)
        try:
            follower = self.dispatcher.submit(record.task_id, job, encoding, delivery)
        except JobError as error:
            self.store.delete(record.task_id)
            raise RunwareError.from_engine(error.code.value, error.message) from None
        cost = record.params.get("output", {}).get("cost", 0.0)
        self.store.add_usage(record.owner, round(cost * MICRO_DOLLARS))
        return follower

    async def deliver(
        self, req: DeliveredTask, record: TaskRecord, caller: Caller, follower: Awaitable[None]
    ) -> list[dict[str, Any]]:
        """A submitted task's answer: its items once it ends (sync), or at once the async
        acknowledgement while delivery goes on in the background (the client polls)."""
        if req.deliveryMethod == "async":
            return self._acknowledge(
                req.taskType,
                req.taskUUID,
                caller,
                self._finish(record.task_id, caller, req, follower),
            )
        with self.dispatcher.waiting_request():  # a shutdown lets it finish (Dispatcher.drain)
            return await self._finish(record.task_id, caller, req, follower)

    def _acknowledge(
        self,
        task_type: str,
        task_uuid: str,
        caller: Caller,
        finish: Awaitable[list[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """An async task's acknowledgement; `finish` (delivery, then the result items) goes on
        in the background. On a WebSocket its progress is pushed while it runs, then its items
        or its error (server/runware/progress.py)."""
        finishing = asyncio.ensure_future(finish)
        self._in_background(finishing)
        if caller.push is not None:
            self._in_background(self._push_live(task_type, task_uuid, caller.push, finishing))
        return [{"taskType": task_type, "taskUUID": task_uuid, "status": "processing"}]

    async def _push_live(
        self,
        task_type: str,
        task_uuid: str,
        push: Push,
        finishing: asyncio.Future[list[dict[str, Any]]],
    ) -> None:
        await push_progress(self.store, task_type, task_uuid, push, finishing)
        error = finishing.exception()
        if error is None:
            push(Reply(data=finishing.result()))
            return
        if not isinstance(error, RunwareError):
            error = RunwareError(Code.INTERNAL_ERROR, "internal server error")
        push(Reply(errors=[error.item(task_type, task_uuid)]))

    @staticmethod
    def delivery(req: DeliveredTask, caller: Caller) -> dict[str, Any] | None:
        """What resume_delivery needs to upload / post a task's result after a restart (the
        dispatcher keeps it with the job); None when the result only goes back in the reply."""
        if not (req.uploadEndpoint or req.webhookURL):
            return None
        return {
            "protocol": PROTOCOL,
            "taskType": req.taskType,
            "taskUUID": req.taskUUID,
            "uploadEndpoint": req.uploadEndpoint,
            "webhookURL": req.webhookURL,
            "owner": caller.owner,
            "base_url": caller.base_url,
        }

    def resume_delivery(
        self, task_id: str, delivery: dict[str, Any], follower: Awaitable[None]
    ) -> None:
        """Upload / post the result of a task the server runs again after a restart."""
        req = _Delivery(
            taskType=str(delivery["taskType"]),
            taskUUID=task_id,
            uploadEndpoint=delivery.get("uploadEndpoint"),
            deliveryMethod="async",
            webhookURL=delivery.get("webhookURL"),
        )
        caller = Caller(str(delivery["owner"]), str(delivery["base_url"]))
        self._in_background(self._finish(task_id, caller, req, follower))

    async def drain(self, timeout: float) -> None:
        """Let deliveries under way finish (at shutdown, before the outbound client closes)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    async def _finish(
        self,
        task_id: str,
        caller: Caller,
        req: DeliveredTask,
        follower: Awaitable[None],
    ) -> list[dict[str, Any]]:
        """Wait for the task's record to be final, deliver (uploadEndpoint, webhookURL), and
        return its items (RunwareError if it failed)."""
        await follower
        record = self.store.get(task_id)
        try:
            if record is None:
                raise RunwareError(Code.INTERNAL_ERROR, "the task's record disappeared")
            items = await self._items(record, caller)
            if req.uploadEndpoint:
                await self._upload(record, req.uploadEndpoint)
        except RunwareError as error:
            if req.webhookURL:
                await self._post_webhook(
                    req.webhookURL, {"errors": [error.item(req.taskType, task_id)]}
                )
            raise
        if req.webhookURL:
            for item in items:
                await self._post_webhook(req.webhookURL, {"data": [item]})
        return items

    async def _upload(self, record: TaskRecord, url: str) -> None:
        for image_id in record.image_ids:
            found = await asyncio.to_thread(self.results.read, image_id)
            if found is None:
                continue
            data, fmt = found
            try:
                await self.outbound.put(url, data, MEDIA_TYPES[fmt])
            except OutboundError as error:
                message = f"uploadEndpoint {error}"
                self.store.fail_delivery(record.task_id, DELIVERY_FAILED, message)
                raise RunwareError(Code.DELIVERY_FAILED, message, "uploadEndpoint") from None

    async def _post_webhook(self, url: str, payload: dict[str, Any]) -> None:
        try:
            await self.outbound.post_json(url, payload)
        except OutboundError as error:
            # Without its query string: webhook URLs often carry a signature or token there.
            log.warning("webhook %s failed: %s", url.split("?", 1)[0], error)

    async def _items(self, record: TaskRecord, caller: Caller) -> list[dict[str, Any]]:
        """A finished record's result items; RunwareError for a failed one."""
        if record.status is TaskStatus.ERROR:
            if record.error_code == DELIVERY_FAILED:
                raise RunwareError(Code.DELIVERY_FAILED, record.error_message, "uploadEndpoint")
            raise RunwareError.from_engine(record.error_code, record.error_message)
        if record.action in ("imageControlNetPreProcess", "controlNetPreprocess"):
            return [await self._preprocess_item(record, caller)]
        if record.action in self.utilities.handlers:
            return await self.utilities.items(record, caller)
        output = record.params.get("output", {})
        nsfw = record.outputs.get("nsfw", [])
        items = []
        for i, image_id in enumerate(record.image_ids):
            item: dict[str, Any] = {
                "taskType": record.action,
                "taskUUID": record.task_id,
                "status": "success",
                "imageUUID": image_id,
                **await self.image_fields(image_id, "image", output, caller),
            }
            if i < len(record.seeds):
                item["seed"] = record.seeds[i]
            if i < len(nsfw):
                item["NSFWContent"] = nsfw[i]
            if output.get("include_cost"):
                item["cost"] = output.get("cost", 0.0)
            items.append(item)
        return items

    async def image_fields(
        self, image_id: str, prefix: str, output: dict[str, Any], caller: Caller
    ) -> dict[str, Any]:
        """imageURL (always: SDKs take it as the sign of a finished image) plus the
        base64Data / dataURI forms the client asked for."""
        fmt = self.results.format_of(image_id) or ImageFormat.PNG
        fields: dict[str, Any] = {f"{prefix}URL": image_url(caller.base_url, image_id, fmt)}
        types = output.get("types", [DEFAULT_OUTPUT_TYPE])
        if "base64Data" in types or "dataURI" in types:
            found = await asyncio.to_thread(self.results.read, image_id)
            data = b"" if found is None else found[0]
            encoded = base64.b64encode(data).decode("ascii")
            if "base64Data" in types:
                fields[f"{prefix}Base64Data"] = encoded
            if "dataURI" in types:
                fields[f"{prefix}DataURI"] = f"data:{MEDIA_TYPES[fmt]};base64,{encoded}"
        return fields

    def _in_background(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except RunwareError:
                pass  # the record holds the error; getResponse reports it
            except Exception:
                log.exception("background delivery failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- getResponse ---

    async def get_response(self, task: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        req = wire.parse(wire.GetResponse, task)
        record = self.store.get(req.taskUUID)
        if record is None or record.protocol != PROTOCOL or record.owner != caller.owner:
            raise RunwareError(
                Code.TASK_NOT_FOUND, f"no task with taskUUID {req.taskUUID}", "taskUUID"
            )
        if not record.status.ended:
            return [
                {
                    "taskType": record.action,
                    "taskUUID": record.task_id,
                    "status": "processing",
                    "progress": round(100 * record.progress),
                }
            ]
        try:
            return await self._items(record, caller)
        except RunwareError as error:
            # The error belongs to the original task: route it by that task's type.
            raise _Routed(error, record.action) from None

    # --- imageUpload ---

    async def image_upload(self, task: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        req = wire.parse(wire.ImageUpload, task)
        image_id = self.inputs.uuid_of(req.image)
        if image_id is None or not self.inputs.owns(image_id, caller.owner):
            image = await self.inputs.load(req.image, "image", caller.owner)
            image_id = await asyncio.to_thread(self.results.save, image, PNG, caller.owner)
        self._record_finished(req.taskUUID, req.taskType, caller, [image_id])
        fmt = self.results.format_of(image_id) or ImageFormat.PNG
        return [
            {
                "taskType": req.taskType,
                "taskUUID": req.taskUUID,
                "imageUUID": image_id,
                "imageURL": image_url(caller.base_url, image_id, fmt),
            }
        ]

    def _record_finished(
        self, task_uuid: str, action: str, caller: Caller, image_ids: list[str]
    ) -> None:
        """A record for work done at once (uploads): it makes the images expire with it."""
        self._create(
            TaskRecord(
                task_id=task_uuid,
                protocol=PROTOCOL,
                action=action,
                owner=caller.owner,
                status=TaskStatus.FINISHED,
                progress=1.0,
                image_ids=image_ids,
            )
        )

    def _create(self, record: TaskRecord) -> None:
        """Store a new task record; conflictTaskUUID when its taskUUID is taken."""
        try:
            self.store.create(record)
        except TaskExists:
            raise RunwareError(
                Code.CONFLICT_TASK_UUID,
                f"the taskUUID {record.task_id} is already in use",
                "taskUUID",
            ) from None

    # --- ControlNet preprocessing ---

    async def controlnet_preprocess(
        self, task: dict[str, Any], caller: Caller
    ) -> list[dict[str, Any]]:
        req = wire.parse(wire.ControlNetPreProcess, _preprocess_fields(task))
        code = self._preprocessor_code(req)
        options: dict[str, float] = {}
        if req.lowThresholdCanny is not None:
            options["low_threshold"] = float(req.lowThresholdCanny)
        if req.highThresholdCanny is not None:
            options["high_threshold"] = float(req.highThresholdCanny)
        if options and code != "canny":
            raise RunwareError(
                Code.INVALID_PARAMETER,
                "lowThresholdCanny / highThresholdCanny only apply to the canny preprocessor",
                "lowThresholdCanny",
            )
        image, input_id = await self.inputs.load_kept(req.inputImage, "inputImage", caller.owner)
        job = PreprocessJob(
            image=image,
            preprocessor=code,
            options=options,
            width=req.width,
            height=req.height,
            owner=caller.owner,
        )
        output = self.output_options(req)
        record = TaskRecord(
            task_id=req.taskUUID,
            protocol=PROTOCOL,
            action=req.taskType,
            owner=caller.owner,
            params={"preprocessor": code, "input_image": input_id, "output": output},
        )
        encoding = Encoding(ImageFormat(output["format"]), output["quality"])
        items = self._items_when_done(record, caller, self.submit(record, job, encoding))
        if task.get("deliveryMethod") == "async":
            return self._acknowledge(req.taskType, req.taskUUID, caller, items)
        with self.dispatcher.waiting_request():
            return await items

    async def _items_when_done(
        self, record: TaskRecord, caller: Caller, follower: Awaitable[None]
    ) -> list[dict[str, Any]]:
        await follower
        return await self._items(self.store.get(record.task_id) or record, caller)

    def _preprocessor_code(self, req: wire.ControlNetPreProcess) -> str:
        name = req.preProcessorType
        if name in UNSUPPORTED_PREPROCESSORS:
            raise RunwareError(
                Code.INVALID_PARAMETER,
                f"preProcessorType {name}: {UNSUPPORTED_PREPROCESSORS[name]}",
                "preProcessorType",
            )
        known = {p.code for p in self.engine.list_preprocessors()}
        code = PREPROCESSORS.get(name, name if name in known else None)
        if code is None:
            names = ", ".join(sorted(set(PREPROCESSORS) | known))
            raise RunwareError(
                Code.INVALID_PARAMETER,
                f"unknown preProcessorType {name!r} (known: {names})",
                "preProcessorType",
            )
        if code == "openpose" and req.includeHandsAndFaceOpenPose:
            code = OPENPOSE_WITH_HANDS_AND_FACE
        return code

    async def _preprocess_item(self, record: TaskRecord, caller: Caller) -> dict[str, Any]:
        guide_id = record.image_ids[0]
        return {
            "taskType": record.action,
            "taskUUID": record.task_id,
            "status": "success",
            "guideImageUUID": guide_id,
            "inputImageUUID": record.params.get("input_image"),
            **await self.image_fields(guide_id, "guideImage", record.params["output"], caller),
        }

    # --- modelSearch ---

    async def model_search(self, task: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        req = wire.parse(wire.ModelSearch, task)
        found = [
            m for m in self.engine.list_models(None) if m.kind in CATEGORIES and _matches(m, req)
        ]
        page = found[req.offset : req.offset + req.limit]
        aliases: dict[str, list[str]] = {}
        for alias, code in self.engine.model_aliases().items():
            aliases.setdefault(code, []).append(alias)
        return [
            {
                "taskType": req.taskType,
                "taskUUID": req.taskUUID,
                "totalResults": len(found),
                "results": [
                    _model_entry(m, aliases.get(m.code, []) if m.kind == "checkpoint" else [])
                    for m in page
                ],
            }
        ]


@dataclass(frozen=True)
class _Delivery:
    """A DeliveredTask rebuilt from a journaled delivery (server.dispatch)."""

    taskType: str
    taskUUID: str
    uploadEndpoint: str | None
    deliveryMethod: str | None
    webhookURL: str | None


class _Routed(RunwareError):
    """An error reported for another task type than the request's (getResponse)."""

    def __init__(self, error: RunwareError, task_type: str) -> None:
        super().__init__(error.code, error.message, error.parameter)
        self.task_type = task_type

    def item(self, task_type: str | None, task_uuid: str | None) -> dict[str, Any]:
        return super().item(self.task_type, task_uuid)


def _preprocess_fields(task: dict[str, Any]) -> dict[str, Any]:
    """The newer controlNetPreprocess task (model "runware:controlnet-preprocess@canny",
    inputs.image, settings) in the older imageControlNetPreProcess's field names."""
    if task.get("taskType") != "controlNetPreprocess":
        return task
    fields = {k: v for k, v in task.items() if k not in ("inputs", "settings", "model")}
    inputs = json_object(task.get("inputs"))
    settings = json_object(task.get("settings"))
    model = task.get("model")
    if isinstance(model, str) and "@" in model:
        fields["preProcessorType"] = model.rsplit("@", 1)[1]
    if "image" in inputs:
        fields["inputImage"] = inputs["image"]
    return {**settings, **fields}


def _matches(model: ModelInfo, req: wire.ModelSearch) -> bool:
    if req.category and CATEGORIES[model.kind] != req.category.lower():
        return False
    if req.architecture and ARCHITECTURES.get(model.architecture, "") != req.architecture.lower():
        return False
    if req.search:
        needle = req.search.lower()
        haystack = [model.code, model.name, *model.public_ids, *model.trigger_words]
        if not any(needle in text.lower() for text in haystack):
            return False
    return True


def _air(model: ModelInfo, aliases: list[str]) -> str:
    """The id a client should send for the model: the first AIR-shaped one (source:id@version;
    SDKs look up anything else online), else its code."""
    ids = [*model.public_ids, *aliases]
    return next((i for i in ids if ":" in i and "@" in i), model.code)


# Appended to a demo model's name, so that lists built from the names (the playground's) say so.
DEMO_NAME_NOTE = " (demo: draws noise)"


def _model_entry(model: ModelInfo, aliases: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "air": _air(model, aliases),
        "name": model.name + (DEMO_NAME_NOTE if model.is_demo else ""),
        "version": "1",
        "category": CATEGORIES[model.kind],
        "architecture": ARCHITECTURES.get(model.architecture, ""),
        "tags": [],
        "private": False,
        "comment": model.description,
        "heroImage": "",
    }
    if model.trigger_words:
        entry["positiveTriggerWords"] = ", ".join(model.trigger_words)
    if model.default_steps is not None:
        entry["defaultSteps"] = model.default_steps
    if model.default_guidance_scale is not None:
        entry["defaultCFG"] = model.default_guidance_scale
    if model.default_sampler is not None:
        entry["defaultScheduler"] = model.default_sampler
    return entry
