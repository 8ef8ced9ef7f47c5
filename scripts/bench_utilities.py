"""What cross-task batching buys the utility jobs: N background-removal and N caption jobs,
submitted at once to a real engine, with batching on (the engine's default cap) and off
(max_batch_images=1), on the tiny test models or on the models in --models-dir.

    python scripts/bench_utilities.py --jobs 16 [--models-dir DIR] [--device cpu]

Prints, per utility and mode: wall time, jobs per second and the number of model calls.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.engine import Engine, EngineConfig
from pipelines.jobs import BackgroundRemovalJob, CaptionJob


def _picture(seed: int) -> Image.Image:
    image = Image.new("RGB", (256, 256), (20, 20, 20 + seed % 200))
    image.paste((230, 220, 200), (64, 64 + seed % 32, 192, 192))
    return image


def _tiny_models(root: Path) -> Path:
    from tests.models.tiny_blip import save_tiny_blip
    from tests.models.tiny_rmbg import save_tiny_rmbg

    save_tiny_rmbg(root / "background-removal" / "rmbg-tiny")
    save_tiny_blip(root / "caption" / "blip-tiny")
    return root


async def _run(
    models_dir: Path, data_dir: Path, device: str, batch: int | None, jobs: list
) -> tuple[float, int]:
    config = EngineConfig(devices=[device], max_batch_images=batch, batch_window=0.05)
    engine, _ = Engine.open(models_dir, data_dir, config)
    await engine.start()
    try:
        # One warm-up job loads the model, so the timing is of the jobs alone.
        await engine.submit(jobs[0], job_id="warm-up").result()
        calls_before = engine.stats.snapshot()["forward_passes"]
        started = time.perf_counter()
        handles = [engine.submit(job, job_id=f"job-{i}") for i, job in enumerate(jobs)]
        for handle in handles:
            await handle.result()
        elapsed = time.perf_counter() - started
        calls = engine.stats.snapshot()["forward_passes"] - calls_before
        return elapsed, calls
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models_dir = args.models_dir or _tiny_models(root / "models")
        pictures = [_picture(i) for i in range(args.jobs)]
        workloads = {
            "background removal": [BackgroundRemovalJob(images=(p,)) for p in pictures],
            "captions": [CaptionJob(images=(p,)) for p in pictures],
        }
        print(f"{args.jobs} jobs per run, device {args.device}")
        for name, jobs in workloads.items():
            for label, batch in (("one at a time", 1), ("batched", None)):
                elapsed, calls = asyncio.run(
                    _run(models_dir, root / f"data-{name}-{label}", args.device, batch, jobs)
                )
                print(
                    f"{name:20s} {label:14s} {elapsed:7.2f} s  "
                    f"{len(jobs) / elapsed:7.2f} jobs/s  model calls: {calls}"
                )


if __name__ == "__main__":
    main()
