"""A GPU worker: the one thread that touches its device and the pipelines loaded on it.

It takes batches from the batch former (pipelines.batching.former) and runs each by its mode:
- STEP: the continuous denoising loop (pipelines.denoise_loop). After every step it asks the
  former for waiting jobs with the same key that fit, prepares them and lets them in; cancelled
  jobs leave at the step boundary; finished ones leave with their images.
- REQUEST: one runner call for the whole batch (per-image lists); a batch that runs out of
  memory is split in halves and retried.
- SINGLE: the same, one job (preprocessing runs its annotator instead).
Utility jobs (pipelines.utilities) run their utility model the same REQUEST / SINGLE way.
Before a batch runs, jobs that asked for it get their prompt translated to English
(pipelines.utilities.translation); jobs that asked for an NSFW check get their images checked
(pipelines.utilities.safety) before they are settled.
Decoded images go to the hand-back pool, which converts them to PIL and settles the handles, so
the GPU thread goes on with the next step meanwhile.
Before its first batch a worker loads the checkpoints the engine preloads (EngineConfig.preload).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL.Image import Image

from models.cache import PipelineCache
from models.catalogue import Catalogue, ModelKind, ModelSpec, UnknownModelError
from models.loader import ModelLoadError
from pipelines.adapters import adapted
from pipelines.batching.former import BatchFormer
from pipelines.batching.keys import BatchKey, BatchMode
from pipelines.batching.stats import EngineStats
from pipelines.denoise_loop import DenoiseLoop, UNetCall
from pipelines.handle import JobHandle
from pipelines.heap import release_free_memory
from pipelines.jobs import (
    ErrorCode,
    GenerationJob,
    JobError,
    JobKind,
    JobProgress,
    JobResult,
    JobState,
    PreprocessJob,
    UtilityJob,
)
from pipelines.loop_members import Member, prepare, to_images
from pipelines.metrics import EngineMetrics, StepTimer
from pipelines.runners import RUNNERS
from pipelines.runners import preprocess as preprocess_runner
from pipelines.runners.common import Resources, RunContext, StepReporter
from pipelines.status import BatchStatus, DeviceStatus
from pipelines.utilities import UTILITIES, safety, translation
from pipelines.utilities.installed import installed_model

log = logging.getLogger(__name__)

MASKED_KINDS = frozenset({JobKind.INPAINT, JobKind.BACKGROUND})

# Exceptions a job can end with, as the JobError its client sees (anything else: INTERNAL).
FAILURES: dict[type[Exception], ErrorCode] = {
    UnknownModelError: ErrorCode.UNKNOWN_MODEL,
    ModelLoadError: ErrorCode.MODEL_UNAVAILABLE,
    torch.OutOfMemoryError: ErrorCode.OUT_OF_MEMORY,
}


def as_job_error(error: Exception) -> JobError:
    if isinstance(error, JobError):
        return error
    for kind, code in FAILURES.items():
        if isinstance(error, kind):
            message = "the device ran out of memory" if code is ErrorCode.OUT_OF_MEMORY else None
            return JobError(code, message or str(error))
    return JobError(ErrorCode.INTERNAL, f"internal error: {type(error).__name__}")


def detect_devices() -> list[str]:
    """Every visible CUDA device, else the CPU."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


# --dtype names -> torch dtypes; "auto" is fp16 on GPUs (what diffusers users run) and fp32 on
# the CPU (half precision is slow or missing there). bf16 suits GPUs that have it and models whose
# activations overflow fp16; an SDXL VAE decodes in fp32 under fp16 either way (force_upcast).
DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}


def default_dtype(device: str, name: str = "auto") -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    return torch.float16 if device.startswith("cuda") else torch.float32


@dataclass(frozen=True)
class WorkerParts:
    """What every worker of an engine shares."""

    former: BatchFormer[JobHandle]
    max_images: Callable[[Hashable], int]  # images per batch for a key (the memory budget)
    catalogue: Catalogue
    stats: EngineStats
    handback: Executor  # PIL conversion and settling, off the GPU thread
    models_dir: Path | None = None
    compile_buckets: tuple[int, ...] = ()  # non-empty: the loop's UNet is torch.compile'd
    metrics: EngineMetrics | None = None  # step times
    preload: tuple[ModelSpec, ...] = ()  # checkpoints to load before the first batch


