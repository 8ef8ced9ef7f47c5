"""Jobs survive the JSON trip from API replicas to workers exactly, and bad data is refused."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.job_codec import JobCodecError, decode_job, encode_job
from pipelines.jobs import (
    BackgroundRemovalJob,
    Box,
    CaptionJob,
    ControlMode,
    ControlUnit,
    GenerationJob,
    JobKind,
    Padding,
    PreprocessJob,
    PromptEnhanceJob,
    PromptWeighting,
    Refiner,
    ResizeMode,
    StyleReference,
    SubModel,
    SubModelKind,
    UpscaleJob,
)

RNG = np.random.default_rng(0)


def _image(mode: str, size: tuple[int, int] = (7, 5)) -> Image.Image:
    """Random pixels in any mode (raw bytes, so every bit of the mode's range is exercised)."""
    blank = Image.new(mode, size)
    noise = RNG.integers(0, 256, len(blank.tobytes()), dtype=np.uint8).tobytes()
    image = Image.frombytes(mode, size, noise)
    if mode == "P":
        image.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tobytes())
    return image


def _trip(job: Any) -> Any:
    return decode_job(json.loads(json.dumps(encode_job(job))))


def _assert_same(expected: Any, actual: Any, path: str = "job") -> None:
    """Deep equality with exact types; images equal by mode, size, pixels (and palette)."""
    assert type(actual) is type(expected) or isinstance(expected, Image.Image), path
    if isinstance(expected, Image.Image):
        assert isinstance(actual, Image.Image), path
        assert (actual.mode, actual.size) == (expected.mode, expected.size), path
        assert np.array_equal(np.asarray(actual), np.asarray(expected)), path
        assert actual.tobytes() == expected.tobytes(), path
        assert actual.getpalette() == expected.getpalette(), path
    elif dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            _assert_same(getattr(expected, f.name), getattr(actual, f.name), f"{path}.{f.name}")
    elif isinstance(expected, tuple | Mapping):
        assert len(actual) == len(expected), path
        if isinstance(expected, Mapping):
            assert list(actual) == list(expected), path
            expected, actual = tuple(expected.values()), tuple(actual.values())
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _assert_same(e, a, f"{path}[{i}]")
    else:
        assert actual == expected, path


def _loaded_job() -> GenerationJob:
    return GenerationJob(
        kind=JobKind.INPAINT,
        model="sdxl-base",
        prompt="a (red:1.2) fox",
        negative_prompt="blurry",
        width=64,
        height=48,
        steps=3,
        guidance_scale=6.5,
        seeds=(7, 8, 2**40),
        sampler="euler_a",
        clip_skip=2,
        init_image=_image("RGBA"),
        strength=0.6,
        resize_mode=ResizeMode.CROP_AND_RESIZE,
        mask=_image("L"),
        mask_blur=4,
        fill_image=_image("RGB"),
        fill_resize_mode=ResizeMode.JUST_RESIZE,
        deep_fusion=True,
        controls=(
            ControlUnit(
                model="canny-cn",
                image=_image("RGB"),
                mask=_image("1"),
                preprocessor="mlsd",
                preprocessor_options=MappingProxyType({"value_threshold": 0.1, "distance": 2.0}),
                resolution=256,
                weight=0.7,
                start=0.1,
                end=0.9,
                mode=ControlMode.PROMPT,
                resize_mode=ResizeMode.JUST_RESIZE,
            ),
            ControlUnit(model="depth-cn", image=_image("P"), mask=_image("I;16")),
        ),
        style=StyleReference(image=_image("LA"), strength=0.8, adapter="ipa-plus"),
        sub_models=(
            SubModel(kind=SubModelKind.LORA, model="lora-1", weight=0.6),
            SubModel(kind=SubModelKind.EMBEDDING, model="emb-1"),
            SubModel(kind=SubModelKind.HYPERNETWORK, model="hn-1", weight=-0.5),
        ),
        tileable=True,
        use_model_vae=False,
        vae="vae-ft-mse",
        refiner=Refiner(model="sdxl-refiner", start=0.8),
        prompt_weighting=PromptWeighting.SDEMBEDS,
        mask_margin=32,
        outpaint=Padding(top=1, right=2, bottom=3, left=4),
        translate_prompts=True,
        prompt_language="de",
        check_nsfw=True,
        owner="key-1",
        priority=5,
    )


