"""ControlNet preprocessors: the same maps as controlnet-aux called directly with the same
parameters; weights read from <models_dir>/annotators/ (a random-weight MLSD saved like the real
file); options checked by name; missing weights reported with the file and folder to install;
the listing the ListControlNets action serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.cache import PipelineCache
from models.catalogue import Catalogue
from pipelines.engine import Engine, EngineConfig
from pipelines.jobs import ErrorCode, JobError
from pipelines.preprocessors import (
    NO_PREPROCESSOR,
    PREPROCESSORS,
    controlnet_aux,
    list_preprocessors,
    preprocess,
)
from tests.models.tiny_controlnet import save_mlsd

RES = 64


def photo(seed: int, size: tuple[int, int] = (80, 64)) -> Image.Image:
    """Blocks of colour with hard edges: something for edge and line detectors to find."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.NEAREST)


IMAGE = photo(1)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    save_mlsd(models / "annotators")
    return models


def run(code: str, models_dir: Path | None = None, **kwargs) -> Image.Image:
    kwargs.setdefault("options", {})
    return preprocess(code, IMAGE, resolution=RES, models_dir=models_dir, **kwargs)


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b.convert("RGB")))


def test_canny_is_controlnet_aux_with_the_thresholds() -> None:
    detector = controlnet_aux().CannyDetector()
    options = {"low_threshold": 30, "high_threshold": 90}
    want = detector(IMAGE, 30, 90, detect_resolution=RES, image_resolution=RES)
    got = run("canny", options=options)
    assert same(got, want) and np.asarray(got).any()
    assert same(run("canny"), detector(IMAGE, detect_resolution=RES, image_resolution=RES))
    assert not same(got, run("canny"))  # the thresholds reach the detector


def test_shuffle_is_controlnet_aux_seeded_from_the_job() -> None:
    detector = controlnet_aux().ContentShuffleDetector()
    np.random.seed(5)
    want = detector(IMAGE, detect_resolution=RES, image_resolution=RES)
    state = np.random.get_state()
    assert same(run("shuffle", seed=5), want)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG left as it was
    assert not same(run("shuffle", seed=6), want)


def test_lineart_standard_is_controlnet_aux_with_its_options() -> None:
    detector = controlnet_aux().LineartStandardDetector()
    want = detector(IMAGE, guassian_sigma=2.0, intensity_threshold=4, detect_resolution=RES)
    got = run("lineart_standard", options={"gaussian_sigma": 2.0, "intensity_threshold": 4})
    assert same(got, want) and np.asarray(got).any()


def test_scribble_xdog_is_a_binary_map_its_threshold_moves() -> None:
    low, high = (run("scribble_xdog", options={"threshold": t}) for t in (4, 64))
    assert set(np.unique(np.asarray(low))) <= {0, 255}
    assert np.asarray(low).sum() > np.asarray(high).sum() > 0


def test_mlsd_loads_from_the_annotators_folder(models_dir: Path) -> None:
    detector = controlnet_aux().MLSDdetector.from_pretrained(str(models_dir / "annotators"))
    want = detector(IMAGE, thr_v=0.05, thr_d=0.1, detect_resolution=RES, image_resolution=RES)
    options = {"value_threshold": 0.05, "distance_threshold": 0.1}
    cache = PipelineCache("cpu", torch.float32)
    got = run("mlsd", models_dir, options=options, cache=cache)
    assert same(got, want) and np.asarray(got).any()
    assert same(run("mlsd", models_dir, options=options, cache=cache), got)  # cached detector
    for changed in ({"value_threshold": 0.9}, {"distance_threshold": 1.0}):  # both reach it
        assert not same(run("mlsd", models_dir, options=changed, cache=cache), got)


def test_missing_weights_name_the_file_and_the_folder(tmp_path: Path) -> None:
    with pytest.raises(JobError) as caught:
        run("mlsd", tmp_path)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    message = caught.value.message
    assert "mlsd_large_512_fp32.pth" in message and "lllyasviel/Annotators" in message
    assert f"{tmp_path / 'annotators'}/" in message
    with pytest.raises(JobError) as no_dir:
        run("openpose_full", None)
    for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"):
        assert name in no_dir.value.message


def test_broken_weights_are_unavailable_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "annotators").mkdir()
    (tmp_path / "annotators" / "mlsd_large_512_fp32.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(JobError) as caught:
        run("mlsd", tmp_path)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "mlsd_large_512_fp32.pth" in caught.value.message


def test_unknown_codes_and_options_list_what_is_allowed(models_dir: Path) -> None:
    with pytest.raises(JobError) as code:
        run("edges_please")
    assert code.value.code is ErrorCode.INVALID_INPUT
    assert "canny" in code.value.message and "mlsd" in code.value.message
    with pytest.raises(JobError) as small:
        preprocess("canny", IMAGE, resolution=32, options={}, models_dir=None)
    assert small.value.code is ErrorCode.INVALID_INPUT and "64" in small.value.message
    with pytest.raises(JobError) as option:
        run("mlsd", models_dir, options={"thr_v": 0.2})
    assert option.value.code is ErrorCode.INVALID_INPUT
    assert "'thr_v'" in option.value.message
    assert "value_threshold, distance_threshold" in option.value.message


def test_listing_says_what_is_installed(models_dir: Path) -> None:
    infos = {info.code: info for info in list_preprocessors(models_dir)}
    assert set(infos) == {NO_PREPROCESSOR, *PREPROCESSORS}
    assert infos["mlsd"].available and infos["canny"].available and infos["none"].available
    assert infos["mlsd"].options == ("value_threshold", "distance_threshold")
    assert not infos["depth"].available
    assert "dpt_hybrid-midas-501f0c75.pt" in infos["depth"].hint
    engine = Engine(Catalogue([]), EngineConfig(devices=["cpu"], models_dir=models_dir))
    assert engine.list_preprocessors() == list(infos.values())
