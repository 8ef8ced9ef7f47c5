"""Benchmark easel's batching engine: closed-loop clients over HTTP vs sequential plain diffusers.

    python scripts/bench_engine.py --models-dir /tmp/bench-tiny --model bench-tiny \\
        --width 64 --height 64 --steps 10 --concurrency 1,4,16,64 --duration 20 --markdown

Three phases, one after the other so they never compete for the device:
1. Baseline, in a child process: the checkpoint's diffusers folder loaded with
   DiffusionPipeline.from_pretrained (fp16 on CUDA, fp32 on the CPU, diffusers' default SDPA
   attention) runs the job mix one job at a time. The FLOPs of one image are counted on it once
   (FlopCounterMode).
2. `easel serve` starts as a subprocess (its own data directory, the given models directory).
3. For each concurrency level N, N clients each send a Runware `imageInference` over REST
   (POST /v1, answered when the images are done), download the images, and send the next, for a
   warm-up and then a measured window. GET /engine/stats is read at the window's edges: the
   deltas give the mean batch size and the engine's overhead per job.

Reported per level: images/s, speed-up over the baseline, p50/p95 latency, mean batch images,
overhead ms/job, GPU utilisation (nvidia-smi) and MFU (model FLOPs per second / device peak).
docs/benchmarks.md explains the method. The pure helpers (job mix, percentiles, stats deltas,
FLOP accounting) are unit-tested in tests/unit/test_bench_scripts.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

# --- the job mix ---------------------------------------------------------------------------------

PROMPTS: tuple[str, ...] = (
    "a cat sleeping on a sofa, soft window light",
    "a lighthouse on a cliff at dusk, oil painting",
    "portrait of an old fisherman, dramatic lighting, 85mm",
    "a bowl of ramen, food photography, steam",
    "futuristic city skyline at night, neon, rain",
    "a watercolor of a fox in a snowy forest",
    "isometric voxel island with palm trees",
    "a red vintage car parked on a cobblestone street",
    "mountain lake at sunrise, mist, reflections",
    "a cozy reading nook with plants and books",
    "astronaut riding a horse on the moon, digital art",
    "macro photo of a dew drop on a leaf",
    "a medieval castle in the clouds, fantasy concept art",
    "minimalist poster of a whale, flat colors",
    "a robot barista making coffee, cinematic",
    "sunflowers in a field under a stormy sky",
)
NEGATIVE_PROMPTS: tuple[str, ...] = ("", "", "blurry, low quality", "text, watermark, signature")
# Samplers from docs/runware.md, all of one UNet evaluation per step (the FLOP model assumes it).
SCHEDULERS: tuple[str, ...] = ("DPM++ 2M Karras", "Euler a", "DPMSolverMultistepScheduler")
CFG_SCALES: tuple[float, ...] = (5.0, 6.0, 7.0, 7.5, 8.0)
TXT2IMG, IMG2IMG = "txt2img", "img2img"
# (kind, images per request, share of requests): mostly single txt2img, some pairs, some img2img.
MIX: tuple[tuple[str, int, float], ...] = (
    (TXT2IMG, 1, 0.70),
    (TXT2IMG, 2, 0.15),
    (IMG2IMG, 1, 0.15),
)
STRENGTH_RANGE = (0.5, 0.8)


@dataclass(frozen=True)
class JobSpec:
    """One request of the mix; the baseline runs the same specs through plain diffusers."""

    kind: str
    prompt: str
    negative_prompt: str
    seed: int
    cfg: float
    scheduler: str
    images: int
    strength: float = 1.0  # img2img only


def _pick_mix(draw: float) -> tuple[str, int]:
    total = 0.0
    for kind, images, share in MIX:
        total += share
        if draw < total:
            return kind, images
    return MIX[-1][0], MIX[-1][1]


def job_for(seed: int, client: int, index: int) -> JobSpec:
    """Client `client`'s `index`-th job: a pure function of the three, so runs are comparable."""
    rng = random.Random(f"{seed}:{client}:{index}")
    kind, images = _pick_mix(rng.random())
    return JobSpec(
        kind=kind,
        prompt=rng.choice(PROMPTS),
        negative_prompt=rng.choice(NEGATIVE_PROMPTS),
        seed=rng.randrange(2**31),
        cfg=rng.choice(CFG_SCALES),
        scheduler=rng.choice(SCHEDULERS),
        images=images,
        strength=round(rng.uniform(*STRENGTH_RANGE), 2) if kind == IMG2IMG else 1.0,
    )


