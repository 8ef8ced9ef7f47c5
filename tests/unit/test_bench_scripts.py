"""The benchmark's pure helpers (scripts/bench_engine.py): job mix, percentiles, stats deltas,
FLOP accounting. No server and no model: the benchmark itself runs on demand, not in the suite."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_engine.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_engine", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


bench = _load()


def _snapshot(**counters: object) -> dict[str, object]:
    base: dict[str, object] = {
        "jobs_finished": 0,
        "jobs_failed": 0,
        "forward_passes": 0,
        "forward_images": 0,
        "overhead_seconds": {},
    }
    return {**base, **counters}


# --- percentiles ---


def test_percentile_matches_numpy() -> None:
    values = list(np.random.default_rng(0).exponential(size=37))
    for q in (0, 50, 90, 95, 100):
        assert bench.percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_edges() -> None:
    assert bench.percentile([], 50) is None
    assert bench.percentile([3.0], 95) == 3.0
    assert bench.percentile([4.0, 1.0, 2.0, 3.0], 50) == 2.5  # unsorted input


# --- stats deltas ---


def test_stats_delta_reports_the_window_only() -> None:
    before = _snapshot(
        jobs_finished=10,
        forward_passes=100,
        forward_images=150,
        overhead_seconds={"admission": 0.5, "handback": 1.0},
        overhead_cpu_seconds={"admission": 0.1},
    )
    after = _snapshot(
        jobs_finished=28,
        jobs_failed=2,
        forward_passes=140,
        forward_images=470,
        overhead_seconds={"admission": 0.52, "handback": 1.03, "encode_store": 0.01},
        overhead_cpu_seconds={"admission": 0.11, "handback": 0.002},
    )
    delta = bench.stats_delta(before, after)
    assert (delta.forward_passes, delta.forward_images, delta.jobs) == (40, 320, 20)
    assert delta.mean_batch_images == pytest.approx(8.0)
    assert delta.overhead_ms_by_stage == pytest.approx(
        {"admission": 1.0, "encode_store": 0.5, "handback": 1.5}
    )
    assert delta.overhead_ms_per_job == pytest.approx(3.0)
    assert delta.overhead_cpu_ms_by_stage == pytest.approx({"admission": 0.5, "handback": 0.1})
    assert delta.overhead_cpu_ms_per_job == pytest.approx(0.6)


def test_stats_delta_without_endpoint_or_work() -> None:
    assert bench.stats_delta(None, _snapshot()) is None
    assert bench.stats_delta(_snapshot(), None) is None
    idle = bench.stats_delta(_snapshot(), _snapshot())
    assert idle.mean_batch_images is None and idle.overhead_ms_per_job is None


# --- the job mix ---


def test_job_mix_is_deterministic_and_varied() -> None:
    assert bench.job_for(7, 3, 11) == bench.job_for(7, 3, 11)
    jobs = [bench.job_for(7, client, index) for client in range(20) for index in range(100)]
    assert len({(j.prompt, j.seed) for j in jobs}) > 1900  # different prompts and seeds
    assert {j.scheduler for j in jobs} == set(bench.SCHEDULERS)
    assert {j.cfg for j in jobs} == set(bench.CFG_SCALES)
    shares = Counter((j.kind, j.images) for j in jobs)
    for kind, images, share in bench.MIX:
        assert shares[kind, images] / len(jobs) == pytest.approx(share, abs=0.03)
    low, high = bench.STRENGTH_RANGE
    assert all(low <= j.strength <= high for j in jobs if j.kind == bench.IMG2IMG)
    assert bench.job_for(7, 0, 0) != bench.job_for(8, 0, 0)


def test_baseline_jobs_hold_the_images_asked_for() -> None:
    jobs = bench.baseline_jobs(5, 16)
    assert jobs == [bench.job_for(5, 0, i) for i in range(len(jobs))]
    assert 16 <= sum(j.images for j in jobs) <= 17


def test_tasks_pass_easels_runware_validation() -> None:
    from pipelines.samplers import is_known_sampler
    from server.runware.protocol import ImageInference, parse

    uri = bench.data_uri(bench.seed_image_jpeg(64, 64))
    for index in range(40):
        job = bench.job_for(1, 0, index)
        task = bench.runware_task(job, model="m", width=512, height=768, steps=20, seed_image=uri)
        wire = parse(ImageInference, task)
        assert (wire.width, wire.height, wire.numberResults) == (512, 768, job.images)
        assert (wire.seedImage is not None) == (job.kind == bench.IMG2IMG)
        assert is_known_sampler(wire.scheduler)


# --- FLOP accounting ---


def test_denoise_steps_match_diffusers_img2img() -> None:
    """The FLOP model's steps per job are the UNet calls diffusers makes, for every sampler of
    the mix (each one evaluation per step)."""
    import diffusers
    from diffusers import StableDiffusionImg2ImgPipeline

    from pipelines.samplers import sampler_spec

    for name in bench.SCHEDULERS:
        spec = sampler_spec(name)
        scheduler = getattr(diffusers, spec.scheduler_class)(**spec.options)
        for strength in (0.5, 0.63, 0.8, 1.0):
            job = bench.JobSpec(bench.IMG2IMG, "p", "", 0, 7.0, name, 1, strength)
            scheduler.set_timesteps(20)
            fake = SimpleNamespace(scheduler=scheduler)
            timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(fake, 20, strength, "cpu")
            assert len(timesteps) == bench.denoise_steps(job, 20), (name, strength)
        scheduler.set_timesteps(20)
        assert len(scheduler.timesteps) == 20  # txt2img: one UNet call per step


def test_flop_model_and_job_flops() -> None:
    # fixed 100, per step 10, encode 30 (counted at 1 and 2 steps, img2img at 2 steps)
    model = bench.flop_model_from_counts(110.0, 120.0, 150.0)
    assert (model.per_step, model.fixed, model.encode) == (10.0, 100.0, 30.0)
    txt = bench.JobSpec(bench.TXT2IMG, "p", "", 0, 7.0, "Euler a", 2)
    img = bench.JobSpec(bench.IMG2IMG, "p", "", 0, 7.0, "Euler a", 1, 0.55)
    assert model.job_flops(txt, 20) == 2 * (100 + 20 * 10)
    assert model.job_flops(img, 20) == 100 + 30 + 11 * 10


def test_mfu_and_peaks() -> None:
    assert bench.mfu(989e12, 2.0, 989e12) == pytest.approx(0.5)
    assert bench.mfu(1.0, 1.0, None) is None
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_flops("NVIDIA L40S") == 362e12
    assert bench.peak_flops("NVIDIA L4") == 121e12
    assert bench.peak_flops("cpu") is None


def test_summarize_counts_the_window() -> None:
    job = bench.JobSpec(bench.TXT2IMG, "p", "", 0, 7.0, "Euler a", 2)
    flops = bench.FlopModel(per_step=1e12, fixed=0.0, encode=0.0)
    records = [
        bench.RequestRecord(job, 0.5, 1.5, 2),  # started in warm-up, ends in window: throughput
        bench.RequestRecord(job, 1.5, 2.0, 2),  # both
        bench.RequestRecord(job, 2.0, 4.0, 2),  # starts in window, ends after: latency only
        bench.RequestRecord(job, 2.5, 2.6, 0, "429 serverBusy"),
    ]
    result = bench.summarize(
        "4 clients", 4, records, (1.0, 3.0), steps=10, flops=flops, peak=100e12
    )
    assert (result.requests, result.images, result.errors) == (2, 4, 1)
    assert result.images_per_s == 2.0
    assert result.p50_s == pytest.approx(1.25)  # latencies 0.5 and 2.0
    assert result.mfu_pct == pytest.approx(100 * 4 * 10e12 / 2.0 / 100e12)
    img = bench.JobSpec(bench.IMG2IMG, "p", "", 0, 7.0, "Euler a", 1, 0.5)
    # plain diffusers: 10 UNet calls of 2 images, then 5 of 1
    assert bench.sequential_batch_images([job, img], 10) == pytest.approx(25 / 15)


def test_report_tables() -> None:
    job = bench.JobSpec(bench.TXT2IMG, "p", "", 0, 7.0, "Euler a", 1)
    record = bench.RequestRecord(job, 0.0, 0.5, 1)
    base = bench.summarize("diffusers", 1, [record], (0.0, 1.0), steps=1, flops=None, peak=None)
    level = bench.summarize(
        "16 clients", 16, [record] * 3, (0.0, 1.0), steps=1, flops=None, peak=None
    )
    rows = bench.table_rows([level], base)
    assert [row[2] for row in rows] == ["1.00x", "3.00x"]
    assert rows[1][5] == "n/a"  # no engine stats
    table = bench.markdown_table(rows).splitlines()
    assert len(table) == 4 and all(line.count("|") == len(bench.COLUMNS) + 1 for line in table)
