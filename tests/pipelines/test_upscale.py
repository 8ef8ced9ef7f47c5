"""Upscaling (Runware imageUpscale, PICPIK ResizeImage) with a tiny Real-ESRGAN compact model saved
like the real files and loaded through spandrel: the result equals the model called directly plus
a Lanczos resize to the asked size; tiled inference equals an untiled run; alpha is kept; the
model is never loaded to shrink; bad requests and unusable model files are refused clearly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel import MaskedImageModelDescriptor, ModelLoader
from spandrel.architectures.LaMa import LaMaArch

from models.cache import PipelineCache
from models.catalogue import Catalogue
from models.utility_models import Utility, UtilityModel, UtilityModelMissing, find
from pipelines.jobs import ErrorCode, JobError, JobResult, UpscaleJob
from pipelines.runners.common import Resources, RunContext
from pipelines.utilities import upscale
from tests.engine_harness import run_jobs
from tests.models.tiny import SD1_CHECKPOINT, write_fake_safetensors
from tests.models.tiny_upscaler import RECEPTIVE_RADIUS, save_tiny_upscaler

LANCZOS = Image.Resampling.LANCZOS


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Colour blocks over a gradient: edges and smooth parts for the model to work on."""
    rng = np.random.default_rng(seed)
    width, height = size
    blocks = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), np.uint8)
    big = np.kron(blocks, np.ones((8, 8, 1), np.uint8))[:height, :width].astype(np.float32)
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    return Image.fromarray(np.clip(big * 0.75 + ramp, 0, 255).astype(np.uint8), "RGB")


IMAGE = photo((40, 32))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """upscale_models/ with a 4x (the default by name) and a 2x tiny upscaler, and a .pth copy."""
    models = tmp_path_factory.mktemp("models")
    folder = models / "upscale_models"
    save_tiny_upscaler(folder / "4x-tiny.safetensors", scale=4)
    save_tiny_upscaler(folder / "2x-tiny.safetensors", scale=2)
    save_tiny_upscaler(folder / "4x-tiny-pickled.pth", scale=4)
    return models


@pytest.fixture(scope="module")
def ctx(models_dir: Path) -> RunContext:
    cache = PipelineCache("cpu", torch.float32)
    return RunContext(
        lambda _done, _total: None, resources=Resources(Catalogue([]), cache, models_dir)
    )


def model(models_dir: Path, name: str) -> UtilityModel:
    return find(models_dir, Utility.UPSCALE, name)


def run_one(job: UpscaleJob, upscaler: UtilityModel, ctx: RunContext) -> Image.Image:
    (result,) = upscale.run([job], upscaler, ctx)
    assert isinstance(result, JobResult) and result.seeds == (0,)
    (image,) = result.images
    return image


def direct(path: Path, image: Image.Image) -> Image.Image:
    """One pass of the model as spandrel runs it: a [0, 1] NCHW tensor in, rounded to bytes."""
    descriptor = ModelLoader("cpu").load_from_file(path)
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    out = descriptor(pixels)[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(out, "RGB")


def assert_same(a: Image.Image, b: Image.Image) -> None:
    assert a.mode == b.mode and a.size == b.size
    assert np.array_equal(np.asarray(a), np.asarray(b))


# --- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "scale"), [("4x-tiny", 4), ("2x-tiny", 2), ("4x-tiny-pickled.pth", 4)]
)
def test_spandrel_detects_the_tiny_files(models_dir: Path, name: str, scale: int) -> None:
    descriptor = upscale.load_upscaler(model(models_dir, name).path, "cpu", torch.float32)
    assert descriptor.architecture.id == "Compact"
    assert descriptor.scale == scale
    assert descriptor.dtype == torch.float32


def test_pth_state_dict_gives_the_same_model(models_dir: Path) -> None:
    a = upscale.load_upscaler(model(models_dir, "4x-tiny").path, "cpu", torch.float32)
    b = upscale.load_upscaler(model(models_dir, "4x-tiny-pickled.pth").path, "cpu", torch.float32)
    for (key, x), (_, y) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), key


def test_half_precision_only_where_supported(models_dir: Path) -> None:
    descriptor = upscale.load_upscaler(model(models_dir, "4x-tiny").path, "cpu", torch.float16)
    assert descriptor.supports_half and descriptor.dtype == torch.float16
    descriptor.supports_half = False
    assert upscale._precision(descriptor, torch.float16) == torch.float32
    assert upscale._precision(descriptor, torch.float32) == torch.float32


# --- parity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2.0, 3.0, 4.0])
def test_factor_equals_the_model_then_lanczos(
    models_dir: Path, ctx: RunContext, factor: float
) -> None:
    upscaler = model(models_dir, "4x-tiny")
    image = run_one(UpscaleJob(image=IMAGE, factor=factor), upscaler, ctx)
    size = (round(40 * factor), round(32 * factor))
    assert image.size == size
    assert_same(image, direct(upscaler.path, IMAGE).resize(size, LANCZOS))
    # the model did something Lanczos alone would not
    assert not np.array_equal(np.asarray(image), np.asarray(IMAGE.resize(size, LANCZOS)))


