"""ControlNet jobs through a real engine: parity with the direct diffusers ControlNet pipelines
(same checkpoint and ControlNet files, same control images, seeds and scheduler) for one unit,
three units with their own weights and step ranges, all units in "ControlNet is more important"
mode (diffusers' guess mode), img2img, inpainting and SDXL; the per-unit wrapper's residual
scaling and masking checked numerically; loading (original single file, diffusers folder,
diffusers-key single file), the bundled configs, and the errors a client can cause."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from models.catalogue import Architecture, ModelKind, ModelSpec, WeightFormat
from models.controlnet import load_controlnet
from models.loader import CONFIGS_DIR, load_pipeline
from models.registry import build_catalogue
from pipelines.control import UnitControlNet, soft_injection_scales
from pipelines.jobs import (
    ControlMode,
    ControlUnit,
    ErrorCode,
    GenerationJob,
    JobError,
    JobKind,
    JobResult,
)
from pipelines.masking import composite, inpaint_canvas
from pipelines.preprocessors import controlnet_aux
from tests.engine_harness import run_jobs
from tests.models.tiny import (
    save_config_dir,
    save_single_file,
    tiny_sd1_pipeline,
    tiny_sdxl_pipeline,
)
from tests.models.tiny_controlnet import (
    save_controlnet_config,
    save_controlnet_diffusers_file,
    save_controlnet_folder,
    save_controlnet_single_file,
    save_mlsd,
    tiny_sd1_controlnet,
    tiny_sdxl_controlnet,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SIZE = 64
SD1, SDXL = "tiny", "tinyxl"
# code -> (builder, how it is saved, architecture in manifest.toml or None = unknown)
CONTROLNETS = {
    "cn_canny": (lambda: tiny_sd1_controlnet(10), "original", "sd1"),
    "cn_depth": (lambda: tiny_sd1_controlnet(11), "folder", None),
    "cn_lines": (lambda: tiny_sd1_controlnet(12), "original", "sd1"),
    "cn_xl": (lambda: tiny_sdxl_controlnet(20), "diffusers_file", "sdxl"),
}


def noise_image(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)


MAPS = [noise_image(seed) for seed in (1, 2, 3)]
INIT = noise_image(4)
HALF_MASK = Image.new("L", (SIZE, SIZE), 0)
HALF_MASK.paste(255, (0, 0, SIZE // 2, SIZE))
INPAINT_MASK = Image.new("L", (SIZE, SIZE), 0)
INPAINT_MASK.paste(255, (16, 16, 48, 48))

BASE = GenerationJob(
    kind=JobKind.TXT2IMG,
    model=SD1,
    prompt="a house by a lake",
    negative_prompt="blurry",
    width=SIZE,
    height=SIZE,
    steps=3,
    guidance_scale=6.0,
    seeds=(11, 12),
)
ONE = replace(BASE, controls=(ControlUnit(model="cn_canny", image=MAPS[0]),))
THREE = replace(
    BASE,
    controls=(
        ControlUnit(model="cn_canny", image=MAPS[0], weight=0.8),
        ControlUnit(model="cn_depth", image=MAPS[1], weight=0.5, start=0.3, end=0.9),
        ControlUnit(model="cn_lines", image=MAPS[2], weight=1.3, start=0.0, end=0.6),
    ),
)
GUESS = replace(
    BASE,
    controls=(
        ControlUnit(model="cn_canny", image=MAPS[0], mode=ControlMode.CONTROL),
        ControlUnit(model="cn_depth", image=MAPS[1], mode=ControlMode.CONTROL, weight=0.7),
    ),
)
MIXED = replace(
    GUESS, controls=(GUESS.controls[0], replace(GUESS.controls[1], mode=ControlMode.BALANCED))
)
PROMPT = replace(ONE, controls=(replace(ONE.controls[0], mode=ControlMode.PROMPT),))
WHITE_MASK = replace(
    ONE, controls=(replace(ONE.controls[0], mask=Image.new("L", (SIZE, SIZE), 255)),)
)
HALF = replace(ONE, controls=(replace(ONE.controls[0], mask=HALF_MASK),))
IMG2IMG = replace(ONE, kind=JobKind.IMG2IMG, init_image=INIT, strength=0.7, steps=4)
INPAINT = replace(
    ONE, kind=JobKind.INPAINT, init_image=INIT, mask=INPAINT_MASK, strength=0.8, steps=4
)
XL = replace(BASE, model=SDXL, seeds=(7,), controls=(ControlUnit(model="cn_xl", image=MAPS[0]),))
MLSD_OPTIONS = {"value_threshold": 0.05, "distance_threshold": 0.2}
MLSD = replace(
    ONE,
    seeds=(5,),
    controls=(
        replace(
            ONE.controls[0],
            preprocessor="mlsd",
            preprocessor_options=MLSD_OPTIONS,
            resolution=SIZE,
        ),
    ),
)
NO_WEIGHTS = replace(
    MLSD, controls=(replace(MLSD.controls[0], preprocessor="hed", preprocessor_options={}),)
)
UNKNOWN = replace(ONE, controls=(ControlUnit(model="nope", image=MAPS[0]),))
WRONG_FAMILY = replace(ONE, controls=(ControlUnit(model="cn_xl", image=MAPS[0]),))
FOUR = replace(ONE, controls=(ONE.controls[0],) * 4)
BAD_RANGE = replace(ONE, controls=(replace(ONE.controls[0], start=0.7, end=0.2),))

JOBS = {
    "one": ONE,
    "three": THREE,
    "guess": GUESS,
    "mixed": MIXED,
    "prompt": PROMPT,
    "white_mask": WHITE_MASK,
    "half_mask": HALF,
    "img2img": IMG2IMG,
    "inpaint": INPAINT,
    "no_weights": NO_WEIGHTS,  # fails; the engine goes on
    "mlsd": MLSD,
    "unknown": UNKNOWN,
    "wrong_family": WRONG_FAMILY,
    "four": FOUR,
    "bad_range": BAD_RANGE,
    "after_errors": ONE,
    "xl": XL,
}


def make_models_dir(root: Path) -> Path:
    """Checkpoints and ControlNets as single files / folders, configs named in manifest.toml,
    and the MLSD annotator weights (no HED weights: that preprocessor is not installed)."""
    models = root / "models"
    manifest = []
    for code, build, family in (
        (SD1, tiny_sd1_pipeline, "sd15"),
        (SDXL, tiny_sdxl_pipeline, "sdxl"),
    ):
        pipe = build(root / "tokenizers")
        save_single_file(pipe, models / "checkpoints" / f"{code}.safetensors")
        save_config_dir(pipe, models / "configs" / code, like=family)
        manifest.append(f'[models."checkpoints/{code}.safetensors"]\nconfig = "configs/{code}"\n')
    for code, (build, layout, architecture) in CONTROLNETS.items():
        model = build()
        if layout == "folder":
            save_controlnet_folder(model, models / "controlnet" / code)
            continue
        save = (
            save_controlnet_single_file if layout == "original" else save_controlnet_diffusers_file
        )
        save(model, models / "controlnet" / f"{code}.safetensors")
        save_controlnet_config(model, models / "configs" / code)
        entry = f'[models."controlnet/{code}.safetensors"]\nconfig = "configs/{code}"\n'
        manifest.append(entry + (f'architecture = "{architecture}"\n' if architecture else ""))
    (models / "manifest.toml").write_text("\n".join(manifest))
    save_mlsd(models / "annotators")
    return models


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("controlnet")
    models = make_models_dir(root)
    results = run_jobs(models, root / "data", list(JOBS.values()))
    catalogue = build_catalogue(models, demo_root=None).catalogue

    def reference(code: str) -> DiffusionPipeline:
        spec = catalogue.resolve(code)
        return load_pipeline(spec, device="cpu", dtype=torch.float32, cache_dir=root / "cache")

    def controlnet(code: str) -> ControlNetModel:
        """Loaded by diffusers itself, from the same file as the engine."""
        spec = catalogue.resolve(code, ModelKind.CONTROLNET)
        if spec.weight_format is WeightFormat.DIFFUSERS:
            return ControlNetModel.from_pretrained(spec.path, local_files_only=True)
        config = str(models / "configs" / code)
        return ControlNetModel.from_single_file(str(spec.path), config=config)

    return {
        "models": models,
        "results": dict(zip(JOBS, results, strict=True)),
        "sd1": reference(SD1),
        "sdxl": reference(SDXL),
        "nets": {code: controlnet(code) for code in CONTROLNETS},
    }


def images(setup: dict, name: str) -> tuple[Image.Image, ...]:
    result = setup["results"][name]
    assert isinstance(result, JobResult), result
    return result.images


def error(setup: dict, name: str) -> JobError:
    result = setup["results"][name]
    assert isinstance(result, JobError), result
    return result


def direct(ref: DiffusionPipeline, cls: type, job: GenerationJob, controlnet, **call) -> list:
    """The direct diffusers call: the ControlNet variant sharing the reference's components."""
    pipe = cls.from_pipe(ref, controlnet=controlnet)
    pipe.scheduler = type(ref.scheduler).from_config(ref.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=job.num_images,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in job.seeds],
        **call,
    )
    return list(out.images)