def denoise_steps(job: JobSpec, steps: int) -> int:
    """UNet steps the job runs: all for txt2img, int(steps * strength) for img2img (diffusers)."""
    return steps if job.kind == TXT2IMG else min(int(steps * job.strength), steps)


def runware_task(
    job: JobSpec, *, model: str, width: int, height: int, steps: int, seed_image: str
) -> dict[str, Any]:
    """The job as a Runware imageInference task (seed_image: a data URI for img2img)."""
    task: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "positivePrompt": job.prompt,
        "model": model,
        "width": width,
        "height": height,
        "steps": steps,
        "CFGScale": job.cfg,
        "seed": job.seed,
        "numberResults": job.images,
        "scheduler": job.scheduler,
        "outputType": "URL",
    }
    if job.negative_prompt:
        task["negativePrompt"] = job.negative_prompt
    if job.kind == IMG2IMG:
        task["seedImage"] = seed_image
        task["strength"] = job.strength
    return task


def seed_image_jpeg(width: int, height: int) -> bytes:
    """A deterministic colourful init image for img2img (gradients: small as a JPEG)."""
    from PIL import Image

    ramp = Image.linear_gradient("L")
    rgb = Image.merge("RGB", (ramp, ramp.rotate(90), ramp.transpose(Image.Transpose.ROTATE_270)))
    buffer = io.BytesIO()
    rgb.resize((width, height)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# --- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), interpolating between ranks like numpy; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class StatsDelta:
    """What the engine did between two GET /engine/stats snapshots."""

    forward_passes: int
    forward_images: int
    jobs: int  # finished + failed
    overhead_ms_by_stage: dict[str, float]  # wall time per job
    overhead_cpu_ms_by_stage: dict[str, float] = field(default_factory=dict)  # thread CPU time

    @property
    def mean_batch_images(self) -> float | None:
        return self.forward_images / self.forward_passes if self.forward_passes else None

    @property
    def overhead_ms_per_job(self) -> float | None:
        return sum(self.overhead_ms_by_stage.values()) if self.jobs else None

    @property
    def overhead_cpu_ms_per_job(self) -> float | None:
        return sum(self.overhead_cpu_ms_by_stage.values()) if self.jobs else None


def stats_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> StatsDelta | None:
    """Deltas of EngineStats.snapshot() counters; None when the server has no stats endpoint."""
    if before is None or after is None:
        return None

    def diff(name: str) -> int:
        return int(after[name]) - int(before[name])

    jobs = diff("jobs_finished") + diff("jobs_failed")

    def per_job(name: str) -> dict[str, float]:
        old, new = before.get(name, {}), after.get(name, {})
        return {
            stage: 1000 * (new.get(stage, 0.0) - old.get(stage, 0.0)) / jobs if jobs else 0.0
            for stage in sorted(set(old) | set(new))
        }

    return StatsDelta(
        diff("forward_passes"),
        diff("forward_images"),
        jobs,
        per_job("overhead_seconds"),
        per_job("overhead_cpu_seconds"),
    )


# --- FLOPs and MFU -------------------------------------------------------------------------------

# Peak dense fp16/bf16 tensor-core FLOP/s by device name: the first substring found wins, so
# the more specific names come first.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (nvidia-smi: "NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
)


def peak_flops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_FLOPS if key in device_name), None)


