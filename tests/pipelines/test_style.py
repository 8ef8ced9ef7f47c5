"""Style reference through IP-Adapter, pinned by parity with diffusers' own IP-Adapter path.

A models directory laid out like a user's (tiny single-file checkpoints, h94-layout adapters in
ipadapter/, CLIP image encoders in clip_vision/) runs jobs through the real engine; each styled
image must equal what diffusers draws after `load_ip_adapter(<models dir>, ...)` +
`set_ip_adapter_scale(...)` on a pipeline loaded from the same files, with the same seeds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

from models.cache import PipelineCache
from models.catalogue import Catalogue, ModelKind, WeightFormat
from models.ip_adapter import (
    EncoderInput,
    image_encoder_for,
    load_ip_adapter_weights,
)
from models.loader import ModelLoadError, load_pipeline
from models.registry import build_catalogue
from models.scan import scan_models_dir
from pipelines.adapters import style
from pipelines.jobs import (
    ErrorCode,
    GenerationJob,
    JobError,
    JobKind,
    JobResult,
    StyleReference,
)
from pipelines.runners.common import Resources, RunContext, make_scheduler
from pipelines.runners.families import pipeline_for
from tests.engine_harness import run_jobs
from tests.models import tiny
from tests.models.tiny_ip_adapter import (
    ip_adapter_state,
    save_image_encoder,
    save_ip_adapter,
    save_ip_adapter_pickle,
    tiny_image_encoder,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SD1_ADAPTER, SDXL_ADAPTER = "tiny-ip-adapter_sd15", "tiny-ip-adapter_sdxl"
# The SDXL adapter reads a wider embedding than the SD 1.x one: each finds its own encoder.
ENCODERS = {"tiny-vit-h": 32, "tiny-vit-g": 48}  # clip_vision/<name> -> projection_dim
SDXL_STYLE = {"up": {"block_0": [0.0, 0.6, 0.0]}}  # InstantStyle at strength 0.6
PROMPT, NEGATIVE = "a house by a lake", "blurry"


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


RAW, STYLE_A, STYLE_B = picture(1), picture(2, (48, 40)), picture(3)


def job(model: str, **changes: Any) -> GenerationJob:
    base = GenerationJob(
        kind=JobKind.IMG2IMG,
        model=model,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=64,
        height=64,
        steps=3,
        guidance_scale=5.0,
        seeds=(7,),
        init_image=RAW,
        strength=0.75,
    )
    return dataclasses.replace(base, **changes)


def styled(model: str, image: Image.Image = STYLE_A, strength: float = 0.6, **changes: Any):
    return job(model, style=StyleReference(image=image, strength=strength), **changes)


def pixels(result: JobResult | JobError) -> list[np.ndarray]:
    assert isinstance(result, JobResult), result
    return [np.asarray(image) for image in result.images]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def write_checkpoints(root: Path, cache: Path) -> dict[str, DiffusionPipeline]:
    pipes = {
        "sd1": tiny.tiny_sd1_pipeline(cache / "tokenizers"),
        "sdxl": tiny.tiny_sdxl_pipeline(cache / "tokenizers"),
    }
    manifest = []
    for family, like in (("sd1", "sd15"), ("sdxl", "sdxl")):
        tiny.save_single_file(pipes[family], root / f"checkpoints/{family}.safetensors")
        tiny.save_config_dir(pipes[family], root / f"configs/{family}", like=like)
        manifest.append(f'[models."checkpoints/{family}.safetensors"]\nconfig = "configs/{family}"')
    (root / "manifest.toml").write_text("\n".join(manifest) + "\n")
    return pipes


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tiny families, an adapter for each, and two encoders of different widths."""
    root = tmp_path_factory.mktemp("models")
    pipes = write_checkpoints(root, tmp_path_factory.mktemp("cache"))
    sd1 = ip_adapter_state(pipes["sd1"].unet, image_embed_dim=ENCODERS["tiny-vit-h"], seed=7)
    sdxl = ip_adapter_state(pipes["sdxl"].unet, image_embed_dim=ENCODERS["tiny-vit-g"], seed=8)
    save_ip_adapter(sd1, root / f"ipadapter/{SD1_ADAPTER}.safetensors")
    save_ip_adapter(sdxl, root / f"ipadapter/{SDXL_ADAPTER}.safetensors")
    save_ip_adapter_pickle(sd1, root / f"ipadapter/legacy/{SD1_ADAPTER}-pickle.bin")
    for seed, (name, projection) in enumerate(ENCODERS.items()):
        encoder = tiny_image_encoder(projection_dim=projection, seed=seed)
        save_image_encoder(encoder, root / "clip_vision" / name)
    return root