def assert_same(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def differ(a, b) -> float:
    return float(np.abs(np.asarray(a[0], np.int16) - np.asarray(b[0], np.int16)).mean())


# --- parity with diffusers ---------------------------------------------------------------------


def test_one_unit_matches_diffusers(setup: dict) -> None:
    want = direct(
        setup["sd1"],
        StableDiffusionControlNetPipeline,
        ONE,
        setup["nets"]["cn_canny"],
        image=MAPS[0],
        width=SIZE,
        height=SIZE,
    )
    assert_same(images(setup, "one"), want)
    assert differ(images(setup, "one"), images(setup, "three")) > 1  # the units matter


def test_three_units_match_diffusers_multi_controlnet(setup: dict) -> None:
    units = THREE.controls
    want = direct(
        setup["sd1"],
        StableDiffusionControlNetPipeline,
        THREE,
        [setup["nets"][u.model] for u in units],
        image=MAPS,
        controlnet_conditioning_scale=[u.weight for u in units],
        control_guidance_start=[u.start for u in units],
        control_guidance_end=[u.end for u in units],
        width=SIZE,
        height=SIZE,
    )
    assert_same(images(setup, "three"), want)


def test_control_mode_is_diffusers_guess_mode(setup: dict) -> None:
    units = GUESS.controls
    want = direct(
        setup["sd1"],
        StableDiffusionControlNetPipeline,
        GUESS,
        [setup["nets"][u.model] for u in units],
        image=MAPS[:2],
        controlnet_conditioning_scale=[u.weight for u in units],
        guess_mode=True,
        width=SIZE,
        height=SIZE,
    )
    assert_same(images(setup, "guess"), want)


def test_mixed_modes_apply_guess_mode_per_unit(setup: dict) -> None:
    """One unit conditional-only, one balanced: differs from both all-guess and all-balanced."""
    mixed = images(setup, "mixed")
    assert differ(mixed, images(setup, "guess")) > 0.5
    balanced = direct(
        setup["sd1"],
        StableDiffusionControlNetPipeline,
        MIXED,
        [setup["nets"][u.model] for u in MIXED.controls],
        image=MAPS[:2],
        controlnet_conditioning_scale=[u.weight for u in MIXED.controls],
        width=SIZE,
        height=SIZE,
    )
    assert differ(mixed, balanced) > 0.5


def test_img2img_matches_diffusers(setup: dict) -> None:
    want = direct(
        setup["sd1"],
        StableDiffusionControlNetImg2ImgPipeline,
        IMG2IMG,
        setup["nets"]["cn_canny"],
        image=INIT,
        control_image=MAPS[0],
        controlnet_conditioning_scale=1.0,  # the pipeline's default is 0.8
        strength=IMG2IMG.strength,
    )
    assert_same(images(setup, "img2img"), want)


def test_inpaint_matches_diffusers(setup: dict) -> None:
    canvas = inpaint_canvas(INIT, INPAINT_MASK, SIZE, SIZE, INPAINT.mask_blur)
    out = direct(
        setup["sd1"],
        StableDiffusionControlNetInpaintPipeline,
        INPAINT,
        setup["nets"]["cn_canny"],
        image=[canvas.image] * INPAINT.num_images,
        mask_image=canvas.blurred,
        control_image=MAPS[0],
        controlnet_conditioning_scale=1.0,
        strength=INPAINT.strength,
        width=SIZE,
        height=SIZE,
    )
    want = [composite(image, canvas.image, canvas.blurred) for image in out]
    assert_same(images(setup, "inpaint"), want)


def test_sdxl_one_unit_matches_diffusers(setup: dict) -> None:
    want = direct(
        setup["sdxl"],
        StableDiffusionXLControlNetPipeline,
        XL,
        setup["nets"]["cn_xl"],
        image=MAPS[0],
        width=SIZE,
        height=SIZE,
    )
    assert_same(images(setup, "xl"), want)


def test_preprocessed_unit_matches_diffusers_on_the_map(setup: dict) -> None:
    """mlsd from <models_dir>/annotators/, its thresholds passed, the map fed to diffusers."""
    detector = controlnet_aux().MLSDdetector.from_pretrained(str(setup["models"] / "annotators"))
    line_map = detector(
        MAPS[0], thr_v=0.05, thr_d=0.2, detect_resolution=SIZE, image_resolution=SIZE
    )
    assert np.asarray(line_map).any()
    want = direct(
        setup["sd1"],
        StableDiffusionControlNetPipeline,
        MLSD,
        setup["nets"]["cn_canny"],
        image=line_map.convert("RGB"),
        width=SIZE,
        height=SIZE,
    )
    assert_same(images(setup, "mlsd"), want)


# --- modes and masks in the engine ----------------------------------------------------------------


def test_prompt_mode_softens_the_control(setup: dict) -> None:
    assert differ(images(setup, "prompt"), images(setup, "one")) > 0.5


def test_unit_mask_limits_the_control(setup: dict) -> None:
    assert_same(images(setup, "white_mask"), images(setup, "one"))  # all white: no change
    half = np.asarray(images(setup, "half_mask")[0], np.int16)
    plain = np.asarray(images(setup, "one")[0], np.int16)
    assert np.abs(half - plain).mean() > 0.5


# --- errors ---------------------------------------------------------------------------------------


def test_errors_name_the_problem_and_the_engine_goes_on(setup: dict) -> None:
    missing = error(setup, "no_weights")
    assert missing.code is ErrorCode.MODEL_UNAVAILABLE
    folder = setup["models"] / "annotators"
    assert "ControlNetHED.pth" in missing.message and "lllyasviel/Annotators" in missing.message
    assert str(folder) in missing.message
    unknown = error(setup, "unknown")
    assert unknown.code is ErrorCode.UNKNOWN_MODEL and "nope" in unknown.message
    wrong = error(setup, "wrong_family")
    assert wrong.code is ErrorCode.INVALID_INPUT
    assert "cn_xl" in wrong.message and SD1 in wrong.message
    assert "sdxl" in wrong.message and "sd1" in wrong.message
    four = error(setup, "four")
    assert four.code is ErrorCode.INVALID_INPUT and "3" in four.message
    assert error(setup, "bad_range").code is ErrorCode.INVALID_INPUT
    assert_same(images(setup, "after_errors"), images(setup, "one"))


# --- the wrapper, numerically ------------------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> ControlNetModel:
    return tiny_sd1_controlnet(10)


def _inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(batch, 77, 32, generator=g),
        "controlnet_cond": torch.rand(batch, 3, SIZE, SIZE, generator=g),
        "conditioning_scale": 0.7,
    }