def test_more_passes_when_one_is_not_enough(models_dir: Path, ctx: RunContext) -> None:
    """3x with a 2x model: 2x, shrunk to ceil(120 / 2) = 60 wide, 2x again: exactly 120 x 96."""
    upscaler = model(models_dir, "2x-tiny")
    image = run_one(UpscaleJob(image=IMAGE, factor=3.0), upscaler, ctx)
    first = direct(upscaler.path, IMAGE)
    expected = direct(upscaler.path, first.resize((60, 48), LANCZOS))
    assert expected.size == (120, 96)
    assert_same(image, expected)

    # 5x with a 4x model: 160 x 128, shrunk to (200 / 4) x (100 / 4), 4x again
    upscaler = model(models_dir, "4x-tiny")
    image = run_one(UpscaleJob(image=IMAGE, width=200, height=100), upscaler, ctx)
    first = direct(upscaler.path, IMAGE)
    assert_same(image, direct(upscaler.path, first.resize((50, 25), LANCZOS)))


def test_pass_sizes() -> None:
    assert upscale.pass_sizes((40, 32), (160, 128), 4) == [(40, 32)]
    assert upscale.pass_sizes((40, 32), (120, 96), 2) == [(40, 32), (60, 48)]
    # just short of 4x: the second pass starts from 1024, not from 4084
    assert upscale.pass_sizes((1021, 1021), (4096, 4096), 4) == [(1021, 1021), (1024, 1024)]
    assert len(upscale.pass_sizes((64, 64), (4096, 4096), 2)) == upscale.MAX_PASSES
    assert upscale.pass_sizes((64, 64), (64, 64), 4) == []


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(150, 100, (150, 100)), (100, None, (100, 80)), (None, 100, (125, 100))],
)
def test_explicit_size(
    models_dir: Path,
    ctx: RunContext,
    width: int | None,
    height: int | None,
    size: tuple[int, int],
) -> None:
    """Exactly the size asked; one side alone keeps the aspect ratio. factor is ignored."""
    upscaler = model(models_dir, "4x-tiny")
    job = UpscaleJob(image=IMAGE, factor=4.0, width=width, height=height)
    image = run_one(job, upscaler, ctx)
    assert_same(image, direct(upscaler.path, IMAGE).resize(size, LANCZOS))


def test_shrinking_is_lanczos_without_the_model(models_dir: Path, tmp_path: Path) -> None:
    big = photo((160, 128), seed=3)
    cache = PipelineCache("cpu", torch.float32)
    gone = UtilityModel(Utility.UPSCALE, "gone.safetensors", tmp_path / "gone.safetensors")
    reports: list[tuple[int, int]] = []
    context = RunContext(
        lambda *step: reports.append(step), resources=Resources(Catalogue([]), cache, models_dir)
    )
    for job, size in [
        (UpscaleJob(image=big, width=64, height=64), (64, 64)),
        (UpscaleJob(image=big, factor=1.0), (160, 128)),
    ]:
        assert_same(run_one(job, gone, context), big.resize(size, LANCZOS))
    assert reports == [(1, 1), (1, 1)]
    with pytest.raises(JobError) as error:  # enlarging needs the (missing) file
        run_one(UpscaleJob(image=big, factor=2.0), gone, context)
    assert error.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert str(tmp_path / "gone.safetensors") in error.value.message


# --- tiles ---------------------------------------------------------------------------------------


def test_tiled_equals_untiled(
    models_dir: Path, ctx: RunContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    upscaler = model(models_dir, "4x-tiny")
    image = photo((50, 40), seed=5)
    job = UpscaleJob(image=image, factor=4.0)
    whole = np.asarray(run_one(job, upscaler, ctx)).astype(int)

    reports: list[tuple[int, int]] = []
    counting = RunContext(lambda *step: reports.append(step), resources=ctx.resources)
    monkeypatch.setattr(upscale, "TILE", 16)
    monkeypatch.setattr(upscale, "OVERLAP", RECEPTIVE_RADIUS)
    tiled = np.asarray(run_one(job, upscaler, counting)).astype(int)
    assert reports == [(i, 12) for i in range(1, 13)]  # 4 x 3 tiles of 16
    # the same numbers, up to float summation order in the convolutions
    assert np.abs(tiled - whole).max() <= 1
    assert np.mean(tiled == whole) > 0.999

    monkeypatch.setattr(upscale, "OVERLAP", 0)  # without context the seams show
    seams = np.asarray(run_one(job, upscaler, ctx)).astype(int)
    assert np.abs(seams - whole).max() > 8


# --- alpha ---------------------------------------------------------------------------------------


def test_rgba_keeps_its_alpha(models_dir: Path, ctx: RunContext) -> None:
    upscaler = model(models_dir, "4x-tiny")
    alpha = Image.fromarray(
        np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (32, 1)), "L"
    )  # a ramp: resampling shows
    rgba = IMAGE.copy()
    rgba.putalpha(alpha)
    image = run_one(UpscaleJob(image=rgba, factor=3.0), upscaler, ctx)
    assert image.mode == "RGBA" and image.size == (120, 96)
    assert_same(image.getchannel("A"), alpha.resize((120, 96), LANCZOS))
    assert_same(image.convert("RGB"), run_one(UpscaleJob(image=IMAGE, factor=3.0), upscaler, ctx))


