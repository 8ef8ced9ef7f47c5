"""Background removal (pipelines.utilities.background_removal) on tiny RMBG-1.4 and BiRefNet
folders saved like the real repositories and loaded through the runner's own loader.

The tiny models call bright pixels foreground, so a light disc on a dark ground is the subject.
Parity: the runner's mask equals each family's reference inference (their published
preprocessing written out here, the model loaded apart from the runner) plus the documented
post-processing; then every option is checked for what it must (and must not) change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from safetensors.torch import load_file
from torchvision import transforms
from transformers import AutoConfig, AutoModelForImageSegmentation
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from models.cache import PipelineCache
from models.catalogue import Catalogue
from models.utility_models import Utility, UtilityModel, UtilityModelMissing, find
from pipelines.jobs import BackgroundRemovalJob, Box, ErrorCode, JobError, JobResult
from pipelines.runners.common import Resources, RunContext
from pipelines.utilities import UTILITIES
from pipelines.utilities import background_removal as br
from tests.engine_harness import run_jobs
from tests.models.tiny_rmbg import FAMILIES, save_tiny_rmbg

FOLDER = "background-removal"
SIZE = (64, 48)
DISC = (16, 8, 48, 40)  # the subject's bounding box
SPECKLES = ((4, 4), (58, 42), (60, 6))  # single bright pixels in the background


def photo(blur: float = 0.0, speckles: bool = False) -> Image.Image:
    """A light, textured disc on a dark blue-grey ground; blurred = a soft edge."""
    image = Image.new("RGB", SIZE, (20, 30, 45))
    draw = ImageDraw.Draw(image)
    draw.ellipse(DISC, fill=(235, 205, 180))
    draw.line((24, 24, 40, 24), fill=(200, 160, 150), width=2)
    if speckles:
        for x, y in SPECKLES:
            image.putpixel((x, y), (255, 255, 255))
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur else image


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    for family in FAMILIES:
        save_tiny_rmbg(models / FOLDER / family, family)
    return models


@pytest.fixture(scope="module")
def context(models_dir: Path) -> RunContext:
    cache = PipelineCache("cpu", torch.float32)
    return RunContext(
        lambda _step, _total: None, resources=Resources(Catalogue([]), cache, models_dir)
    )


Runner = Callable[..., list[JobResult]]


@pytest.fixture(scope="module")
def remove(models_dir: Path, context: RunContext) -> Runner:
    """remove(family, *jobs) -> the runner's results for one batch."""

    def call(family: str, *jobs: BackgroundRemovalJob) -> list[JobResult]:
        model = find(models_dir, Utility.BACKGROUND_REMOVAL, family)
        return br.run(list(jobs), model, context)

    return call


def one(remove: Runner, family: str, image: Image.Image, **options: object) -> Image.Image:
    (result,) = remove(family, BackgroundRemovalJob(images=(image,), **options))
    assert result.seeds == (0,)
    (out,) = result.images
    return out


def mask_of(remove: Runner, family: str, image: Image.Image, **options: object) -> np.ndarray:
    out = one(remove, family, image, only_mask=True, **options)
    box = options.get("box")
    assert out.mode == "L"
    assert out.size == (image.size if box is None else (box.width, box.height))  # type: ignore[attr-defined]
    return np.asarray(out)


# --- the reference: each family's published inference, written out ---------------------------