def _residuals(model, guess_mode: bool = False, **inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        down, mid = model(**inputs, guess_mode=guess_mode, return_dict=False)
    return [*down, mid]


def test_balanced_wrapper_is_the_controlnet(net: ControlNetModel) -> None:
    inputs = _inputs()
    got = _residuals(UnitControlNet(net), **inputs)
    want = _residuals(net, **inputs)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_prompt_mode_is_a1111_soft_injection(net: ControlNetModel) -> None:
    assert soft_injection_scales(13)[-1] == 1.0  # SD 1.x: the middle block keeps its weight
    assert soft_injection_scales(13)[0] == pytest.approx(0.825**12)
    assert soft_injection_scales(10) == soft_injection_scales(13)[:10]  # SDXL, as A1111
    inputs = _inputs()
    got = _residuals(UnitControlNet(net, mode=ControlMode.PROMPT), **inputs)
    want = _residuals(net, **inputs)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a, b * 0.825 ** float(12 - i))


def test_control_mode_wrapper_is_guess_mode_on_the_conditional_half(net: ControlNetModel) -> None:
    inputs = _inputs()
    unit = UnitControlNet(net, mode=ControlMode.CONTROL, cfg=True)
    # the pipeline in guess mode passes the conditional half only: exactly diffusers'
    half = {k: v[1:] if isinstance(v, torch.Tensor) and v.ndim else v for k, v in inputs.items()}
    got = _residuals(unit, guess_mode=True, **half)
    want = _residuals(net, guess_mode=True, **half)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    # mixed with other modes the batch is [unconditional, conditional]: zero, then guess-scaled
    mixed = _residuals(unit, guess_mode=False, **inputs)
    full = _residuals(net, guess_mode=True, **inputs)
    for a, b, c in zip(mixed, full, want, strict=True):
        assert torch.count_nonzero(a[:1]) == 0
        assert torch.equal(a[1:], b[1:])
        assert torch.allclose(a[1:], c, atol=1e-5)