def test_palette_transparency_becomes_alpha(models_dir: Path, ctx: RunContext) -> None:
    palette = IMAGE.quantize(16)
    palette.info["transparency"] = 0  # palette entry 0 is clear
    image = run_one(UpscaleJob(image=palette, factor=2.0), model(models_dir, "4x-tiny"), ctx)
    alpha = palette.convert("RGBA").getchannel("A")
    assert image.mode == "RGBA" and 0 in np.asarray(alpha)
    assert_same(image.getchannel("A"), alpha.resize((80, 64), LANCZOS))


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"factor": 0.5}, "factor 0.5"),
        ({"factor": 4.5}, "factor 4.5"),
        ({"factor": float("nan")}, "factor nan"),
        ({"width": 32}, "width 32"),
        ({"width": 512, "height": 5000}, "height 5000"),
        ({"height": 4097}, "height 4097"),
    ],
)
def test_check_refuses(fields: dict, words: str) -> None:
    with pytest.raises(JobError) as error:
        upscale.check(UpscaleJob(image=IMAGE, **fields))
    assert error.value.code is ErrorCode.INVALID_INPUT
    assert words in error.value.message


@pytest.mark.parametrize(
    "fields", [{"factor": 1.0}, {"factor": 4.0}, {"width": 64}, {"width": 4096, "factor": 9.0}]
)
def test_check_accepts(fields: dict) -> None:
    upscale.check(UpscaleJob(image=IMAGE, **fields))


def test_missing_model_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(UtilityModelMissing) as missing:
        find(tmp_path, Utility.UPSCALE, None)
    assert f"{tmp_path / 'upscale_models'}/" in str(missing.value)


class Smuggled:
    """Pickled by reference: loading it would import and run code."""


def refused(path: Path) -> str:
    with pytest.raises(JobError) as error:
        upscale.load_upscaler(path, "cpu", torch.float32)
    assert error.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert str(path) in error.value.message
    return error.value.message


def test_unusable_files_are_refused(tmp_path: Path) -> None:
    restoration = save_tiny_upscaler(tmp_path / "1x-denoise.safetensors", scale=1)
    assert "not an upscaler" in refused(restoration)

    unknown = tmp_path / "unknown.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3)}, str(unknown))
    assert "not a super-resolution model" in refused(unknown)

    smuggling = tmp_path / "smuggling.pth"
    with smuggling.open("wb") as file:
        pickle.dump(
            {"extra": Smuggled(), "params": {"body.0.weight": torch.zeros(1)}}, file, protocol=2
        )
    message = refused(smuggling)
    assert "convert it to .safetensors" in message and "Smuggled" in message

    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 3, 3)), str(scripted))
    assert "TorchScript" in refused(scripted)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    assert "cannot be read" in refused(broken)


def test_masked_models_are_not_upscalers(tmp_path: Path) -> None:
    """An inpainting model (LaMa) takes an image and a mask: refused by what it is."""
    masked = MaskedImageModelDescriptor(
        torch.nn.Identity(),
        {},
        architecture=LaMaArch(),
        purpose="Inpainting",
        tags=[],
        supports_half=False,
        supports_bfloat16=False,
        input_channels=3,
        output_channels=3,
    )
    with pytest.raises(JobError) as error:
        upscale._image_to_image(masked, tmp_path / "big-lama.safetensors")
    assert error.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "LaMa model (inpainting), not an image upscaler" in error.value.message


# --- through the engine --------------------------------------------------------------------------


def test_through_the_engine(models_dir: Path, ctx: RunContext, tmp_path: Path) -> None:
    """The worker finds the default model (the first by name: 2x-tiny) and runs it; a models dir
    without one says where to install one (it has a checkpoint of its own: the demo set's
    upscaler serves only servers without a real checkpoint)."""
    job = UpscaleJob(image=IMAGE, factor=2.0)
    (result,) = run_jobs(models_dir, tmp_path / "data", [job])
    assert isinstance(result, JobResult)
    default = find(models_dir, Utility.UPSCALE)
    assert default.name == "2x-tiny.safetensors"
    assert_same(result.images[0], run_one(job, default, ctx))

    empty = tmp_path / "empty"
    write_fake_safetensors(empty / "checkpoints" / "real.safetensors", SD1_CHECKPOINT)
    (error,) = run_jobs(empty, tmp_path / "data2", [job])
    assert isinstance(error, JobError) and error.code is ErrorCode.MODEL_UNAVAILABLE
    assert f"{empty / 'upscale_models'}/" in error.message
