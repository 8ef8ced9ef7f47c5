"""The NSFW check: a tiny safety checker (concept 0 = one image's embedding) loaded through
easel's loader flags that image and no other, exactly as diffusers' StableDiffusionSafetyChecker
called the way its pipelines call it, in one batched pass, without touching the images."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPImageProcessor

from models.cache import PipelineCache
from models.catalogue import Catalogue
from pipelines.jobs import ErrorCode, JobError
from pipelines.runners.common import Resources
from pipelines.utilities import safety
from tests.models.tiny_safety_checker import save_tiny_safety_checker

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _flagged() -> Image.Image:
    """A picture with structure: diagonal stripes."""
    y, x = np.mgrid[0:48, 0:48]
    stripes = ((x + y) // 6 % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([stripes, stripes // 2, 255 - stripes], axis=-1))


def _others() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [
        Image.new("RGB", (40, 30), "red"),
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)),
        Image.new("RGB", (32, 50), "blue"),
        Image.new("RGBA", (32, 32), (255, 255, 255, 255)),
    ]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("safety-models")
    save_tiny_safety_checker(root / "safety-checker" / "sd-safety-checker", _flagged())
    return root


@pytest.fixture()
def resources(models_dir: Path) -> Resources:
    """A fresh cache per test: loading is part of what is tested."""
    return Resources(Catalogue([]), PipelineCache("cpu", torch.float32), models_dir)


def _direct(folder: Path, images: list[Image.Image]) -> list[bool]:
    """What diffusers' Stable Diffusion pipelines do with the checker (run_safety_checker)."""
    checker = StableDiffusionSafetyChecker.from_pretrained(folder, local_files_only=True).eval()
    extractor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    rgb = [image.convert("RGB") for image in images]
    clip_input = extractor(rgb, return_tensors="pt").pixel_values
    arrays = [np.asarray(image, dtype=np.float32) / 255 for image in rgb]
    _images, has_nsfw_concept = checker(images=arrays, clip_input=clip_input)
    return [bool(flag) for flag in has_nsfw_concept]


def _count_forward(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original: Callable[..., Any] = StableDiffusionSafetyChecker.forward

    def counting(self: StableDiffusionSafetyChecker, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["clip_input"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionSafetyChecker, "forward", counting)
    return calls


def test_flags_the_flagged_image_only_like_diffusers(
    models_dir: Path, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    others = _others()
    images = [others[0], _flagged(), others[1], others[2], others[3]]
    before = [image.tobytes() for image in images]
    expected = _direct(models_dir / "safety-checker" / "sd-safety-checker", images)
    calls = _count_forward(monkeypatch)
    with torch.inference_mode():
        flags = safety.check_nsfw(images, resources)
    assert flags == expected == [False, True, False, False, False]
    assert calls == [5]  # one batched pass
    assert [image.tobytes() for image in images] == before  # easel reports, never blacks out


def test_checker_is_loaded_once(resources: Resources, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Path] = []
    original = StableDiffusionSafetyChecker.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: type, path: Path, *args: Any, **kwargs: Any) -> Any:
        loads.append(path)
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionSafetyChecker, "from_pretrained", classmethod(counting))
    with torch.inference_mode():
        assert safety.check_nsfw([_flagged()], resources) == [True]
        assert safety.check_nsfw(_others()[:2], resources) == [False, False]
    assert len(loads) == 1
    assert safety.check_nsfw([], resources) == []


def test_nothing_is_flagged_without_a_flagged_concept(tmp_path: Path) -> None:
    save_tiny_safety_checker(tmp_path / "safety_checker" / "default")
    resources = Resources(Catalogue([]), PipelineCache("cpu", torch.float32), tmp_path)
    with torch.inference_mode():
        assert safety.check_nsfw([_flagged(), *_others()], resources) == [False] * 5


def test_missing_checker_names_what_to_install(models_dir: Path, tmp_path: Path) -> None:
    safety.check_installed(models_dir)
    resources = Resources(Catalogue([]), PipelineCache("cpu", torch.float32), tmp_path)
    for call in (
        lambda: safety.check_installed(tmp_path),
        lambda: safety.check_installed(None),
        lambda: safety.check_nsfw([_flagged()], resources),
    ):
        with pytest.raises(JobError) as error:
            call()
        assert error.value.code is ErrorCode.MODEL_UNAVAILABLE
        assert "CompVis/stable-diffusion-safety-checker" in error.value.message
        assert "safety-checker/" in error.value.message


def test_broken_checker_is_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "safety-checker" / "broken"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    resources = Resources(Catalogue([]), PipelineCache("cpu", torch.float32), tmp_path)
    with pytest.raises(JobError) as error, torch.inference_mode():
        safety.check_nsfw([_flagged()], resources)
    assert error.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert str(folder) in error.value.message