def test_unit_mask_multiplies_every_residual(net: ControlNetModel) -> None:
    inputs = _inputs()
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., : SIZE // 2] = 1.0  # left half
    got = _residuals(UnitControlNet(net, mask=mask), **inputs)
    want = _residuals(net, **inputs)
    for a, b in zip(got, want, strict=True):
        half = a.shape[-1] // 2
        assert torch.equal(a[..., :half], b[..., :half])
        assert torch.count_nonzero(a[..., half:]) == 0


def test_wrapper_exposes_what_the_pipelines_read(net: ControlNetModel) -> None:
    pooled = tiny_sd1_controlnet(10)
    pooled.register_to_config(global_pool_conditions=True)  # as shuffle ControlNets are
    unit = UnitControlNet(pooled)
    assert unit.config.global_pool_conditions is False  # pooling is the wrapper's business
    assert unit.conditional_only and unit.dtype == torch.float32
    assert UnitControlNet(net).config.cross_attention_dim == 32


# --- loading ------------------------------------------------------------------------------------


def test_single_file_shuffle_pools_like_a1111(tmp_path: Path, net: ControlNetModel) -> None:
    path = save_controlnet_single_file(net, tmp_path / "control_v11e_sd15_shuffle.safetensors")
    spec = ModelSpec(
        code="shuffle",
        name="shuffle",
        kind=ModelKind.CONTROLNET,
        architecture=Architecture.SD1,
        path=path,
        weight_format=WeightFormat.SAFETENSORS,
        config_dir=save_controlnet_config(net, tmp_path / "config"),
    )
    model = load_controlnet(spec, architecture=Architecture.SD1, device="cpu", dtype=torch.float32)
    assert model.config.global_pool_conditions is True
    state = net.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("config", "unet"), [("controlnet-sd15", "sd15"), ("controlnet-sdxl", "sdxl")]
)
def test_bundled_configs_are_their_unets_down_halves(config: str, unet: str) -> None:
    """The bundled ControlNet config builds exactly what diffusers derives from the bundled UNet
    config (ControlNetModel.from_unet): the lllyasviel / diffusers reference layouts."""
    with init_empty_weights():
        bundled = ControlNetModel.from_config(ControlNetModel.load_config(CONFIGS_DIR / config))
        base = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(CONFIGS_DIR / unet, subfolder="unet")
        )
        derived = ControlNetModel.from_unet(base, load_weights_from_unet=False)
    shapes = {k: v.shape for k, v in bundled.state_dict().items()}
    assert shapes == {k: v.shape for k, v in derived.state_dict().items()}
