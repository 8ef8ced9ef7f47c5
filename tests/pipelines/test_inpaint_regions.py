"""Outpaint padding and mask margin (Runware's `outpaint` and `maskMargin`) on inpaint jobs.

Outpaint padding puts the raw image, stretched to the area the padding leaves, at (left, top)
and redraws the edge-extended border around it. A mask margin redraws only the blurred mask's
bounding box grown by the margin and widened to the job's ratio, zoomed to the job's size, then
put back. Pure tests pin the placement and region maths with hand-worked numbers; engine jobs are
compared with the direct diffusers inpaint call on the canvas or crop built here by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionInpaintPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image, ImageFilter

from pipelines.control import PreparedControl, UnitControlNet
from pipelines.jobs import (
    ControlUnit,
    ErrorCode,
    GenerationJob,
    JobError,
    JobKind,
    JobResult,
    Padding,
)
from pipelines.masking import (
    Placement,
    Region,
    composite,
    fit_mask,
    fit_raw,
    inpaint_canvas,
    place,
    zoom_in,
    zoom_out,
    zoom_region,
)
from pipelines.runners.inpaint import zoomed_control
from tests.engine_harness import run_jobs
from tests.models.tiny_controlnet import tiny_sd1_controlnet
from tests.pipelines.masked_support import (
    SD1,
    assert_same,
    generators,
    load_reference,
    make_models_dir,
    noise_image,
    one_torch_thread,
    pixels,
)

LANCZOS = Image.Resampling.LANCZOS


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


# --- placement with outpaint padding ------------------------------------------------------------

PAD = Padding(top=8, right=4, bottom=16, left=12)  # on 64x64: the image gets 48x40 at (12, 8)


def test_padding_places_the_image_at_left_top() -> None:
    assert place((40, 24), 64, 64, PAD) == Placement(12, 8, 48, 40)
    assert place((10, 300), 64, 64, PAD) == Placement(12, 8, 48, 40)  # stretched, any ratio
    assert place((40, 24), 64, 48, Padding()) == Placement(0, 0, 64, 48)
    assert place((40, 24), 64, 64, Padding(top=63, left=63)) == Placement(63, 63, 1, 1)


def test_without_padding_the_image_is_fitted_and_centred() -> None:
    assert place((48, 48), 64, 64) == Placement(8, 8, 48, 48)
    assert place((128, 64), 64, 64) == Placement(0, 16, 64, 32)


@pytest.mark.parametrize(
    "padding",
    [
        Padding(left=40, right=24),  # no column left
        Padding(top=64),
        Padding(top=30, bottom=40),
        Padding(top=-1),
        Padding(right=-8, left=4),
    ],
)
def test_padding_that_leaves_no_room_is_refused(padding: Padding) -> None:
    with pytest.raises(JobError) as caught:
        place((40, 24), 64, 64, padding)
    assert caught.value.code is ErrorCode.INVALID_INPUT
    assert "outpaint padding" in caught.value.message and "64x64" in caught.value.message


def test_padded_canvas_edge_extends_the_border_and_masks_it() -> None:
    raw = noise_image((40, 24), 5)
    image, box = fit_raw(raw, 64, 64, PAD)
    assert box == Placement(12, 8, 48, 40)
    canvas, inner = pixels(image), pixels(raw.resize((48, 40), LANCZOS))
    assert np.array_equal(canvas[8:48, 12:60], inner)
    assert np.array_equal(canvas[:8, 12:60], np.broadcast_to(inner[0], (8, 48, 3)))
    assert np.array_equal(canvas[48:, 12:60], np.broadcast_to(inner[-1], (16, 48, 3)))
    assert np.array_equal(canvas[8:48, :12], np.broadcast_to(inner[:, :1], (40, 12, 3)))
    assert np.array_equal(canvas[8:48, 60:], np.broadcast_to(inner[:, -1:], (40, 4, 3)))
    assert (canvas[:8, :12] == inner[0, 0]).all() and (canvas[48:, 60:] == inner[-1, -1]).all()
    mask = np.asarray(fit_mask(box_mask((40, 24), (0, 0, 20, 24)), (40, 24), 64, 64, PAD))
    want = np.full((64, 64), 255, np.uint8)
    want[8:48, 36:60] = 0  # the raw image's right half (its mask's black half) is kept
    assert np.array_equal(mask, want)


# --- the region a mask margin redraws -----------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "margin", "want"),
    [
        # bbox 12x10 grown by 4 to 20x18 (36, 4, 56, 22); widened to 4:3: 24x18 around its centre
        ((40, 8, 52, 18), 4, Region(34, 4, 58, 22)),
        # grown to (52, 12, 64, 38): 12x26, widened to 35x26 and shifted back inside the canvas
        ((60, 20, 64, 30), 8, Region(29, 12, 64, 38)),
        # a 56x4 strip: heightened to 56x42 around its centre, rows 1..43
        ((4, 20, 60, 24), 0, Region(4, 1, 60, 43)),
        # a margin that reaches past every edge: the whole canvas
        ((30, 20, 34, 24), 40, Region(0, 0, 64, 48)),
        # at the job's ratio once grown (10x6 + 2 * 3 = 16x12): the grown bbox as it is
        ((10, 10, 20, 16), 3, Region(7, 7, 23, 19)),
        # 12x10 once grown: widened to round(10 * 4 / 3) = 13, the odd column on the right
        ((10, 10, 18, 16), 2, Region(8, 8, 21, 18)),
    ],
)
def test_zoom_region(box: tuple[int, int, int, int], margin: int, want: Region) -> None:
    region = zoom_region(box_mask((64, 48), box), margin, 64, 48)
    assert region == want
    left, top, right, bottom = box
    assert region.left <= left and region.top <= top  # the mask is inside
    assert region.right >= right and region.bottom >= bottom


def test_zoom_region_follows_soft_mask_edges_and_empty_masks() -> None:
    soft = Image.new("L", (64, 48), 0)
    soft.putpixel((20, 30), 1)  # any non-zero weight can change a pixel: it is inside
    assert zoom_region(soft, 0, 64, 48) == Region(20, 30, 21, 31)  # 1x1: 4:3 rounds to 1x1
    assert zoom_region(Image.new("L", (64, 48), 0), 8, 64, 48) is None


def test_negative_margin_is_refused() -> None:
    with pytest.raises(JobError) as caught:
        zoom_region(box_mask((64, 48), (0, 0, 8, 8)), -1, 64, 48)
    assert caught.value.code is ErrorCode.INVALID_INPUT and "margin" in caught.value.message


def test_zoom_in_and_out() -> None:
    canvas = noise_image((64, 48), 6)
    region = Region(28, 0, 64, 27)
    zoomed = zoom_in(canvas, region, 64, 48)
    assert zoomed.size == (64, 48)
    assert np.array_equal(pixels(zoomed), pixels(canvas.crop(region.box).resize((64, 48), LANCZOS)))
    other = noise_image((64, 48), 7)
    out = pixels(zoom_out(other, region, canvas))
    inside = np.zeros((48, 64), bool)
    inside[0:27, 28:64] = True
    assert np.array_equal(out[~inside], pixels(canvas)[~inside])
    assert np.array_equal(out[inside].reshape(27, 36, 3), pixels(other.resize((36, 27), LANCZOS)))
    whole = Region(0, 0, 64, 48)
    assert np.array_equal(pixels(zoom_in(canvas, whole, 64, 48)), pixels(canvas))
    assert np.array_equal(pixels(zoom_out(other, whole, canvas)), pixels(other))


def test_zoomed_control_crops_maps_and_unit_masks() -> None:
    net = tiny_sd1_controlnet(10)
    mask = torch.arange(48 * 64, dtype=torch.float32).reshape(1, 1, 48, 64)
    units = [UnitControlNet(net, mask=mask, cfg=False), UnitControlNet(net)]
    maps = [noise_image((64, 48), 8), noise_image((64, 48), 9)]
    args = {"controlnet_conditioning_scale": [0.5, 1.0]}
    control = PreparedControl(MultiControlNetModel(units), maps, args)
    region = Region(28, 0, 64, 27)
    zoomed = zoomed_control(control, region, 64, 48)
    for got, want in zip(zoomed.images, maps, strict=True):
        assert np.array_equal(pixels(got), pixels(want.crop(region.box).resize((64, 48), LANCZOS)))
    first, second = zoomed.controlnet.nets
    assert torch.equal(first.mask, mask[..., 0:27, 28:64]) and second.mask is None
    assert first.net is net and first.cfg is False and second.cfg is True
    assert zoomed.args == args
    assert units[0].mask is mask  # the job's own wrappers are left as they were


# --- engine jobs --------------------------------------------------------------------------------

RAW = noise_image((40, 24), 1)  # outpainted to 64x64
WIDE = noise_image((64, 48), 2)  # the job's size: the canvas is the raw image
MAP = noise_image((64, 48), 3)
CONTROLNET = "cn"

OUTPAINT = GenerationJob(
    kind=JobKind.INPAINT,
    model=SD1,
    prompt="a lighthouse",
    negative_prompt="blurry",
    width=64,
    height=64,
    steps=3,
    guidance_scale=5.0,
    seeds=(21,),
    init_image=RAW,
    mask=box_mask((40, 24), (8, 6, 20, 14)),  # plus a patch of the raw image
    strength=1.0,
    outpaint=PAD,
)
MARGIN_MASK = box_mask((64, 48), (40, 8, 52, 18))
MARGIN = replace(
    OUTPAINT,
    width=64,
    height=48,
    seeds=(31, 32),
    init_image=WIDE,
    mask=MARGIN_MASK,
    mask_blur=2,
    strength=0.8,
    outpaint=None,
    mask_margin=4,
)
# The blurred mask spans (35, 3, 57, 23); grown by 4 and clamped: (31, 0, 61, 27), 30x27;
# widened to 64:48 around its centre: 36x27 from x = 28, which ends at the canvas edge.
MARGIN_REGION = (28, 0, 64, 27)
JOBS = {
    "outpaint": OUTPAINT,
    "margin": MARGIN,
    "margin_whole": replace(MARGIN, seeds=(33,), mask_margin=64),  # the region is the canvas
    "margin_control": replace(
        MARGIN, seeds=(34,), controls=(ControlUnit(model=CONTROLNET, image=MAP, weight=0.8),)
    ),
    "margin_empty": replace(MARGIN, mask=Image.new("L", (64, 48), 0)),
    "bad_padding": replace(OUTPAINT, outpaint=Padding(left=40, right=24)),
    "negative_padding": replace(OUTPAINT, outpaint=Padding(bottom=-4)),
    "negative_margin": replace(MARGIN, mask_margin=-2),
}


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("inpaint_regions")
    models = make_models_dir(root, [SD1])
    tiny_sd1_controlnet(10).save_pretrained(models / "controlnet" / CONTROLNET)
    results = run_jobs(models, root / "data", list(JOBS.values()))
    return {
        "results": dict(zip(JOBS, results, strict=True)),
        "ref": load_reference(models, SD1, root / "cache"),
        "net": ControlNetModel.from_pretrained(models / "controlnet" / CONTROLNET),
    }


def images(setup: dict, name: str) -> tuple[Image.Image, ...]:
    result = setup["results"][name]
    assert isinstance(result, JobResult), result
    return result.images


def direct_inpaint(
    ref: DiffusionPipeline,
    job: GenerationJob,
    image: Image.Image,
    mask: Image.Image,
    net: ControlNetModel | None = None,
    **call: object,
) -> list[Image.Image]:
    """The diffusers inpaint call (its ControlNet variant with `net`) on a start image and mask."""
    if net is None:
        pipe = StableDiffusionInpaintPipeline(**ref.components)
    else:
        pipe = StableDiffusionControlNetInpaintPipeline.from_pipe(ref, controlnet=net)
    pipe.scheduler = type(ref.scheduler).from_config(ref.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        image=[image] * job.num_images,
        mask_image=mask,
        strength=job.strength,
        width=job.width,
        height=job.height,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=job.num_images,
        generator=generators(job.seeds),
        **call,
    )
    return list(out.images)


def outpaint_canvas() -> tuple[Image.Image, Image.Image]:
    """OUTPAINT's canvas and mask by hand: the raw image stretched to 48x40 at (12, 8), rows
    and columns repeated outwards; the mask's patch (8..20 x 6..14 of 40x24) scaled alike."""
    inner = np.asarray(RAW.resize((48, 40), LANCZOS))
    canvas = np.pad(inner, ((8, 16), (12, 4), (0, 0)), mode="edge")
    patch = np.asarray(OUTPAINT.mask.resize((48, 40), LANCZOS)) > 127
    mask = np.pad(np.where(patch, 255, 0).astype(np.uint8), ((8, 16), (12, 4)), constant_values=255)
    return Image.fromarray(canvas, "RGB"), Image.fromarray(mask, "L")


