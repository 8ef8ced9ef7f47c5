"""The engine front ends talk to: submit a job, get a handle; list and resolve models.

Admission is the batch former (pipelines.batching.former): bounded (full -> JobError BUSY at
once), priority and owner-fair, grouping jobs by batch key. One worker thread per device takes
batches from it (preferring models it has loaded) and runs them: plain txt2img / img2img in the
continuous denoising loop, other kinds as one batched pipeline call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from models.cache import PipelineCache
from models.catalogue import Catalogue, ModelKind, ModelSpec, UnknownModelError
from models.manifest import ManifestError
from models.registry import build_catalogue
from models.utility_models import UtilityModel
from pipelines.batching.budget import MemoryBudget, cuda_activation_budget
from pipelines.batching.former import BatchFormer, BatchPolicy, QueueFull
from pipelines.batching.keys import BatchKey, BatchMode, batch_key
from pipelines.batching.stats import EngineStats
from pipelines.config import EngineConfig as EngineConfig  # re-exported: its old home
from pipelines.handle import JobHandle
from pipelines.jobs import (
    CaptionJob,
    ErrorCode,
    GenerationJob,
    Job,
    JobError,
    JobKind,
    ModelInfo,
    PreprocessJob,
    PreprocessorInfo,
    UtilityJob,
)
from pipelines.metrics import EngineMetrics
from pipelines.preprocessors import list_preprocessors
from pipelines.runners import preprocess as preprocess_runner
from pipelines.runners import refiner
from pipelines.samplers import is_known_sampler
from pipelines.status import EngineStatus
from pipelines.utilities import UTILITIES, safety, translation
from pipelines.utilities.installed import installed_model
from pipelines.worker import DeviceWorker, WorkerParts, default_dtype, detect_devices

log = logging.getLogger(__name__)


COMPILE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
HANDBACK_THREADS = 2  # PIL conversion of finished images, off the GPU threads
STOP_JOIN_S = 30.0  # how long a stopping worker may take to notice its jobs were cancelled


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
        self.stats = EngineStats()
        self.metrics = EngineMetrics(self.stats, self.status, self.devices)
        self.budget = self._budget()
        self._former: BatchFormer[JobHandle] = BatchFormer(
            BatchPolicy(capacity=self.config.max_queue, window=self.config.batch_window),
            self.max_images,
        )
        self._handles: dict[str, JobHandle] = {}
        self._workers: list[DeviceWorker] = []
        self._handback: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _budget(self) -> MemoryBudget:
        """How many images one batch may hold: a hard cap, and on GPUs what the smallest
        device's memory leaves for activations once weights are reserved."""
        gpus = [device for device in self.devices if device.startswith("cuda")]
        cap = self.config.max_batch_images or (64 if gpus else 16)
        if not gpus:
            return MemoryBudget(max_images=cap)
        import torch

        smallest = min(torch.cuda.get_device_properties(d).total_memory for d in gpus)
        activations = cuda_activation_budget(smallest, self.config.weights_reserve_bytes)
        return MemoryBudget(max_images=cap, activation_bytes=activations)

    def max_images(self, key: Hashable) -> int:
        if not isinstance(key, BatchKey) or key.mode is BatchMode.SINGLE:
            return 1
        return self.budget.max_images_for(key.architecture, key.width, key.height)

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
        self._handback = ThreadPoolExecutor(HANDBACK_THREADS, thread_name_prefix="easel-handback")
        parts = WorkerParts(
            former=self._former,
            max_images=self.max_images,
            catalogue=self.catalogue,
            stats=self.stats,
            handback=self._handback,
            models_dir=self.config.models_dir,
            compile_buckets=COMPILE_BUCKETS if self.config.compile else (),
            metrics=self.metrics,
            preload=self._preloaded(),
        )
        for device in self.devices:
            cache = PipelineCache(
                device,
                default_dtype(device, self.config.dtype),
                max_models=self.config.max_models_per_device,
                cache_dir=self.config.cache_dir,
                allow_pickle=self.config.allow_pickle,
                listener=self.metrics.cache_listener(device),
            )
            worker = DeviceWorker(device, cache, parts)
            worker.start()
            self._workers.append(worker)
        log.info("engine started on %s", ", ".join(self.devices))

    def _preloaded(self) -> tuple[ModelSpec, ...]:
        """The checkpoints EngineConfig.preload names; unknown ones are logged and skipped."""
        specs: dict[str, ModelSpec] = {}
        for identifier in self.config.preload:
            try:
                spec = self.catalogue.resolve(identifier or None, ModelKind.CHECKPOINT)
            except UnknownModelError as error:
                log.error("cannot preload %r: %s", identifier, error)
                continue
            specs.setdefault(spec.code, spec)
        return tuple(specs.values())

    def drain(self) -> None:
        """Start no more batches (and let no job join a running one): what runs now goes on,
        what waits stays queued until stop(). The server calls it once a shutdown signal has
        come and no open request waits for a result, so that no batch starts only to be cut."""
        for worker in self._workers:
            worker.stop()  # it ends after its current batch

    async def stop(self, grace: float = 0.0) -> None:
        """Stop taking jobs. Waiting jobs end as interrupted at once; the batches running now
        may finish within `grace` seconds (no job joins them), then the jobs still running are
        asked to stop and end as interrupted too. A front end that keeps its jobs across
        restarts (the single server's journal, the cluster's queues) runs interrupted jobs
        again later."""
        shutdown = JobError(ErrorCode.INTERRUPTED, "the server shut down before the task finished")
        for handle in self._former.close():
            handle.fail(shutdown)
        self.drain()
        deadline = time.monotonic() + grace
        for worker in self._workers:
            await asyncio.to_thread(worker.join, max(0.0, deadline - time.monotonic()))
        cut = [h for worker in self._workers if worker.is_alive() for h in worker.running()]
        if cut:
            log.warning("stopping %d running job(s) after the %.0f s grace period", len(cut), grace)
        for handle in cut:
            handle.cancel(shutdown)
        for worker in self._workers:
            await asyncio.to_thread(worker.join, STOP_JOIN_S)
            if worker.is_alive():
                log.error("the %s worker did not stop within %.0f s", worker.device, STOP_JOIN_S)
        self._workers.clear()
        if self._handback is not None:
            await asyncio.to_thread(self._handback.shutdown, wait=True)
            self._handback = None

    # --- jobs ---

    def submit(self, job: Job, *, job_id: str) -> JobHandle:
        """Queue a job; JobError at once if it cannot run (unknown model, busy, ...)."""
        if self._loop is None:
            raise RuntimeError("the engine is not started")
        with self.stats.overhead("admission"):
            handle = self._admit(job, job_id)
        self._handles[job_id] = handle
        self.stats.count("jobs_submitted")
        self._loop.create_task(self._forget_when_done(handle))
        return handle

    def validate(self, job: Job) -> ModelInfo | None:
        """The checkpoint the job runs on (None: preprocessing and utilities); JobError when it
        cannot run.

        Cluster API replicas call this before queueing, so a bad request fails at once there
        and the checkpoint code picks the job's queue.
        """
        return self._validated(job)[0]

    def _validated(self, job: Job) -> tuple[ModelInfo | None, str]:
        """The job's checkpoint (None: preprocessing and utilities) and the model its batch key
        names: the checkpoint's code, a utility model's path, "" for preprocessing."""
        if isinstance(job, PreprocessJob):
            preprocess_runner.validate(job, self.config.models_dir)
            return None, ""
        if not isinstance(job, GenerationJob):
            return None, str(self._validate_utility(job).path)
        model = self._validate_generation(job)
        return model, model.code

    def _validate_utility(self, job: UtilityJob) -> UtilityModel:
        """The installed model a utility job runs on; JobError when there is none (or none by
        the name asked) or the job cannot run."""
        model = installed_model(self.config.models_dir, UTILITIES[type(job)].utility, job.model)
        UTILITIES[type(job)].check(job)
        if isinstance(job, CaptionJob) and job.language not in (None, translation.ENGLISH):
            translation.check_installed(self.config.models_dir)
        return model

    def _admit(self, job: Job, job_id: str) -> JobHandle:
        """Validate, key and queue the job; JobError when it cannot run or the queue is full."""
        assert self._loop is not None
        checkpoint, model = self._validated(job)
        architecture = "" if checkpoint is None else checkpoint.architecture
        key = batch_key(job, job_id=job_id, model=model, architecture=architecture)
        handle = JobHandle(job_id, job, self._loop, self._cancel)
        try:
            self._former.put(
                job_id,
                handle,
                batch_key=key,
                owner=job.owner,
                priority=job.priority,
                images=job.num_images,
            )
        except QueueFull as full:
            raise JobError(ErrorCode.BUSY, f"the server is busy: {full}") from None
        return handle

    def _validate_generation(self, job: GenerationJob) -> ModelInfo:
        """The job's checkpoint; JobError when the job cannot run."""
        model = self.resolve_model(job.model)
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
        if job.check_nsfw:
            safety.check_installed(self.config.models_dir)
        if translation.source_language(job) is not None:
            translation.check_installed(self.config.models_dir)
        return model

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if the engine does not hold it."""
        handle = self._handles.get(job_id)
        if handle is None:
            return False
        handle.cancel()
        return True

    def _cancel(self, handle: JobHandle) -> None:
        if self._former.remove(handle.job_id) is not None:
            handle.fail_cancelled()
        # A running job sees cancel_requested at its next step boundary.

    async def _forget_when_done(self, handle: JobHandle) -> None:
        try:
            result = await handle.result()
            self.stats.count("jobs_finished")
            self.stats.count("images", len(result.images))
            self.metrics.record_images(len(result.images))
        except JobError:
            self.stats.count("jobs_failed")
        finally:
            self._handles.pop(handle.job_id, None)

    # --- what it is doing ---

    def status(self) -> EngineStatus:
        """The queue, and per device its checkpoints and running batch (any thread)."""
        return EngineStatus(
            queue_jobs=len(self._former),
            queue_images=self._former.images(),
            devices=tuple(worker.status() for worker in list(self._workers)),
            images_per_second=self.metrics.images_per_second(),
        )

    # --- models ---

    def loaded_models(self) -> list[str]:
        """Checkpoint codes some device holds in memory now (cluster routing advertises them)."""
        return sorted({code for worker in self._workers for code in worker.cache.loaded()})

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