@dataclass(frozen=True)
class FlopModel:
    """Model FLOPs of the plain diffusers pipeline (FlopCounterMode: matmuls, convolutions,
    attention; a multiply-add counts 2), per image."""

    per_step: float  # one denoising step: the UNet on the CFG pair of rows
    fixed: float  # outside the loop: prompt encoding and the VAE decode
    encode: float  # img2img only: the VAE encode of the init image

    def job_flops(self, job: JobSpec, steps: int) -> float:
        encode = self.encode if job.kind == IMG2IMG else 0.0
        return job.images * (self.fixed + encode + denoise_steps(job, steps) * self.per_step)


def flop_model_from_counts(txt2img_1: float, txt2img_2: float, img2img_2: float) -> FlopModel:
    """From three counted calls of one image each: txt2img with 1 and 2 steps, img2img with 2
    steps at strength 1 (so 2 UNet steps too, plus the encode)."""
    per_step = txt2img_2 - txt2img_1
    return FlopModel(per_step, txt2img_1 - per_step, max(img2img_2 - txt2img_2, 0.0))


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / peak


# --- one measurement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    job: JobSpec
    start: float
    end: float
    images: int
    error: str | None = None


@dataclass
class LevelResult:
    label: str
    concurrency: int
    seconds: float  # the measured window
    requests: int  # completed in the window
    images: int
    images_per_s: float
    p50_s: float | None
    p95_s: float | None
    mean_batch_images: float | None
    overhead_ms_per_job: float | None
    overhead_cpu_ms_per_job: float | None
    gpu_util_pct: float | None
    mfu_pct: float | None
    errors: int
    overhead_ms_by_stage: dict[str, float] = field(default_factory=dict)


def summarize(
    label: str,
    concurrency: int,
    records: Iterable[RequestRecord],
    window: tuple[float, float],
    *,
    steps: int,
    flops: FlopModel | None,
    peak: float | None,
) -> LevelResult:
    """Throughput from the requests completed inside the window; latency from those started in
    it (closed loop: both describe the steady state, warm-up and drain left out)."""
    start, end = window
    records = list(records)
    done = [r for r in records if r.error is None and start <= r.end <= end]
    latencies = [r.end - r.start for r in records if r.error is None and start <= r.start < end]
    seconds = end - start
    images = sum(r.images for r in done)
    model_flops = sum(flops.job_flops(r.job, steps) for r in done) if flops else 0.0
    utilisation = mfu(model_flops, seconds, peak) if flops else None
    return LevelResult(
        label=label,
        concurrency=concurrency,
        seconds=seconds,
        requests=len(done),
        images=images,
        images_per_s=images / seconds if seconds > 0 else 0.0,
        p50_s=percentile(latencies, 50),
        p95_s=percentile(latencies, 95),
        mean_batch_images=None,
        overhead_ms_per_job=None,
        overhead_cpu_ms_per_job=None,
        gpu_util_pct=None,
        mfu_pct=None if utilisation is None else 100 * utilisation,
        errors=sum(1 for r in records if r.error is not None and start <= r.start < end),
    )


def sequential_batch_images(jobs: Iterable[JobSpec], steps: int) -> float | None:
    """Mean images per UNet call of plain diffusers (num_images_per_prompt forms the batch)."""
    calls = images = 0
    for job in jobs:
        n = denoise_steps(job, steps)
        calls += n
        images += n * job.images
    return images / calls if calls else None


# --- the report ----------------------------------------------------------------------------------

COLUMNS = (
    "clients",
    "images/s",
    "vs diffusers",
    "p50 s",
    "p95 s",
    "mean batch",
    "overhead ms/job",
    "overhead CPU ms/job",
    "GPU util %",
    "MFU %",
    "requests",
    "errors",
)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table_rows(results: Sequence[LevelResult], baseline: LevelResult | None) -> list[list[str]]:
    rows = []
    base = baseline.images_per_s if baseline and baseline.images_per_s > 0 else None
    for r in ([baseline] if baseline else []) + list(results):
        speedup = r.images_per_s / base if base else None
        rows.append(
            [
                r.label,
                _fmt(r.images_per_s),
                "n/a" if speedup is None else f"{speedup:.2f}x",
                _fmt(r.p50_s),
                _fmt(r.p95_s),
                _fmt(r.mean_batch_images),
                _fmt(r.overhead_ms_per_job),
                _fmt(r.overhead_cpu_ms_per_job),
                _fmt(r.gpu_util_pct, 0),
                _fmt(r.mfu_pct, 1),
                str(r.requests),
                str(r.errors),
            ]
        )
    return rows