def reference_model(folder: Path, family: str) -> torch.nn.Module:
    if family == "BriaRMBG":  # loads with from_pretrained like its model card says
        return AutoModelForImageSegmentation.from_pretrained(
            str(folder), trust_remote_code=True, local_files_only=True
        ).eval()
    # BiRefNet's model swaps its config object, which transformers 5's from_pretrained cannot
    # take: build the class from the folder's code and read the weights by hand.
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
    model_class = get_class_from_dynamic_module(
        config.auto_map["AutoModelForImageSegmentation"], str(folder), local_files_only=True
    )
    model = model_class(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def reference_mask(folder: Path, family: str, image: Image.Image) -> np.ndarray:
    model = reference_model(folder, family)
    with torch.inference_mode():
        if family == "BriaRMBG":  # RMBG-1.4's utilities.preprocess_image / postprocess_image
            pixels = torch.tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1)
            resized = F.interpolate(pixels[None], size=(1024, 1024), mode="bilinear") / 255.0
            probability = model(resized - 0.5)[0][0]
        else:  # BiRefNet's model card
            transform = transforms.Compose(
                [
                    transforms.Resize((1024, 1024)),
                    transforms.ToTensor(),
                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                ]
            )
            probability = model(transform(image)[None])[-1].sigmoid()
    # the documented post-processing: bilinear back to the image, RMBG-1.4 stretched, x 255
    mask = F.interpolate(probability, size=image.size[::-1], mode="bilinear")[0, 0]
    if family == "BriaRMBG":
        mask = (mask - mask.min()) / (mask.max() - mask.min())
    return (mask.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_and_cutout_match_the_reference_inference(
    remove: Runner, models_dir: Path, family: str
) -> None:
    image = photo(blur=1.5)
    expected = reference_mask(models_dir / FOLDER / family, family, image)
    assert np.array_equal(mask_of(remove, family, image), expected)
    # the tiny model means it: the disc is the subject
    assert expected[24, 32] > 240 and expected[2, 2] < 15
    cutout = one(remove, family, image)
    assert cutout.mode == "RGBA" and cutout.size == image.size
    pixels = np.asarray(cutout)
    assert np.array_equal(pixels[..., :3], np.asarray(image))  # colours kept, even if clear
    assert np.array_equal(pixels[..., 3], expected)


def test_loading_reads_the_architecture_and_keeps_the_model(
    models_dir: Path, context: RunContext
) -> None:
    cache = context.resources.cache  # type: ignore[union-attr]
    for family in FAMILIES:
        model = find(models_dir, Utility.BACKGROUND_REMOVAL, family)
        segmenter = br._segmenter(model, context)
        assert segmenter.family is br.FAMILIES[family]
        assert br._segmenter(model, context) is segmenter  # cached per model folder
        assert (
            cache.component((Utility.BACKGROUND_REMOVAL.value, str(model.path)), dict) is segmenter
        )


def test_utilities_table_runs_this_module() -> None:
    runner = UTILITIES[BackgroundRemovalJob]
    assert runner.utility is Utility.BACKGROUND_REMOVAL
    assert runner.run is br.run and runner.check is br.check


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_box_segments_only_the_box_and_crops_to_it(remove: Runner, family: str) -> None:
    image = photo(blur=1.5)
    box = Box(left=10, top=5, width=30, height=36)
    crop = image.crop((10, 5, 40, 41))
    out = one(remove, family, image, box=box)
    assert out.size == (30, 36) and out.mode == "RGBA"
    pixels = np.asarray(out)
    assert np.array_equal(pixels[..., :3], np.asarray(crop))
    # the model saw the crop alone: the same mask as for the cropped image
    assert np.array_equal(pixels[..., 3], mask_of(remove, family, crop))
    assert np.array_equal(mask_of(remove, family, image, box=box), pixels[..., 3])


@pytest.mark.parametrize("family", FAMILIES)
def test_background_colour_is_composited_behind(remove: Runner, family: str) -> None:
    image = photo(blur=1.5)
    colour = (0, 0, 255, 255)
    alpha = mask_of(remove, family, image).astype(np.float64)[..., None] / 255
    out = one(remove, family, image, background=colour)
    assert out.mode == "RGBA"
    pixels = np.asarray(out).astype(np.float64)
    expected = np.asarray(image) * alpha + np.array(colour[:3]) * (1 - alpha)
    assert np.abs(pixels[..., :3] - expected).max() <= 1
    assert (pixels[..., 3] == 255).all()
    # with a binary mask: the colour exactly where clear, the image exactly where opaque
    binary = mask_of(remove, family, image, post_process_mask=True)
    out = np.asarray(one(remove, family, image, background=colour, post_process_mask=True))
    assert (out[binary == 0] == colour).all() and (binary == 0).any()
    assert (out[binary == 255][:, :3] == np.asarray(image)[binary == 255]).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_post_process_mask_drops_specks_and_binarises(remove: Runner, family: str) -> None:
    image = photo(speckles=True)
    plain = mask_of(remove, family, image)
    smoothed = mask_of(remove, family, image, post_process_mask=True)
    assert all(plain[y, x] > 127 for x, y in SPECKLES)  # the model does see the specks
    assert all(smoothed[y, x] == 0 for x, y in SPECKLES)
    assert set(np.unique(smoothed)) <= {0, 255}
    assert smoothed[24, 32] == 255
    assert np.array_equal(smoothed, br.smooth(plain))  # exactly the documented steps


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_matting_changes_the_edge_band_only(remove: Runner, family: str) -> None:
    """Certain pixels become exactly opaque / clear, the band between them is re-solved."""
    image = photo(blur=3)
    options = {"foreground_threshold": 200, "background_threshold": 40, "erode_size": 2}
    plain = mask_of(remove, family, image)
    matted = mask_of(remove, family, image, alpha_matting=True, **options)
    foreground, background = br.trimap(plain, 200, 40, 2)
    band = ~(foreground | background)
    assert foreground.any() and background.any() and band.any()
    assert (matted[foreground] == 255).all() and (matted[background] == 0).all()
    assert (matted[band] != plain[band]).sum() > band.sum() // 4


def test_matting_follows_the_colour_edge() -> None:
    """A blurred mask over a crisp subject: the guided filter pulls the band towards the
    subject's real outline (what the colours say), which the blurred mask alone cannot."""
    image = photo()
    outline = Image.new("L", SIZE, 0)
    ImageDraw.Draw(outline).ellipse(DISC, fill=255)
    truth = np.asarray(outline).astype(int)
    blurred = np.asarray(outline.filter(ImageFilter.GaussianBlur(3)))
    matted = br.matte(np.asarray(image), blurred, 240, 10, 1)
    foreground, background = br.trimap(blurred, 240, 10, 1)
    band = ~(foreground | background)
    error_before = np.abs(blurred[band] - truth[band]).mean()
    error_after = np.abs(matted[band] - truth[band]).mean()
    assert error_after < error_before / 2


@pytest.mark.parametrize("family", FAMILIES)
def test_automatic_matting_runs_on_soft_edges_only(remove: Runner, family: str) -> None:
    options = {"foreground_threshold": 200, "background_threshold": 40, "erode_size": 2}
    crisp, soft = photo(), photo(blur=3)
    crisp_plain = mask_of(remove, family, crisp, **options)
    soft_plain = mask_of(remove, family, soft, **options)
    assert not br.soft_edge(crisp_plain, SIZE, (1024, 1024))
    assert br.soft_edge(soft_plain, SIZE, (1024, 1024))
    auto_crisp = mask_of(remove, family, crisp, alpha_matting=None, **options)
    auto_soft = mask_of(remove, family, soft, alpha_matting=None, **options)
    assert np.array_equal(auto_crisp, crisp_plain)
    matted_soft = mask_of(remove, family, soft, alpha_matting=True, **options)
    assert np.array_equal(auto_soft, matted_soft) and not np.array_equal(auto_soft, soft_plain)


def test_soft_edge_is_counted_on_the_coarser_grid() -> None:
    """A ramp 8 pixels wide is a soft edge on an image smaller than the model's input, not on
    one 4 x its size (there it is a crisp edge of the model's grid, upscaled)."""
    ramp = np.tile(np.clip(np.arange(-40, 40) * 32 + 128, 0, 255), (80, 1)).astype(np.uint8)
    assert br.soft_edge(ramp, (80, 80), (1024, 1024))
    assert not br.soft_edge(ramp, (80, 80), (20, 20))


@pytest.mark.parametrize("family", FAMILIES)
def test_jobs_batched_in_one_forward_pass_match_each_alone(
    remove: Runner, models_dir: Path, context: RunContext, family: str
) -> None:
    first = BackgroundRemovalJob(images=(photo(), photo(blur=3)), alpha_matting=None)
    second = BackgroundRemovalJob(
        images=(photo(speckles=True),),
        box=Box(left=8, top=4, width=40, height=40),
        post_process_mask=True,
        background=(255, 255, 255, 255),
    )
    alone = [remove(family, first)[0], remove(family, second)[0]]
    model = br._segmenter(find(models_dir, Utility.BACKGROUND_REMOVAL, family), context).model
    calls: list[int] = []
    hook = model.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        together = remove(family, first, second)
    finally:
        hook.remove()
    assert calls == [3]  # all three images, one pass
    for a, b in zip(alone, together, strict=True):
        assert a.seeds == b.seeds
        assert [np.asarray(i).tolist() for i in a.images] == [
            np.asarray(i).tolist() for i in b.images
        ]


def test_progress_is_reported_and_cancellation_propagates(models_dir: Path) -> None:
    steps: list[tuple[int, int]] = []
    cache = PipelineCache("cpu", torch.float32)
    model = find(models_dir, Utility.BACKGROUND_REMOVAL, "BiRefNet")
    job = BackgroundRemovalJob(images=(photo(),))
    context = RunContext(
        lambda s, t: steps.append((s, t)), resources=Resources(Catalogue([]), cache, models_dir)
    )
    br.run([job], model, context)
    assert steps == [(1, 2), (2, 2)]

    def cancelled(_step: int, _total: int) -> None:
        raise JobError(ErrorCode.CANCELLED, "cancelled")

    context = RunContext(cancelled, resources=Resources(Catalogue([]), cache, models_dir))
    with pytest.raises(JobError) as error:
        br.run([job], model, context)
    assert error.value.code is ErrorCode.CANCELLED


# --- models that cannot run --------------------------------------------------------------------


def test_missing_model_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(UtilityModelMissing) as missing:
        find(tmp_path, Utility.BACKGROUND_REMOVAL)
    assert f"{tmp_path / FOLDER}/" in str(missing.value)
    assert "RMBG-1.4" in str(missing.value)


def _broken(tmp_path: Path, edit: Callable[[Path], None]) -> JobError:
    folder = save_tiny_rmbg(tmp_path / FOLDER / "broken")
    edit(folder)
    model = UtilityModel(Utility.BACKGROUND_REMOVAL, "broken", folder)
    context = RunContext(
        lambda _s, _t: None,
        resources=Resources(Catalogue([]), PipelineCache("cpu", torch.float32), tmp_path),
    )
    with pytest.raises(JobError) as error:
        br.run([BackgroundRemovalJob(images=(photo(),))], model, context)
    assert error.value.code is ErrorCode.MODEL_UNAVAILABLE
    return error.value


def test_unknown_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    def segformer(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["architectures"] = ["SegformerForSemanticSegmentation"]
        (folder / "config.json").write_text(json.dumps(config))

    error = _broken(tmp_path, segformer)
    assert "SegformerForSemanticSegmentation" in error.message
    assert "BriaRMBG" in error.message and "BiRefNet" in error.message


def test_missing_weights_name_the_file(tmp_path: Path) -> None:
    error = _broken(tmp_path, lambda folder: (folder / "model.safetensors").unlink())
    assert "model.safetensors" in error.message and "broken" in error.message


def test_broken_code_is_model_unavailable(tmp_path: Path) -> None:
    error = _broken(tmp_path, lambda folder: (folder / "briarmbg.py").unlink())
    assert "cannot load" in error.message and "broken" in error.message


# --- input validation --------------------------------------------------------------------------

BAD_JOBS = {
    "no image": {"images": ()},
    "foreground threshold": {"foreground_threshold": 256},
    "background threshold": {"background_threshold": -1},
    "erode size": {"erode_size": 300},
    "thresholds crossed": {"alpha_matting": True, "foreground_threshold": 10},
    "empty box": {"box": Box(left=0, top=0, width=0, height=10)},
    "box outside": {"box": Box(left=40, top=0, width=30, height=10)},
    "box before": {"box": Box(left=-1, top=0, width=10, height=10)},
    "box below": {"box": Box(left=0, top=40, width=10, height=9)},
    "background": {"background": (0, 0, 0, 256)},
    "short background": {"background": (0, 0, 0)},
}


@pytest.mark.parametrize("fields", BAD_JOBS.values(), ids=BAD_JOBS.keys())
def test_check_refuses_bad_requests(fields: dict[str, object]) -> None:
    job = BackgroundRemovalJob(**{"images": (photo(),), **fields})  # type: ignore[arg-type]
    with pytest.raises(JobError) as error:
        br.check(job)
    assert error.value.code is ErrorCode.INVALID_INPUT


def test_check_accepts_good_requests() -> None:
    br.check(BackgroundRemovalJob(images=(photo(),)))
    br.check(BackgroundRemovalJob(images=(photo(),), box=Box(left=0, top=0, width=64, height=48)))
    # crossed thresholds do not matter when matting is off
    br.check(BackgroundRemovalJob(images=(photo(),), foreground_threshold=5))


# --- through the engine --------------------------------------------------------------------------


def test_engine_runs_background_removal(models_dir: Path, tmp_path: Path, remove: Runner) -> None:
    image = photo(blur=1.5)
    job = BackgroundRemovalJob(images=(image,), model="BiRefNet", only_mask=True)
    bad = BackgroundRemovalJob(images=(image,), box=Box(left=60, top=0, width=10, height=10))
    done, refused = run_jobs(models_dir, tmp_path / "data", [job, bad])  # type: ignore[list-item]
    assert isinstance(done, JobResult)
    assert np.array_equal(np.asarray(done.images[0]), mask_of(remove, "BiRefNet", image))
    assert isinstance(refused, JobError) and refused.code is ErrorCode.INVALID_INPUT
    (missing,) = run_jobs(tmp_path / "empty", tmp_path / "data2", [job])  # type: ignore[list-item]
    assert isinstance(missing, JobError) and missing.code is ErrorCode.MODEL_UNAVAILABLE
    assert f"{tmp_path / 'empty' / FOLDER}/" in missing.message
