"""The engine front ends talk to: submit a job, get a handle; list and resolve models.

Admission is a bounded queue (full -> JobError BUSY at once). One worker thread per device takes
jobs from it; this issue's workers run one job at a time (the batching issue replaces the queue
with a batch former behind the same interface).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from models.cache import PipelineCache
from models.catalogue import Catalogue, ModelKind, ModelSpec, UnknownModelError
from models.manifest import ManifestError
from models.registry import build_catalogue
from pipelines.handle import JobHandle
from pipelines.jobs import (
    ErrorCode,
    GenerationJob,
    Job,
    JobError,
    JobKind,
    ModelInfo,
    PreprocessJob,
    PreprocessorInfo,
)
from pipelines.preprocessors import list_preprocessors
from pipelines.queue import JobQueue, QueueFull
from pipelines.runners import preprocess as preprocess_runner
from pipelines.runners import refiner
from pipelines.samplers import is_known_sampler
from pipelines.worker import DeviceWorker, default_dtype, detect_devices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    max_queue: int = 64  # jobs waiting beyond this are refused as busy
    devices: Sequence[str] | None = None  # None: every CUDA device, else the CPU
    max_models_per_device: int = 1
    cache_dir: Path | None = None  # derived files (tokenizers) live here
    models_dir: Path | None = None  # preprocessor weights are looked up under it
    allow_pickle: bool = False


def model_info(spec: ModelSpec) -> ModelInfo:
    d = spec.defaults
    return ModelInfo(
        code=spec.code,
        name=spec.name,
        kind=spec.kind.value,
        architecture=spec.architecture.value,
        description=spec.description,
        is_demo=spec.is_demo,
        trigger_words=spec.trigger_words,
        default_steps=d.steps,
        default_guidance_scale=d.guidance_scale,
        default_sampler=d.sampler,
        default_clip_skip=d.clip_skip,
        public_ids=spec.public_ids,
    )


class Engine:
    def __init__(self, catalogue: Catalogue, config: EngineConfig | None = None) -> None:
        self.catalogue = catalogue
        self.config = config or EngineConfig()
        self.devices = list(self.config.devices or detect_devices())
        self._queue: JobQueue[JobHandle] = JobQueue(self.config.max_queue)
        self._handles: dict[str, JobHandle] = {}
        self._workers: list[DeviceWorker] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(
        cls, models_dir: Path, data_dir: Path, config: EngineConfig | None = None
    ) -> tuple[Engine, list[str]]:
        """An engine over the models directory (plus the demo model); notes on skipped files.

        Raises ValueError with the operator's fix when the manifest is broken.
        """
        config = config or EngineConfig()
        if config.cache_dir is None:
            config = replace(config, cache_dir=data_dir / "cache")
        if config.models_dir is None:
            config = replace(config, models_dir=models_dir)
        try:
            report = build_catalogue(
                models_dir, demo_root=data_dir / "demo", allow_pickle=config.allow_pickle
            )
        except ManifestError as error:
            raise ValueError(str(error)) from None
        notes = [f"skipped {s.path}: {s.reason}" for s in report.skipped]
        return cls(report.catalogue, config), notes

    # --- lifecycle ---

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for device in self.devices:
            cache = PipelineCache(
                device,
                default_dtype(device),
                max_models=self.config.max_models_per_device,
                cache_dir=self.config.cache_dir,
                allow_pickle=self.config.allow_pickle,
            )
            worker = DeviceWorker(
                device, self._queue, self.catalogue, cache, self.config.models_dir
            )
            worker.start()
            self._workers.append(worker)
        log.info("engine started on %s", ", ".join(self.devices))

    async def stop(self) -> None:
        """Stop taking jobs; running jobs are asked to stop; waiting ones end as interrupted."""
        shutdown = JobError(ErrorCode.INTERRUPTED, "the server shut down before the task finished")
        for handle in self._queue.close():
            handle.fail(shutdown)
        for worker in self._workers:
            worker.stop()
            if worker.current is not None:
                worker.current.cancel(shutdown)
        for worker in self._workers:
            await asyncio.to_thread(worker.join, 30)
        self._workers.clear()

    # --- jobs ---

    def submit(self, job: Job, *, job_id: str) -> JobHandle:
        """Queue a job; JobError at once if it cannot run (unknown model, busy, ...)."""
        if self._loop is None:
            raise RuntimeError("the engine is not started")
        if isinstance(job, PreprocessJob):
            preprocess_runner.validate(job, self.config.models_dir)
        else:
            self._validate_generation(job)
        handle = JobHandle(job_id, job, self._loop, self._cancel)
        try:
            self._queue.put(job_id, handle, priority=job.priority)
        except QueueFull as full:
            raise JobError(ErrorCode.BUSY, f"the server is busy: {full}") from None
        self._handles[job_id] = handle
        self._loop.create_task(self._forget_when_done(handle))
        return handle

    def _validate_generation(self, job: GenerationJob) -> None:
        self.resolve_model(job.model)
        if job.sampler is not None and not is_known_sampler(job.sampler):
            raise JobError(ErrorCode.INVALID_INPUT, f"unknown sampler {job.sampler!r}")
        if job.kind is JobKind.IMG2IMG and job.init_image is None:
            raise JobError(ErrorCode.INVALID_INPUT, "image to image needs an init image")
        if not job.seeds:
            raise JobError(ErrorCode.INVALID_INPUT, "a job needs at least one seed")
        if job.vae:
            self.resolve_model(job.vae, ModelKind.VAE.value)
        if job.refiner is not None:
            self.resolve_model(job.refiner.model)
            refiner.check(job)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if the engine does not hold it."""
        handle = self._handles.get(job_id)
        if handle is None:
            return False
        handle.cancel()
        return True

    def _cancel(self, handle: JobHandle) -> None:
        if self._queue.remove(handle.job_id) is not None:
            handle.fail_cancelled()
        # A running job sees cancel_requested at its next step boundary.

    async def _forget_when_done(self, handle: JobHandle) -> None:
        try:
            await handle.result()
        except JobError:
            pass
        finally:
            self._handles.pop(handle.job_id, None)

    # --- models ---

    def list_models(self, kind: str | None = ModelKind.CHECKPOINT.value) -> list[ModelInfo]:
        """Installed models of one kind ("checkpoint", "lora", ...), or of every kind (None)."""
        kinds = list(ModelKind) if kind is None else [ModelKind(kind)]
        return [model_info(spec) for k in kinds for spec in self.catalogue.by_kind(k)]

    def resolve_model(self, identifier: str | None, kind: str = "checkpoint") -> ModelInfo:
        try:
            return model_info(self.catalogue.resolve(identifier, ModelKind(kind)))
        except UnknownModelError as error:
            raise JobError(ErrorCode.UNKNOWN_MODEL, str(error)) from None

    def model_aliases(self) -> dict[str, str]:
        """Public ids (e.g. "PICPIK General") -> the checkpoint code they resolve to."""
        return dict(self.catalogue.aliases)

    def list_preprocessors(self) -> list[PreprocessorInfo]:
        """ControlNet preprocessors, each with whether its weights are installed (and where)."""
        return list_preprocessors(self.config.models_dir)