@pytest.fixture(scope="module")
def bare_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both families and the SD 1.x adapter, but no image encoder and no SDXL adapter."""
    root = tmp_path_factory.mktemp("bare-models")
    pipes = write_checkpoints(root, tmp_path_factory.mktemp("cache"))
    state = ip_adapter_state(pipes["sd1"].unet, image_embed_dim=ENCODERS["tiny-vit-h"])
    save_ip_adapter(state, root / f"ipadapter/{SD1_ADAPTER}.safetensors")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def catalogue(models_dir: Path) -> Catalogue:
    return build_catalogue(models_dir, demo_root=None, allow_pickle=True).catalogue


def reference(
    catalogue: Catalogue, models_dir: Path, family: str, adapter: str, encoder: str, scale: Any
) -> DiffusionPipeline:
    """diffusers' own path: the checkpoint loaded by easel's loader, the adapter by diffusers."""
    pipe = load_pipeline(catalogue.resolve(family), device="cpu", dtype=torch.float32)
    pipe.load_ip_adapter(
        str(models_dir),
        subfolder="ipadapter",
        weight_name=f"{adapter}.safetensors",
        image_encoder_folder=f"clip_vision/{encoder}",
    )
    pipe.set_ip_adapter_scale(scale)
    return pipe


def draw(pipe: DiffusionPipeline, *, style: Image.Image | None, seeds: tuple[int, ...] = (7,)):
    cls = (
        StableDiffusionXLImg2ImgPipeline
        if hasattr(pipe, "text_encoder_2")
        else StableDiffusionImg2ImgPipeline
    )
    out = cls.from_pipe(pipe)(
        image=RAW,
        strength=0.75,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=3,
        guidance_scale=5.0,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="pil",
        **({"ip_adapter_image": style} if style is not None else {}),
    )
    return [np.asarray(image) for image in out.images]


# --- SD 1.x --------------------------------------------------------------------------------------

SD1_JOBS = {
    "plain": job("sd1"),
    "style": styled("sd1", seeds=(7, 8)),
    "other style": styled("sd1", image=STYLE_B, seeds=(7, 8)),
    "strength 0": styled("sd1", strength=0.0),
    "txt2img": styled("sd1", kind=JobKind.TXT2IMG, init_image=None),
    "plain again": job("sd1"),
}


@pytest.fixture(scope="module")
def sd1_results(models_dir: Path, data_dir: Path) -> dict[str, JobResult | JobError]:
    results = run_jobs(models_dir, data_dir, list(SD1_JOBS.values()))
    return dict(zip(SD1_JOBS, results, strict=True))


@pytest.fixture(scope="module")
def sd1_reference(catalogue: Catalogue, models_dir: Path) -> DiffusionPipeline:
    return reference(catalogue, models_dir, "sd1", SD1_ADAPTER, "tiny-vit-h", 0.6)


def test_sd1_img2img_style_equals_diffusers_ip_adapter(
    sd1_results: dict[str, JobResult | JobError], sd1_reference: DiffusionPipeline
) -> None:
    expected = draw(sd1_reference, style=STYLE_A, seeds=(7, 8))
    assert same(pixels(sd1_results["style"]), expected)
    assert not same(pixels(sd1_results["style"])[:1], pixels(sd1_results["plain"]))


def test_sd1_txt2img_style_equals_diffusers_ip_adapter(
    sd1_results: dict[str, JobResult | JobError], sd1_reference: DiffusionPipeline
) -> None:
    out = sd1_reference(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=[torch.Generator("cpu").manual_seed(7)],
        ip_adapter_image=STYLE_A,
    )
    assert same(pixels(sd1_results["txt2img"]), [np.asarray(out.images[0])])


def test_a_different_style_image_changes_the_picture(
    sd1_results: dict[str, JobResult | JobError],
) -> None:
    first, other = pixels(sd1_results["style"]), pixels(sd1_results["other style"])
    assert all(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_strength_zero_draws_the_plain_picture(
    sd1_results: dict[str, JobResult | JobError],
) -> None:
    # diffusers skips a layer's image attention when its scale is 0: the text path is the same
    # computation as without the adapter, so the pixels are identical, not merely close.
    assert same(pixels(sd1_results["strength 0"]), pixels(sd1_results["plain"]))


def test_style_does_not_leak_into_the_next_job(
    sd1_results: dict[str, JobResult | JobError],
) -> None:
    assert same(pixels(sd1_results["plain again"]), pixels(sd1_results["plain"]))


# --- SDXL ----------------------------------------------------------------------------------------

SDXL_JOBS = {"plain": job("sdxl"), "style": styled("sdxl"), "plain again": job("sdxl")}


def test_sdxl_img2img_style_is_instantstyle_in_diffusers(
    models_dir: Path, data_dir: Path, catalogue: Catalogue
) -> None:
    results = run_jobs(models_dir, data_dir, list(SDXL_JOBS.values()))
    results = dict(zip(SDXL_JOBS, results, strict=True))
    pipe = reference(catalogue, models_dir, "sdxl", SDXL_ADAPTER, "tiny-vit-g", SDXL_STYLE)
    assert same(pixels(results["style"]), draw(pipe, style=STYLE_A))
    assert not same(pixels(results["style"]), pixels(results["plain"]))
    assert same(pixels(results["plain again"]), pixels(results["plain"]))


# --- errors --------------------------------------------------------------------------------------


def test_missing_pieces_fail_with_what_to_install(bare_models_dir: Path, data_dir: Path) -> None:
    jobs = [
        job("sd1"),
        styled("sd1"),  # adapter installed, encoder not
        styled("sdxl"),  # no SDXL adapter
        dataclasses.replace(  # an SD 1.x adapter named for an SDXL checkpoint
            styled("sdxl"), style=StyleReference(image=STYLE_A, adapter=SD1_ADAPTER)
        ),
        styled("sd1", strength=1.5),
        job("sd1"),
    ]
    plain, no_encoder, no_adapter, wrong, too_strong, plain_again = run_jobs(
        bare_models_dir, data_dir, jobs
    )
    assert isinstance(no_encoder, JobError) and no_encoder.code is ErrorCode.MODEL_UNAVAILABLE
    assert SD1_ADAPTER in no_encoder.message
    assert str(bare_models_dir / "clip_vision") in no_encoder.message
    assert "projection_dim 32" in no_encoder.message and "config.json" in no_encoder.message
    assert isinstance(no_adapter, JobError) and no_adapter.code is ErrorCode.MODEL_UNAVAILABLE
    assert str(bare_models_dir / "ipadapter") in no_adapter.message
    assert "ip-adapter_sdxl" in no_adapter.message
    assert isinstance(wrong, JobError) and wrong.code is ErrorCode.INVALID_INPUT
    assert "width 32" in wrong.message and "96" in wrong.message
    assert isinstance(too_strong, JobError) and too_strong.code is ErrorCode.INVALID_INPUT
    assert same(pixels(plain_again), pixels(plain))


# --- the adapter itself --------------------------------------------------------------------------


def snapshot(pipe: DiffusionPipeline) -> dict[str, Any]:
    unet = pipe.unet
    return {
        "config": dict(pipe.config),
        "components": dict(pipe.components),
        "vars": dict(vars(pipe)),
        "processors": dict(unet.attn_processors),
        "processor classes": {k: type(v) for k, v in unet.attn_processors.items()},
        "unet config": dict(unet.config),
        "unet config vars": dict(vars(unet.config)),
        "unet vars": set(vars(unet)),
        "unet modules": [name for name, _ in unet.named_modules()],
        "unet state": {k: v.clone() for k, v in unet.state_dict().items()},
        "encoder_hid_proj": unet.encoder_hid_proj,
    }


def assert_restored(pipe: DiffusionPipeline, before: dict[str, Any]) -> None:
    after = snapshot(pipe)
    assert after.keys() == before.keys()
    for key in before:
        if key == "unet state":
            assert after[key].keys() == before[key].keys()
            assert all(torch.equal(after[key][k], before[key][k]) for k in before[key])
        elif key in ("processors", "components", "vars"):  # the very same objects
            assert after[key].keys() == before[key].keys(), key
            assert all(after[key][k] is before[key][k] for k in before[key]), key
        else:
            assert after[key] == before[key], key


def test_adapter_restores_the_pipeline_exactly_and_reuses_loaded_models(
    catalogue: Catalogue, models_dir: Path
) -> None:
    pipe = load_pipeline(catalogue.resolve("sdxl"), device="cpu", dtype=torch.float32)
    cache = PipelineCache("cpu", torch.float32)
    ctx = RunContext(lambda *_: None, resources=Resources(catalogue, cache, models_dir))
    before = snapshot(pipe)
    encoders = []
    for _ in range(2):
        with torch.inference_mode(), style.applied(pipe, styled("sdxl"), ctx):
            assert pipe.image_encoder is not None and pipe.feature_extractor is not None
            encoders.append(pipe.image_encoder)
            scales = {
                n: p.scale for n, p in pipe.unet.attn_processors.items() if hasattr(p, "scale")
            }
            assert scales["up_blocks.0.attentions.1.transformer_blocks.1.attn2.processor"] == [0.6]
            assert scales["up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"] == [0.0]
            assert scales["mid_block.attentions.0.transformer_blocks.0.attn2.processor"] == [0.0]
            scheduler = make_scheduler(pipe.scheduler, None)
            variant = pipeline_for(pipe, JobKind.IMG2IMG, scheduler)
            assert isinstance(variant, StableDiffusionXLImg2ImgPipeline)
            assert variant.image_encoder is pipe.image_encoder
            assert variant.feature_extractor is pipe.feature_extractor
        assert_restored(pipe, before)
    assert encoders[0] is encoders[1]  # loaded once, kept in the component cache

    with pytest.raises(RuntimeError, match="cancelled"):
        with torch.inference_mode(), style.applied(pipe, styled("sdxl"), ctx):
            raise RuntimeError("cancelled")
    assert_restored(pipe, before)


def test_pickle_adapter_needs_the_opt_in_and_holds_the_same_weights(catalogue: Catalogue) -> None:
    safetensors = catalogue.resolve(SD1_ADAPTER, ModelKind.IP_ADAPTER)
    pickled = catalogue.resolve(f"{SD1_ADAPTER}-pickle", ModelKind.IP_ADAPTER)
    assert pickled.weight_format is WeightFormat.PICKLE
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_ip_adapter_weights(pickled, device="cpu", dtype=torch.float32)
    a = load_ip_adapter_weights(safetensors, device="cpu", dtype=torch.float32)
    b = load_ip_adapter_weights(pickled, device="cpu", dtype=torch.float32, allow_pickle=True)
    assert {part: set(t) for part, t in a.items()} == {part: set(t) for part, t in b.items()}
    assert all(torch.equal(a[p][k], b[p][k]) for p in a for k in a[p])
    assert "proj.weight" in a["image_proj"] and "1.to_k_ip.weight" in a["ip_adapter"]


def test_encoder_next_to_the_adapter_is_found_first_and_is_not_a_model(
    models_dir: Path, tmp_path: Path
) -> None:
    """h94's repo layout: models/image_encoder/ beside the adapters inside ipadapter/."""
    spec = build_catalogue(models_dir, demo_root=None).catalogue.resolve(
        SD1_ADAPTER, ModelKind.IP_ADAPTER
    )
    root = tmp_path / "models"
    h94 = root / "ipadapter/h94/models"
    adapter = h94 / "tiny.safetensors"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(spec.path.read_bytes())
    save_image_encoder(tiny_image_encoder(projection_dim=32), h94 / "image_encoder")
    save_image_encoder(tiny_image_encoder(projection_dim=32), root / "clip_vision/also-fits")
    save_image_encoder(
        tiny_image_encoder(projection_dim=48), root / "ipadapter/h94/sdxl/image_encoder"
    )
    scan = scan_models_dir(root)
    assert [s.path for s in scan.specs] == [adapter] and scan.skipped == []
    local = dataclasses.replace(spec, path=adapter)
    assert (
        image_encoder_for(local, EncoderInput("projection_dim", 32), root) == h94 / "image_encoder"
    )
    wide = image_encoder_for(local, EncoderInput("projection_dim", 48), root)
    assert wide == root / "ipadapter/h94/sdxl/image_encoder"
    with pytest.raises(ModelLoadError, match="projection_dim 64") as info:
        image_encoder_for(local, EncoderInput("projection_dim", 64), root)
    assert "also-fits (projection_dim 32)" in str(info.value)
