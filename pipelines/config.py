"""EngineConfig: how the engine runs (queue, devices, batching, precision, preloads).

It lives here, apart from pipelines/engine.py, because this module imports nothing but the
standard library: `easel serve`'s option table (server/options.py) reads these defaults to build
the CLI without importing torch. pipelines cannot import server, so the defaults of the engine's
options are written here, once, and the table, the CLI, Settings and the README take them from
this class (after changing one, run `python scripts/readme_options.py` to update README.md).
pipelines.engine re-exports EngineConfig, so `from pipelines.engine import EngineConfig` works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineConfig:
    max_queue: int = 64  # jobs waiting beyond this are refused as busy
    devices: Sequence[str] | None = None  # None: every CUDA device, else the CPU
    max_models_per_device: int = 1
    cache_dir: Path | None = None  # derived files (tokenizers) live here
    models_dir: Path | None = None  # preprocessor weights are looked up under it
    allow_pickle: bool = False
    max_batch_images: int | None = None  # images per batch; None: 16 on the CPU, 64 on GPUs
    batch_window: float = 0.01  # seconds a partly filled batch may wait for more jobs
    compile: bool = False  # torch.compile the UNet (batch sizes padded to COMPILE_BUCKETS)
    dtype: str = "auto"  # "auto", "fp16", "bf16" or "fp32" (pipelines.worker.DTYPES)
    # GPU memory kept for weights (checkpoint, ControlNets, adapters) when sizing batches
    weights_reserve_bytes: int = 12 * 1024**3
    # Checkpoints every worker loads at start, before its first batch (so the server is ready
    # before its first job): identifiers as a job names its model, "" = the default checkpoint.
    # An engine built in code preloads nothing; `easel serve` and `easel worker` preload the
    # default checkpoint unless --preload says otherwise (server/options.py).
    preload: tuple[str, ...] = ()