class DeviceWorker(threading.Thread):
    def __init__(self, device: str, cache: PipelineCache, parts: WorkerParts) -> None:
        super().__init__(name=f"easel-worker-{device}", daemon=True)
        self.device = device
        self.cache = cache
        self.parts = parts
        self.catalogue = parts.catalogue
        self.resources = Resources(parts.catalogue, cache, parts.models_dir)
        self._running: set[JobHandle] = set()  # jobs on this worker now (the engine may cancel)
        self._running_lock = threading.Lock()
        self._stopping = threading.Event()
        self._compiled: dict[int, UNetCall] = {}
        self._warmed: set[tuple[int, int, int]] = set()
        self._key: Hashable | None = None  # the batch in hand (status)
        self.loading: str | None = None  # the checkpoint being preloaded (status)
        self._step_timer: StepTimer | None = (
            parts.metrics.step_timer(device) if parts.metrics is not None else None
        )

    def stop(self) -> None:
        self._stopping.set()

    def running(self) -> list[JobHandle]:
        """The jobs this worker holds now (taken from the former, not yet settled)."""
        with self._running_lock:
            return list(self._running)

    def _track(self, handles: Sequence[JobHandle]) -> None:
        with self._running_lock:
            self._running.update(handles)

    def _untrack(self, handle: JobHandle) -> None:
        with self._running_lock:
            self._running.discard(handle)

    def status(self) -> DeviceStatus:
        """Its checkpoints and the batch it runs now (read from any thread)."""
        handles, key = self.running(), self._key
        batch = None
        if handles and isinstance(key, BatchKey):
            batch = BatchStatus(
                model=_batch_model(key, handles[0]),
                jobs=len(handles),
                images=sum(handle.job.num_images for handle in handles),
                progress=sum(handle.progress.fraction for handle in handles) / len(handles),
            )
        return DeviceStatus(self.device, tuple(self.cache.loaded()), batch, self.loading)

    def run(self) -> None:
        self._preload()
        while not self._stopping.is_set():
            batch = self.parts.former.take(timeout=0.2, prefer=self._holds)
            if batch is None:
                continue
            self._key = batch.key
            live = [handle for handle in batch.items if not _dropped_if_cancelled(handle)]
            if not live:
                continue
            self._track(live)  # from here on a shutdown cancels them
            live = self._translated(live)
            if not live:
                continue
            key = batch.key
            assert isinstance(key, BatchKey)
            try:
                if key.mode is BatchMode.STEP:
                    self._run_loop(key, live)
                else:
                    self._run_request(live)
            except Exception as error:  # e.g. an adapter refusing the batch's sub-models
                self._fail(self.running(), error)
            finally:
                with self._running_lock:
                    self._running.clear()
                self._key = None
                release_free_memory()  # resident memory stays flat over many batches

    def _preload(self) -> None:
        """Load the preloaded checkpoints, so the server is ready before its first job. A
        failure is logged, not fatal: the first job that needs the model tries again and its
        client learns why."""
        for spec in self.parts.preload:
            if self._stopping.is_set():
                return
            self.loading = spec.code
            try:
                self.cache.get(spec)
            except Exception as error:
                log.error("cannot preload %s on %s: %s", spec.code, self.device, error)
            finally:
                self.loading = None

    def _holds(self, key: Hashable) -> bool:
        """Affinity: this worker has the key's checkpoint loaded."""
        return isinstance(key, BatchKey) and self.cache.holds(key.model)

    # --- STEP: the continuous loop ---

    def _run_loop(self, key: BatchKey, handles: list[JobHandle]) -> None:
        first = handles[0].job
        assert isinstance(first, GenerationJob)
        try:
            pipe, context = self._load(first, _silent_reporter)
        except Exception as error:  # a job's failure, never the worker's
            self._fail(handles, error)
            return
        loop = DenoiseLoop(
            pipe,
            context.vae,
            stats=self.parts.stats,
            unet=self._compiled_unet(pipe),
            buckets=self.parts.compile_buckets,
            step_timer=self._step_timer,
        )
        processor = pipe.image_processor
        with torch.inference_mode(), adapted(pipe, first, context):
            self._warm_up(loop, key)
            self._admit(loop, pipe, context, handles)
            while loop.members:
                try:
                    finished = loop.step()
                except Exception as error:  # a job's failure, never the worker's
                    log.exception("a batched step failed on %s", self.device)
                    self._fail([m.owner for m in loop.members], error)
                    loop.members.clear()
                    break
                for member, images in finished:
                    if member.job.check_nsfw:  # the checker runs here, on the device thread
                        self._settle(member.owner, to_images(processor, images))
                    else:
                        self._hand_back(member.owner, processor, images, member.job.seeds)
                for member in list(loop.members):
                    handle: JobHandle = member.owner
                    if _dropped_if_cancelled(handle):
                        loop.remove(member)
                        self._untrack(handle)
                    else:
                        handle.report(JobProgress(JobState.RUNNING, member.position, member.total))
                room = self.parts.max_images(key) - loop.images
                if room > 0 and not self._stopping.is_set():
                    with self.parts.stats.overhead("forming"):
                        joiners = self.parts.former.join(key, room)
                    if joiners:
                        self._track(joiners)
                        self.parts.stats.count("joins", len(joiners))
                        self._admit(loop, pipe, context, self._translated(joiners))

    def _admit(
        self,
        loop: DenoiseLoop,
        pipe: DiffusionPipeline,
        context: RunContext,
        handles: Sequence[JobHandle],
    ) -> None:
        """Prepare jobs and let them into the loop; one job's bad input fails that job only."""
        for handle in handles:
            if _dropped_if_cancelled(handle):
                continue
            job = handle.job
            assert isinstance(job, GenerationJob)
            try:
                prepared = prepare(pipe, job, context.vae)
            except Exception as error:  # a job's failure, never the worker's
                self._fail([handle], error)
                continue
            if isinstance(prepared, Member):
                prepared.owner = handle
                handle.report(JobProgress(JobState.RUNNING, 0, prepared.total))
                loop.add(prepared)
            else:  # nothing to denoise: its images are ready
                handle.report(JobProgress(JobState.RUNNING, 0, 0))
                self._settle(handle, prepared)

    def _warm_up(self, loop: DenoiseLoop, key: BatchKey) -> None:
        """With torch.compile: build the graphs of every bucket size for this checkpoint and
        size once, before the first batch of that size waits on them."""
        if not self.parts.compile_buckets:
            return
        marker = (id(loop.base.unet), key.width, key.height)
        if marker in self._warmed:
            return
        rows = 2 * self.parts.max_images(key)  # CFG doubles the rows
        started = time.perf_counter()
        sizes = loop.warm_up(key.width, key.height, rows)
        self._warmed.add(marker)
        log.info(
            "compiled UNet warmed up for %dx%d at %s rows in %.1f s",
            key.width,
            key.height,
            sizes,
            time.perf_counter() - started,
        )

    def _compiled_unet(self, pipe: DiffusionPipeline) -> UNetCall | None:
        """The checkpoint's UNet under torch.compile (built once per loaded UNet), when the
        engine compiles; its graphs are per bucket size, warmed up by their first batches."""
        if not self.parts.compile_buckets:
            return None
        key = id(pipe.unet)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(pipe.unet, dynamic=False)
        return self._compiled[key]

    # --- REQUEST / SINGLE: one runner call ---

    def _run_request(self, handles: list[JobHandle]) -> None:
        for handle in handles:
            job = handle.job
            handle.report(JobProgress(JobState.RUNNING, 0, job.steps))
        try:
            job = handles[0].job
            if isinstance(job, PreprocessJob):
                (handle,) = handles
                context = RunContext(self._step_reporter([handle]), resources=self.resources)
                with torch.inference_mode():
                    self._settle(handle, preprocess_runner.run(job, context))
                return
            self._split(
                handles, self._generate if isinstance(job, GenerationJob) else self._utility
            )
        except Exception as error:  # a job's failure, never the worker's
            self._fail(handles, error)

    def _split(
        self, handles: list[JobHandle], call: Callable[[list[JobHandle]], list[JobResult]]
    ) -> None:
        """The batch as one call; on out-of-memory, each half again (a lone job then fails)."""
        live = [handle for handle in handles if not handle.done]
        if not live:
            return
        try:
            results = call(live)
        except JobError as error:
            if len(live) == 1 or error.code is not ErrorCode.INVALID_INPUT:
                raise
            # One job's bad input (found at run time) must not fail the others: each alone.
            for handle in live:
                self._run_request([handle])
            return
        except torch.OutOfMemoryError:
            if len(live) == 1:
                raise
            self.parts.stats.count("oom_splits")
            log.warning("a batch of %d jobs ran out of memory: splitting it", len(live))
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = len(live) // 2
            self._split(live[:half], call)
            self._split(live[half:], call)
            return
        for handle, result in zip(live, results, strict=True):
            if not handle.done:
                self._untrack(handle)
                handle.finish(result)

    def _generate(self, handles: list[JobHandle]) -> list[JobResult]:
        """Jobs with one REQUEST key: their checkpoint (cached), adapted for them, one call."""
        jobs = [handle.job for handle in handles]
        first = jobs[0]
        assert isinstance(first, GenerationJob)
        reporter = self._step_reporter(handles, images=sum(job.num_images for job in jobs))
        pipe, context = self._load(first, reporter)
        with torch.inference_mode(), adapted(pipe, first, context):
            images = RUNNERS[first.kind](pipe, jobs, context)  # type: ignore[arg-type]
            return self._results(handles, images)

    def _utility(self, handles: list[JobHandle]) -> list[JobResult]:
        """Utility jobs with one key: their utility model (cached by the runner), one call."""
        jobs: list[UtilityJob] = [handle.job for handle in handles]  # type: ignore[misc]
        runner = UTILITIES[type(jobs[0])]
        model = installed_model(self.parts.models_dir, runner.utility, jobs[0].model)
        context = RunContext(self._step_reporter(handles), resources=self.resources)
        with torch.inference_mode():
            results = runner.run(jobs, model, context)
        # One utility call is one model pass over every job's inputs (the batch statistics).
        self.parts.stats.record_forward(sum(job.num_images for job in jobs))
        return results

    def _translated(self, handles: list[JobHandle]) -> list[JobHandle]:
        """The handles, with the prompts of jobs that asked for translation in English (one
        translation call for all); a job whose translation fails fails alone."""
        wanted = [
            h
            for h in handles
            if isinstance(h.job, GenerationJob) and translation.source_language(h.job) is not None
        ]
        if not wanted:
            return handles
        try:
            jobs: list[GenerationJob] = [h.job for h in wanted]  # type: ignore[misc]
            with torch.inference_mode():
                translated = translation.to_english(jobs, self.resources)
        except Exception as error:  # a job's failure, never the worker's
            self._fail(wanted, error)
            return [h for h in handles if h not in wanted]
        for handle, (job, done) in zip(wanted, translated, strict=True):
            handle.job, handle.translation = job, done
        return handles

    # --- shared ---

    def _load(
        self, job: GenerationJob, reporter: StepReporter
    ) -> tuple[DiffusionPipeline, RunContext]:
        spec = self._checkpoint(job)
        pipe = self.cache.get(spec)
        vae_spec = self._vae(job, spec)
        vae = None if vae_spec is None else self.cache.get_vae(vae_spec, spec.architecture)
        return pipe, RunContext(reporter, vae, self.resources)

    def _checkpoint(self, job: GenerationJob) -> ModelSpec:
        """The job's checkpoint; for masked redraws, its inpainting variant when installed."""
        spec = self.catalogue.resolve(job.model)
        if job.kind in MASKED_KINDS:
            return self.catalogue.inpainting_variant(spec) or spec
        return spec

    def _vae(self, job: GenerationJob, checkpoint: ModelSpec) -> ModelSpec | None:
        """The VAE to decode with instead of the checkpoint's own: the job's, or with
        use_model_vae off the server's default for the architecture; None = the checkpoint's."""
        if job.vae:
            return self.catalogue.resolve(job.vae, ModelKind.VAE)
        return None if job.use_model_vae else self.catalogue.default_vae(checkpoint.architecture)

    def _step_reporter(self, handles: list[JobHandle], images: int = 0) -> StepReporter:
        """Progress for every job of a runner call. A cancelled job fails at once and is left
        out (the call goes on for the others); when none is left the call stops."""

        last_step: float | None = None

        def report(step: int, total: int) -> None:
            nonlocal last_step
            live = [h for h in handles if not h.done and not _dropped_if_cancelled(h)]
            if not live:
                raise handles[0].cancel_reason
            if total and images:
                self.parts.stats.record_forward(images)
                now = time.perf_counter()
                if last_step is not None and self._step_timer is not None:
                    self._step_timer(now - last_step)  # the first step's start is not seen
                last_step = now
            for handle in live:
                handle.report(JobProgress(JobState.RUNNING, step, total))

        return report

    def _hand_back(
        self,
        handle: JobHandle,
        processor: VaeImageProcessor,
        images: torch.Tensor,
        seeds: tuple[int, ...],
    ) -> None:
        """PIL conversion and settling in the hand-back pool: the GPU thread goes on."""
        self._untrack(handle)

        def finish() -> None:
            with self.parts.stats.overhead("handback"):
                try:
                    pictures = to_images(processor, images)
                except Exception as error:  # a job's failure, never the worker's
                    self._fail([handle], error)
                    return
                handle.finish(JobResult(tuple(pictures), seeds, translation=handle.translation))

        self.parts.handback.submit(finish)

    def _results(
        self, handles: Sequence[JobHandle], images: Sequence[Sequence[Image]]
    ) -> list[JobResult]:
        """Jobs' results from their images: with NSFW flags for the jobs that asked for the
        check (one pass of the checker for all of them, on this thread: it runs on the
        device), and each prompt's translation."""
        wanted = [_checks_nsfw(h) for h in handles]
        checked = [
            image for want, group in zip(wanted, images, strict=True) if want for image in group
        ]
        flags = iter(safety.check_nsfw(checked, self.resources) if checked else [])
        return [
            JobResult(
                tuple(group),
                handle.job.seeds,
                nsfw=tuple(next(flags) for _ in group) if want else (),
                translation=handle.translation,
            )
            for handle, group, want in zip(handles, images, wanted, strict=True)
        ]

    def _settle(self, handle: JobHandle, images: Sequence[Image]) -> None:
        try:
            (result,) = self._results([handle], [images])
        except Exception as error:  # a job's failure, never the worker's
            self._fail([handle], error)
            return
        self._untrack(handle)
        handle.finish(result)

    def _fail(self, handles: Sequence[JobHandle], error: Exception) -> None:
        failure = as_job_error(error)
        if failure.code is ErrorCode.INTERNAL:
            log.error("jobs %s failed", [h.job_id for h in handles], exc_info=error)
        for handle in handles:
            self._untrack(handle)
            if not handle.done:
                handle.fail(failure)


def _dropped_if_cancelled(handle: JobHandle) -> bool:
    """Fail a job whose cancel was requested (at a step boundary); True if it is out."""
    if handle.done:
        return True
    if handle.cancel_requested:
        handle.fail_cancelled()
        return True
    return False


def _checks_nsfw(handle: JobHandle) -> bool:
    return isinstance(handle.job, GenerationJob) and handle.job.check_nsfw


def _batch_model(key: BatchKey, handle: JobHandle) -> str:
    """What a batch runs on, for operators: the checkpoint code, a utility model's file name,
    or "preprocess" for a ControlNet annotator."""
    if isinstance(handle.job, PreprocessJob):
        return "preprocess"
    if isinstance(handle.job, GenerationJob):
        return key.model
    return Path(key.model).name


def _silent_reporter(step: int, total: int) -> None:
    """The loop reports per member itself; the RunContext's reporter is unused there."""