def margin_direct(
    setup: dict, job: GenerationJob, region: tuple[int, int, int, int], **call: object
) -> list[Image.Image]:
    """The zoomed redraw by hand: crop the raw image and blurred mask to the region, stretch
    them to 64x48, redraw, stretch the result back into the region, composite over the raw."""
    blurred = MARGIN_MASK.filter(ImageFilter.GaussianBlur(2))
    size = region[2] - region[0], region[3] - region[1]
    crop = WIDE.crop(region).resize((64, 48), LANCZOS)
    mask = blurred.crop(region).resize((64, 48), LANCZOS)
    out = []
    for image in direct_inpaint(setup["ref"], job, crop, mask, **call):
        pasted = WIDE.copy()
        pasted.paste(image.resize(size, LANCZOS), region[:2])
        out.append(composite(pasted, WIDE, blurred))
    return out


def test_outpaint_matches_the_direct_call_on_the_padded_canvas(setup: dict) -> None:
    canvas, mask = outpaint_canvas()
    engine = inpaint_canvas(RAW, OUTPAINT.mask, 64, 64, 0, PAD)
    assert_same([canvas, mask], [engine.image, engine.mask])
    want = [
        composite(i, canvas, mask) for i in direct_inpaint(setup["ref"], OUTPAINT, canvas, mask)
    ]
    assert_same(images(setup, "outpaint"), want)