def progress_line(r: LevelResult) -> str:
    return (
        f"{r.label:>9}: {r.images_per_s:.2f} images/s, p50 {_fmt(r.p50_s)} s, "
        f"p95 {_fmt(r.p95_s)} s, mean batch {_fmt(r.mean_batch_images)}, "
        f"overhead {_fmt(r.overhead_ms_per_job)} ms/job "
        f"({_fmt(r.overhead_cpu_ms_per_job)} CPU), {r.errors} errors"
    )


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in [list(COLUMNS), *rows]
    )


# --- baseline: sequential plain diffusers --------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    models_dir: Path
    model: str
    width: int
    height: int
    steps: int
    concurrency: tuple[int, ...]
    duration: float
    warmup: float
    device: str
    baseline_images: int
    seed: int
    peak_flops: float | None


BASELINE_LABEL = "diffusers sequential"


def checkpoint_folder(models_dir: Path, model: str) -> Path:
    """The diffusers folder easel's catalogue resolves `model` to (what the server will load)."""
    from models.catalogue import ModelKind, WeightFormat
    from models.registry import build_catalogue

    spec = build_catalogue(models_dir, demo_root=None).catalogue.resolve(
        model, ModelKind.CHECKPOINT
    )
    if spec.weight_format is not WeightFormat.DIFFUSERS:
        raise SystemExit(f"{model}: {spec.path} is not a diffusers folder (the baseline needs one)")
    return Path(spec.path)


class Baseline:
    """The checkpoint in plain diffusers: txt2img and its img2img twin sharing the components."""

    def __init__(self, folder: Path, config: BenchConfig, init_jpeg: bytes) -> None:
        import torch
        from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        from PIL import Image
        from transformers.utils import logging as transformers_logging

        for library in (diffusers_logging, transformers_logging):
            library.disable_progress_bar()
            library.set_verbosity_error()
        self.torch = torch
        self.config = config
        dtype = torch.float16 if config.device.startswith("cuda") else torch.float32
        self.txt2img = DiffusionPipeline.from_pretrained(
            folder, dtype=dtype, local_files_only=True
        ).to(config.device)
        self.txt2img.set_progress_bar_config(disable=True)
        self.img2img = AutoPipelineForImage2Image.from_pipe(self.txt2img)
        self.img2img.set_progress_bar_config(disable=True)
        self.base_scheduler = self.txt2img.scheduler
        self.init_image = Image.open(io.BytesIO(init_jpeg)).convert("RGB")

    def _scheduler(self, name: str) -> Any:
        import diffusers

        from pipelines.samplers import sampler_spec

        spec = sampler_spec(name)
        if spec is None:
            return type(self.base_scheduler).from_config(self.base_scheduler.config)
        cls = getattr(diffusers, spec.scheduler_class)
        return cls.from_config(self.base_scheduler.config, **spec.options)

    def run(self, job: JobSpec, steps: int | None = None) -> int:
        """One job, as easel would run it alone: one CPU generator per image (seed + i)."""
        c = self.config
        pipe = self.img2img if job.kind == IMG2IMG else self.txt2img
        pipe.scheduler = self._scheduler(job.scheduler)
        inputs: dict[str, Any] = {"width": c.width, "height": c.height}
        if job.kind == IMG2IMG:
            inputs = {"image": self.init_image, "strength": job.strength}
        generators = [
            self.torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.images)
        ]
        images = pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt or None,
            num_inference_steps=steps or c.steps,
            guidance_scale=job.cfg,
            num_images_per_prompt=job.images,
            generator=generators,
            **inputs,
        ).images
        return len(images)

    def flop_model(self) -> FlopModel:
        """Count one image's FLOPs at 1 and 2 steps (and img2img at 2), with Euler: exactly one
        UNet evaluation per step."""
        from torch.utils.flop_counter import FlopCounterMode

        def count(kind: str, steps: int) -> float:
            job = JobSpec(kind, PROMPTS[0], "", 0, 7.0, "Euler", 1, 1.0)
            with FlopCounterMode(display=False) as counter:
                self.run(job, steps)
            return float(counter.get_total_flops())

        return flop_model_from_counts(count(TXT2IMG, 1), count(TXT2IMG, 2), count(IMG2IMG, 2))

    def measure(self, jobs: Sequence[JobSpec]) -> list[RequestRecord]:
        records = []
        for job in jobs:
            start = time.perf_counter()
            images = self.run(job)
            records.append(RequestRecord(job, start, time.perf_counter(), images))
        return records


