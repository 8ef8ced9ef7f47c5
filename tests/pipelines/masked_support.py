"""Models directories and reference pipelines for the masked-redraw and tiling tests.

A models directory holds tiny random-weight checkpoints as single .safetensors files with their
config folders named in manifest.toml; the reference pipelines load the same files through
easel's own loader (models.loader.load_pipeline), so parity compares like with like.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from models.loader import load_pipeline
from models.registry import build_catalogue
from tests.models.tiny import (
    save_config_dir,
    save_single_file,
    tiny_sd1_pipeline,
    tiny_sdxl_pipeline,
)

SD1 = "tiny"
SD1_INPAINTING = "tiny-inpainting"  # picked by the worker for masked jobs on "tiny"
SDXL = "tinyxl"

# code -> (builder, inpainting, bundled config family the config folder copies)
CHECKPOINTS = {
    SD1: (tiny_sd1_pipeline, False, "sd15"),
    SD1_INPAINTING: (tiny_sd1_pipeline, True, "sd15-inpaint"),
    SDXL: (tiny_sdxl_pipeline, False, "sdxl"),
}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a shared CPU extra threads spin and wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_models_dir(root: Path, codes: Sequence[str]) -> Path:
    """root/models with the named checkpoints (single files) and a manifest for their configs."""
    models = root / "models"
    manifest = []
    for code in codes:
        build, inpainting, family = CHECKPOINTS[code]
        pipe = build(root / "tokenizers", inpainting=inpainting)
        save_single_file(pipe, models / "checkpoints" / f"{code}.safetensors")
        save_config_dir(pipe, models / "configs" / code, like=family)
        manifest.append(f'[models."checkpoints/{code}.safetensors"]\nconfig = "configs/{code}"\n')
    (models / "manifest.toml").write_text("\n".join(manifest))
    return models


def load_reference(models_dir: Path, code: str, cache_dir: Path) -> DiffusionPipeline:
    """The checkpoint loaded directly (not through an engine) by easel's loader."""
    spec = build_catalogue(models_dir, demo_root=None).catalogue.resolve(code)
    return load_pipeline(spec, device="cpu", dtype=torch.float32, cache_dir=cache_dir)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def assert_same(got: Sequence[Image.Image], want: Sequence[Image.Image]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.size == b.size
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth-ish random RGB image (blocks of colour), so resampling keeps its structure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)