def test_outpaint_keeps_the_raw_image_at_left_top(setup: dict) -> None:
    (out,) = images(setup, "outpaint")
    got, inner = pixels(out), pixels(RAW.resize((48, 40), LANCZOS))
    kept = ~(np.asarray(OUTPAINT.mask.resize((48, 40), LANCZOS)) > 127)
    assert np.array_equal(got[8:48, 12:60][kept], inner[kept])
    border = np.ones((64, 64), bool)
    border[8:48, 12:60] = False
    canvas = pixels(outpaint_canvas()[0])
    assert np.abs(got[border] - canvas[border]).mean() > 10  # the border is redrawn
    assert np.abs(got[8:48, 12:60][~kept] - inner[~kept]).mean() > 10  # and the patch


def test_mask_margin_redraws_the_region_zoomed(setup: dict) -> None:
    blurred = MARGIN_MASK.filter(ImageFilter.GaussianBlur(2))
    assert blurred.getbbox() == (35, 3, 57, 23)
    assert zoom_region(blurred, 4, 64, 48).box == MARGIN_REGION
    assert_same(images(setup, "margin"), margin_direct(setup, MARGIN, MARGIN_REGION))


def test_mask_margin_keeps_pixels_outside_the_mask(setup: dict) -> None:
    blurred = np.asarray(MARGIN_MASK.filter(ImageFilter.GaussianBlur(2)))
    raw = pixels(WIDE)
    first, second = (pixels(image) for image in images(setup, "margin"))
    for out in (first, second):
        assert np.array_equal(out[blurred == 0], raw[blurred == 0])
        core = out[11:15, 43:49] - raw[11:15, 43:49]  # the mask's middle, nearly opaque
        assert np.abs(core).mean() > 10
    assert not np.array_equal(first, second)  # each image from its own seed