def _plain_job(**changes: Any) -> GenerationJob:
    fields = dict(kind=JobKind.TXT2IMG, model="", prompt="p", width=64, height=64, steps=2)
    return GenerationJob(**{**fields, "guidance_scale": 7.0, "seeds": (1,), **changes})


def test_fully_loaded_generation_job_round_trips_exactly() -> None:
    job = _loaded_job()
    for f in dataclasses.fields(GenerationJob):  # every field set: nothing escapes the test
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert getattr(job, f.name) != default, f"{f.name} is left at its default"
    decoded = _trip(job)
    _assert_same(job, decoded)
    assert isinstance(decoded.controls[0].preprocessor_options, MappingProxyType)


def test_jobs_without_images_round_trip_to_equal_dataclasses() -> None:
    job = _plain_job(
        guidance_scale=7,  # an int where a float is typed still compares equal
        sub_models=(SubModel(kind=SubModelKind.LORA, model="l"),),
        refiner=Refiner(model="r", start=0.5),
    )
    decoded = _trip(job)
    assert decoded == job
    assert type(decoded.guidance_scale) is float
    assert _trip(_plain_job()) == _plain_job()


def _every_field_set(job: Any) -> None:
    for f in dataclasses.fields(job):
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert getattr(job, f.name) != default, f"{f.name} is left at its default"


def test_utility_jobs_round_trip_exactly() -> None:
    jobs = [
        BackgroundRemovalJob(
            images=(_image("RGB"), _image("RGBA")),
            model="rmbg-1.4",
            box=Box(left=1, top=2, width=3, height=4),
            only_mask=True,
            alpha_matting=None,
            foreground_threshold=200,
            background_threshold=20,
            erode_size=5,
            post_process_mask=True,
            background=(1, 2, 3, 4),
            owner="k",
            priority=1,
        ),
        CaptionJob(
            images=(_image("RGB"),),
            model="blip",
            prompt="a photo of",
            language="de",
            max_tokens=20,
            owner="k",
            priority=2,
        ),
        PromptEnhanceJob(
            prompt="a cat", versions=3, max_length=100, seed=7, model="gpt", owner="k", priority=3
        ),
        UpscaleJob(
            image=_image("RGB"), factor=3.0, width=100, height=80, model="x4", owner="k", priority=4
        ),
    ]
    for job in jobs:
        _every_field_set(job)
        _assert_same(job, _trip(job))
    assert _trip(jobs[0]).box == Box(left=1, top=2, width=3, height=4)
    assert _trip(jobs[0]).alpha_matting is None


def test_preprocess_job_round_trips() -> None:
    job = PreprocessJob(
        image=_image("RGB"),
        preprocessor="canny",
        options=MappingProxyType({"low_threshold": 100.0, "high_threshold": 200.0}),
        resolution=384,
        width=40,
        height=30,
        owner="k",
        priority=-1,
    )
    _assert_same(job, _trip(job))
    plain = PreprocessJob(image=_image("L"), preprocessor="lineart")
    _assert_same(plain, _trip(plain))


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16B", "RGBX"])
def test_modes_png_cannot_hold_travel_raw_and_losslessly(mode: str) -> None:
    job = PreprocessJob(image=_image(mode), preprocessor="canny")
    assert "raw" in encode_job(job)["fields"]["image"]
    _assert_same(job, _trip(job))


def test_paletted_image_without_a_palette_round_trips() -> None:
    image = Image.frombytes("P", (4, 3), bytes(range(12)))  # PNG would remap these indices
    job = PreprocessJob(image=image, preprocessor="canny")
    _assert_same(job, _trip(job))


def test_an_image_no_lossless_encoding_holds_is_refused() -> None:
    image = Image.new("PA", (4, 4))
    image.putpalette(bytes(range(48)))
    with pytest.raises(JobCodecError, match=r"PreprocessJob\.image: cannot encode a PA image"):
        encode_job(PreprocessJob(image=image, preprocessor="canny"))


def test_only_job_classes_can_be_encoded() -> None:
    with pytest.raises(JobCodecError, match="not a job class"):
        encode_job(Refiner(model="r", start=0.5))  # type: ignore[arg-type]
    with pytest.raises(JobCodecError, match=r"GenerationJob\.seeds\[0\]: cannot encode a set"):
        encode_job(_plain_job(seeds=({1},)))


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return edit