def baseline_jobs(seed: int, images: int) -> list[JobSpec]:
    """The mix's first jobs (client 0's stream) until they hold `images` images."""
    jobs: list[JobSpec] = []
    while sum(j.images for j in jobs) < images:
        jobs.append(job_for(seed, 0, len(jobs)))
    return jobs


# --- GPU utilisation -----------------------------------------------------------------------------


class GpuSampler:
    """nvidia-smi's utilization.gpu (share of time a kernel ran) every 200 ms while running."""

    def __init__(self, gpu: str = "0") -> None:
        self.gpu = gpu
        self.values: list[float] = []
        self.process: subprocess.Popen[str] | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        query = ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        self.process = subprocess.Popen(
            ["nvidia-smi", *query, "-lms", "200", "-i", self.gpu],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.values.append(float(line.strip()))
            except ValueError:
                continue

    def stop(self) -> float | None:
        """The mean utilisation in percent; None without nvidia-smi or samples."""
        if self.process is None:
            return None
        self.process.terminate()
        self.process.wait()
        if self.thread is not None:
            self.thread.join(5)
        return sum(self.values) / len(self.values) if self.values else None


def gpu_index(device: str) -> str:
    """nvidia-smi's index of the benchmarked GPU (CUDA_VISIBLE_DEVICES renumbers devices)."""
    index = device.partition(":")[2] or "0"
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[int(index)].strip() if int(index) < len(visible) else index


# --- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EaselServer:
    """`easel serve` as a subprocess on a free loopback port with its own data directory."""

    def __init__(self, models_dir: Path, device: str, max_queue: int, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.args = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(root / "data"),
            "--models-dir",
            str(models_dir),
            "--max-queue",
            str(max_queue),
            "--devices",
            device,
            "--log-level",
            "warning",  # no access log line per request
        ]
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600.0) -> EaselServer:
        import httpx

        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO_ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"easel serve exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"easel serve did not come up in {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EaselServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


# --- closed-loop clients -------------------------------------------------------------------------


class RequestFailed(Exception):
    pass


async def send_request(http: Any, url: str, task: dict[str, Any]) -> int:
    """POST one task, then download its images, as a client would; the images' count."""
    response = await http.post(url + "/v1", json=[task])
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        errors = body.get("errors") or [{}]
        raise RequestFailed(f"{response.status_code} {errors[0].get('code', '')}".strip())
    items = body["data"]
    for item in items:
        (await http.get(item["imageURL"])).raise_for_status()
    return len(items)


@dataclass(frozen=True)
class LoadSpec:
    url: str
    model: str
    width: int
    height: int
    steps: int
    seed: int
    seed_image: str


@dataclass
class ClientState:
    """What the level's clients share: their records, when to stop, who has been answered."""

    records: list[RequestRecord] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    answered: set[int] = field(default_factory=set)  # clients with a first answer


async def client_loop(http: Any, load: LoadSpec, client: int, state: ClientState) -> None:
    """Send, wait for the answer, send the next, until told to stop (closed loop)."""
    index = 0
    while not state.stop.is_set():
        job = job_for(load.seed, client, index)
        index += 1
        task = runware_task(
            job,
            model=load.model,
            width=load.width,
            height=load.height,
            steps=load.steps,
            seed_image=load.seed_image,
        )
        start = time.perf_counter()
        try:
            images = await send_request(http, load.url, task)
            state.records.append(RequestRecord(job, start, time.perf_counter(), images))
        except Exception as error:  # refused, failed or broken: counted, and the loop goes on
            message = f"{type(error).__name__}: {error}"
            state.records.append(RequestRecord(job, start, time.perf_counter(), 0, message))
            await asyncio.sleep(0.05)  # busy or failing: do not spin
        state.answered.add(client)


async def engine_stats(http: Any, url: str) -> dict[str, Any] | None:
    """GET /engine/stats; None when the server has none (404) or it fails."""
    try:
        response = await http.get(url + "/engine/stats")
    except Exception:
        return None
    return response.json() if response.status_code == 200 else None


async def run_level(
    load: LoadSpec, concurrency: int, config: BenchConfig, flops: FlopModel | None
) -> tuple[LevelResult, dict[str, Any] | None]:
    """One concurrency level: warm-up, the measured window, drain."""
    import httpx

    limits = httpx.Limits(max_connections=2 * concurrency + 8)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(3600.0)) as http:
        state = ClientState()
        clients = [
            asyncio.create_task(client_loop(http, load, c, state)) for c in range(concurrency)
        ]
        # Warm-up: --warmup seconds, and until every client has had an answer, so the first
        # wave (all clients sending at once) stays out of the window.
        await asyncio.sleep(config.warmup)
        while len(state.answered) < concurrency:
            await asyncio.sleep(0.05)
        start = time.perf_counter()
        before = await engine_stats(http, load.url)
        sampler = GpuSampler(gpu_index(config.device)).start() if config.device != "cpu" else None
        await asyncio.sleep(config.duration)
        end = time.perf_counter()
        after = await engine_stats(http, load.url)
        util = sampler.stop() if sampler else None
        state.stop.set()
        await asyncio.gather(*clients)
    result = summarize(
        f"{concurrency} clients",
        concurrency,
        state.records,
        (start, end),
        steps=config.steps,
        flops=flops,
        peak=config.peak_flops,
    )
    delta = stats_delta(before, after)
    if delta is not None:
        result.mean_batch_images = delta.mean_batch_images
        result.overhead_ms_per_job = delta.overhead_ms_per_job
        result.overhead_cpu_ms_per_job = delta.overhead_cpu_ms_per_job
        result.overhead_ms_by_stage = delta.overhead_ms_by_stage
    result.gpu_util_pct = util
    return result, after


