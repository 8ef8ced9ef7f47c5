"""A GPU worker: the one thread that touches its device and the pipelines loaded on it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from PIL.Image import Image

from models.cache import PipelineCache
from models.catalogue import Catalogue, ModelKind, ModelSpec, UnknownModelError
from models.loader import ModelLoadError
from pipelines.adapters import adapted
from pipelines.handle import JobHandle
from pipelines.jobs import (
    ErrorCode,
    GenerationJob,
    JobError,
    JobKind,
    JobProgress,
    JobResult,
    JobState,
    PreprocessJob,
)
from pipelines.queue import JobQueue
from pipelines.runners import RUNNERS
from pipelines.runners import preprocess as preprocess_runner
from pipelines.runners.common import Resources, RunContext, StepReporter

log = logging.getLogger(__name__)

MASKED_KINDS = frozenset({JobKind.INPAINT, JobKind.BACKGROUND})


def detect_devices() -> list[str]:
    """Every visible CUDA device, else the CPU."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def default_dtype(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


class DeviceWorker(threading.Thread):
    def __init__(
        self,
        device: str,
        queue: JobQueue[JobHandle],
        catalogue: Catalogue,
        cache: PipelineCache,
        models_dir: Path | None = None,
    ) -> None:
        super().__init__(name=f"easel-worker-{device}", daemon=True)
        self.device = device
        self.queue = queue
        self.catalogue = catalogue
        self.cache = cache
        self.resources = Resources(catalogue, cache, models_dir)
        self.current: JobHandle | None = None
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            handle = self.queue.take(timeout=0.2)
            if handle is None:
                continue
            self.current = handle
            try:
                self._run_one(handle)
            finally:
                self.current = None

    def _run_one(self, handle: JobHandle) -> None:
        job = handle.job
        if handle.cancel_requested:
            handle.fail_cancelled()
            return
        handle.report(JobProgress(JobState.RUNNING, 0, job.steps))
        try:
            if isinstance(job, PreprocessJob):
                images = self._preprocess(handle, job)
            else:
                images = self._generate(handle, job)
            handle.finish(JobResult(tuple(images), job.seeds))
        except JobError as error:
            handle.fail(error)
        except UnknownModelError as error:
            handle.fail(JobError(ErrorCode.UNKNOWN_MODEL, str(error)))
        except ModelLoadError as error:
            handle.fail(JobError(ErrorCode.MODEL_UNAVAILABLE, str(error)))
        except torch.OutOfMemoryError:
            log.exception("job %s ran out of memory on %s", handle.job_id, self.device)
            handle.fail(JobError(ErrorCode.OUT_OF_MEMORY, "the device ran out of memory"))
        except Exception as error:  # a bug or a broken model must not kill the worker
            log.exception("job %s failed", handle.job_id)
            handle.fail(JobError(ErrorCode.INTERNAL, f"internal error: {type(error).__name__}"))

    def _generate(self, handle: JobHandle, job: GenerationJob) -> list[Image]:
        """A generation: its checkpoint loaded (cached), adapted for this job only, run."""
        spec = self._checkpoint(job)
        pipe = self.cache.get(spec)
        vae_spec = self._vae(job, spec)
        vae = None if vae_spec is None else self.cache.get_vae(vae_spec, spec.architecture)
        context = RunContext(self._step_reporter(handle), vae, self.resources)
        with torch.inference_mode(), adapted(pipe, job, context):
            return RUNNERS[job.kind](pipe, job, context)

    def _preprocess(self, handle: JobHandle, job: PreprocessJob) -> list[Image]:
        """A standalone control map: no checkpoint, only the annotator (on this device)."""
        context = RunContext(self._step_reporter(handle), resources=self.resources)
        with torch.inference_mode():
            return preprocess_runner.run(job, context)

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

    @staticmethod
    def _step_reporter(handle: JobHandle) -> StepReporter:
        def report(step: int, total: int) -> None:
            if handle.cancel_requested:
                raise handle.cancel_reason
            handle.report(JobProgress(JobState.RUNNING, step, total))

        return report