def _drop(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return edit


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _jpeg() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    return _b64(buffer.getvalue())


F = ("fields",)
C0 = (*F, "controls", 0)
RAW_L_2x2 = {"raw": _b64(zlib.compress(b"\0" * 4)), "mode": "L", "size": [2, 2]}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set(("type",), "ControlUnit"), "unknown job type 'ControlUnit'"),
        (_set(("type",), "os.system"), "unknown job type"),
        (_set(("type",), ["GenerationJob"]), "unknown job type"),
        (_set(("extra",), 1), "exactly the keys 'type' and 'fields'"),
        (_drop(("fields",)), "exactly the keys"),
        (_set(("fields",), []), "GenerationJob: expected a GenerationJob object, got list"),
        (_set((*F, "colour"), "red"), r"GenerationJob: unknown fields \['colour'\]"),
        (_set((*C0, "gamma"), 1.0), r"GenerationJob\.controls\[0\]: unknown fields \['gamma'\]"),
        (_drop((*F, "prompt")), r"missing fields \['prompt'\]"),
        (_drop((*C0, "image")), r"controls\[0\]: missing fields \['image'\]"),
        (_set((*F, "width"), "512"), "GenerationJob.width: expected int, got '512'"),
        (_set((*F, "width"), 512.0), "GenerationJob.width: expected int"),
        (_set((*F, "width"), True), "GenerationJob.width: expected int"),
        (_set((*F, "width"), None), "GenerationJob.width: expected int"),
        (_set((*F, "guidance_scale"), "7"), "guidance_scale: expected float"),
        (_set((*F, "tileable"), 1), "tileable: expected bool"),
        (_set((*F, "seeds"), "1,2"), "seeds: expected an array, got str"),
        (_set((*F, "seeds"), [1, "2"]), r"seeds\[1\]: expected int"),
        (_set((*F, "kind"), "img3img"), "GenerationJob.kind: 'img3img' is not one of"),
        (_set((*F, "resize_mode"), None), "resize_mode: None is not one of"),
        (_set((*F, "sampler"), 5), "sampler: expected str, got 5"),
        (_set((*F, "outpaint"), [1, 2, 3, 4]), "outpaint: expected a Padding object"),
        (_set((*C0, "preprocessor_options"), {"x": "a"}), r"preprocessor_options\.x: expected"),
        (_set((*C0, "preprocessor_options"), [1.0]), "preprocessor_options: expected an object"),
        (_set((*F, "mask"), "iVBORw0KGgo="), "mask: expected an encoded image, got str"),
        (_set((*F, "mask"), {"image": "not base64!"}), "mask: bad base64"),
        (_set((*F, "mask"), {"image": _b64(b"\x89PNG...")}), "mask: not a valid PNG image"),
        (_set((*F, "mask"), {"image": _jpeg()}), "mask: not a valid PNG image"),
        (_set((*F, "mask"), {"png": ""}), "mask: expected {'image'} or"),
        (_set((*F, "mask"), {**RAW_L_2x2, "size": [3, 2]}), "mask: bad raw L image"),
        (_set((*F, "mask"), {**RAW_L_2x2, "size": [1, 1]}), "does not match its size"),
        (_set((*F, "mask"), {**RAW_L_2x2, "size": [0, 4]}), "bad raw image size 0x4"),
        (_set((*F, "mask"), {**RAW_L_2x2, "size": [2**20, 2**20]}), "bad raw image size"),
        (_set((*F, "mask"), {**RAW_L_2x2, "mode": "XYZ"}), "mask: bad raw XYZ image"),
        (_set((*F, "mask"), {**RAW_L_2x2, "raw": _b64(b"junk")}), "mask: bad raw L image"),
        (_set((*F, "init_image", "raw"), _b64(zlib.compress(bytes(10**7)))), "does not match"),
    ],
)
def test_malformed_data_is_refused_with_a_clear_error(
    edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    job = _plain_job(
        kind=JobKind.INPAINT,
        init_image=_image("CMYK"),
        mask=_image("L"),
        controls=(ControlUnit(model="c", image=_image("RGB")),),
    )
    data = copy.deepcopy(encode_job(job))
    edit(data)
    with pytest.raises(JobCodecError, match=message) as raised:
        decode_job(json.loads(json.dumps(data)))
    assert isinstance(raised.value, ValueError)


def test_fields_left_out_take_their_defaults() -> None:
    data = encode_job(_plain_job())
    for name in ("negative_prompt", "controls", "style", "priority", "resize_mode"):
        del data["fields"][name]
    assert decode_job(data) == _plain_job()