async def warm_up(load: LoadSpec) -> None:
    """Load the model and run each kind once before anything is measured."""
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0)) as http:
        for kind in (TXT2IMG, IMG2IMG):
            job = JobSpec(kind, PROMPTS[0], "", 1, 7.0, SCHEDULERS[0], 1, 0.6)
            task = runware_task(
                job,
                model=load.model,
                width=load.width,
                height=load.height,
                steps=load.steps,
                seed_image=load.seed_image,
            )
            await send_request(http, load.url, task)


async def run_levels(
    load: LoadSpec, config: BenchConfig, flops: FlopModel | None
) -> tuple[list[LevelResult], dict[str, Any] | None]:
    await warm_up(load)
    results, stats = [], None
    for concurrency in config.concurrency:
        result, stats = await run_level(load, concurrency, config, flops)
        print(progress_line(result), flush=True)
        if result.requests < concurrency:
            print("  fewer requests completed than clients: lengthen --duration and --warmup")
        results.append(result)
    return results, stats


# --- main ----------------------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    import diffusers
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


@dataclass(frozen=True)
class BaselineRun:
    """What the baseline phase hands back from its own process."""

    machine: dict[str, Any]
    flops: FlopModel
    jobs: list[JobSpec]
    records: list[RequestRecord]
    gpu_util_pct: float | None