def test_a_margin_covering_the_canvas_is_the_whole_canvas_redraw(setup: dict) -> None:
    job = JOBS["margin_whole"]
    blurred = MARGIN_MASK.filter(ImageFilter.GaussianBlur(2))
    plain = direct_inpaint(setup["ref"], job, WIDE, blurred)
    assert_same(images(setup, "margin_whole"), [composite(i, WIDE, blurred) for i in plain])


def test_mask_margin_crops_the_control_map_alike(setup: dict) -> None:
    job = JOBS["margin_control"]
    control = MAP.crop(MARGIN_REGION).resize((64, 48), LANCZOS)
    call = {"control_image": control, "controlnet_conditioning_scale": 0.8}
    want = margin_direct(setup, job, MARGIN_REGION, net=setup["net"], **call)
    assert_same(images(setup, "margin_control"), want)
    whole_map = {**call, "control_image": MAP}
    uncropped = margin_direct(setup, job, MARGIN_REGION, net=setup["net"], **whole_map)
    assert not np.array_equal(pixels(want[0]), pixels(uncropped[0]))  # the crop matters


def test_mask_margin_with_an_empty_mask_returns_the_raw_image(setup: dict) -> None:
    assert_same(images(setup, "margin_empty"), [WIDE, WIDE])


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("bad_padding", "outpaint padding"),
        ("negative_padding", "outpaint padding"),
        ("negative_margin", "margin"),
    ],
)
def test_bad_regions_are_refused(setup: dict, name: str, words: str) -> None:
    error = setup["results"][name]
    assert isinstance(error, JobError), error
    assert error.code is ErrorCode.INVALID_INPUT and words in error.message