def baseline_phase(config: BenchConfig, init_jpeg: bytes) -> BaselineRun:
    """Sequential plain diffusers and the FLOP count. Runs in a child process before the server
    starts, so the device is idle and every byte it held is given back after."""
    sys.path.insert(0, str(REPO_ROOT))
    folder = checkpoint_folder(config.models_dir, config.model)
    baseline = Baseline(folder, config, init_jpeg)
    flops = baseline.flop_model()
    jobs = baseline_jobs(config.seed, config.baseline_images)
    baseline.measure(jobs[:2])  # warm-up: kernels, allocator
    sampler = GpuSampler(gpu_index(config.device)).start() if config.device != "cpu" else None
    records = baseline.measure(jobs)
    util = sampler.stop() if sampler else None
    return BaselineRun(machine_info(config.device), flops, jobs, records, util)


def run_baseline(config: BenchConfig, init_jpeg: bytes) -> BaselineRun:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(baseline_phase, config, init_jpeg).result()


def baseline_result(run: BaselineRun, config: BenchConfig) -> LevelResult | None:
    if not run.records:
        return None
    window = (run.records[0].start, run.records[-1].end)
    result = summarize(
        BASELINE_LABEL,
        1,
        run.records,
        window,
        steps=config.steps,
        flops=run.flops,
        peak=config.peak_flops,
    )
    result.mean_batch_images = sequential_batch_images(run.jobs, config.steps)
    result.gpu_util_pct = run.gpu_util_pct
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--model", required=True, help="a checkpoint code of the models dir")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per level")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if any)")
    parser.add_argument("--baseline-images", type=int, default=16, help="0: no baseline")
    parser.add_argument("--seed", type=int, default=1234, help="the job mix's random seed")
    parser.add_argument("--peak-tflops", type=float, help="device peak (default: known table)")
    parser.add_argument("--max-queue", type=int, default=0, help="default: 8 x max concurrency")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = "cuda:0"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None  # else looked up later
    return BenchConfig(
        models_dir=args.models_dir,
        model=args.model,
        width=args.width,
        height=args.height,
        steps=args.steps,
        concurrency=tuple(int(c) for c in args.concurrency.split(",") if c.strip()),
        duration=args.duration,
        warmup=args.warmup,
        device=device,
        baseline_images=args.baseline_images,
        seed=args.seed,
        peak_flops=peak,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    config = config_from_args(args)
    init_jpeg = seed_image_jpeg(config.width, config.height)
    print(f"baseline: sequential plain diffusers on {config.device}...", flush=True)
    run = run_baseline(config, init_jpeg)
    flops = run.flops
    if config.peak_flops is None and "gpu" in run.machine:
        config = replace(config, peak_flops=peak_flops(run.machine["gpu"]))
        if config.peak_flops is None:
            print(f"no peak FLOP/s known for {run.machine['gpu']}: MFU needs --peak-tflops")
    baseline = baseline_result(run, config)
    if baseline is not None:
        print(progress_line(baseline), flush=True)
    max_queue = args.max_queue or 8 * max(config.concurrency)
    with tempfile.TemporaryDirectory(prefix="easel-bench-") as tmp:
        with EaselServer(config.models_dir, config.device, max_queue, Path(tmp)) as server:
            print(f"easel serve on {server.url} (log {server.log_path})", flush=True)
            load = LoadSpec(
                server.url,
                config.model,
                config.width,
                config.height,
                config.steps,
                config.seed,
                data_uri(init_jpeg),
            )
            try:
                results, stats = asyncio.run(run_levels(load, config, flops))
            except Exception:
                print(f"the benchmark failed; the server log ends:\n{server.log_tail()}")
                raise
    rows = table_rows(results, baseline)
    print()
    print(markdown_table(rows) if args.markdown else text_table(rows))
    if args.out:
        report = {
            "command": " ".join(["python", *sys.argv]),
            "machine": run.machine,
            "config": {**asdict(config), "models_dir": str(config.models_dir)},
            "flops_per_image": asdict(flops),
            "baseline": asdict(baseline) if baseline else None,
            "levels": [asdict(r) for r in results],
            "final_engine_stats": stats,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
