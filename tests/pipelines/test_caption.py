"""Captions: a tiny BLIP folder loaded through easel's loader must caption exactly like
transformers' own BlipForConditionalGeneration.generate on the same folder (greedy), one generate
call per batch, with the prompt as the caption's start and translation for other languages."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from models.cache import PipelineCache
from models.catalogue import Catalogue
from models.utility_models import Utility, UtilityModel, UtilityModelMissing, find
from pipelines.jobs import CaptionJob, ErrorCode, JobError, JobResult
from pipelines.runners.common import Resources, RunContext
from pipelines.utilities import UTILITIES, caption, translation
from tests.engine_harness import run_jobs
from tests.models.tiny_blip import save_tiny_blip

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MAX_TOKENS = 8


def _images() -> list[Image.Image]:
    """Clearly different pictures (the tiny model captions them differently)."""
    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 48, dtype=np.uint8)
    gradient = Image.fromarray(np.stack([np.tile(ramp, (36, 1))] * 3, axis=-1))
    return [
        Image.new("RGB", (40, 30), "red"),
        noise,
        Image.new("RGB", (33, 47), "blue"),
        gradient,
        Image.new("RGBA", (32, 32), (0, 200, 0, 128)),
    ]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("caption-models")
    save_tiny_blip(root / "caption" / "blip-tiny")
    return root


@pytest.fixture(scope="module")
def model(models_dir: Path) -> UtilityModel:
    return find(models_dir, Utility.CAPTION)


@pytest.fixture(scope="module")
def resources(models_dir: Path) -> Resources:
    return Resources(Catalogue([]), PipelineCache("cpu", torch.float32), models_dir)


@pytest.fixture(scope="module")
def direct(model: UtilityModel) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """The reference: transformers' own classes on the same folder."""
    blip = BlipForConditionalGeneration.from_pretrained(model.path, local_files_only=True)
    return blip.eval(), BlipProcessor.from_pretrained(model.path, local_files_only=True)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return _images()


def _context(resources: Resources, reports: list[tuple[int, int]] | None = None) -> RunContext:
    sink = reports if reports is not None else []
    return RunContext(lambda done, total: sink.append((done, total)), resources=resources)


def _reference(
    direct: tuple[BlipForConditionalGeneration, BlipProcessor],
    image: Image.Image,
    prompt: str = "",
    max_tokens: int = MAX_TOKENS,
) -> str:
    """transformers' documented captioning recipe, one image alone, greedy."""
    blip, processor = direct
    inputs = processor(images=image.convert("RGB"), text=prompt or None, return_tensors="pt")
    with torch.inference_mode():
        output = blip.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    return processor.decode(output[0], skip_special_tokens=True).strip()


def _run(
    jobs: Sequence[CaptionJob], model: UtilityModel, resources: Resources
) -> list[tuple[str, ...]]:
    with torch.inference_mode():
        return [result.texts for result in caption.run(jobs, model, _context(resources))]


def _count_generate(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts generate calls (and their batch sizes) of every BLIP model."""
    calls: list[int] = []
    original: Callable[..., Any] = BlipForConditionalGeneration.generate

    def counting(self: BlipForConditionalGeneration, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["pixel_values"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BlipForConditionalGeneration, "generate", counting)
    return calls


def test_captions_match_direct_generate(
    model: UtilityModel, resources: Resources, direct: Any, images: list[Image.Image]
) -> None:
    job = CaptionJob(images=tuple(images), max_tokens=MAX_TOKENS)
    reports: list[tuple[int, int]] = []
    with torch.inference_mode():
        (result,) = caption.run([job], model, _context(resources, reports))
    expected = tuple(_reference(direct, image) for image in images)
    assert result.texts == expected
    assert result.images == () and result.seeds == () and result.nsfw == ()
    assert all(result.texts) and len(set(result.texts)) >= 3  # the fixture tells images apart
    assert reports == [(1, 1)]


def test_batch_of_jobs_is_one_call_and_equals_each_alone(
    model: UtilityModel,
    resources: Resources,
    images: list[Image.Image],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = [
        CaptionJob(images=(images[3], images[0]), max_tokens=MAX_TOKENS),
        CaptionJob(images=(images[1],), max_tokens=MAX_TOKENS),
        CaptionJob(images=(images[4], images[2], images[1]), max_tokens=MAX_TOKENS),
    ]
    alone = [_run([job], model, resources)[0] for job in jobs]
    calls = _count_generate(monkeypatch)
    batched = _run(jobs, model, resources)
    assert batched == alone
    assert [len(texts) for texts in batched] == [2, 1, 3]
    assert calls == [6]  # every image of every job in one generate call


def test_prompt_starts_the_caption(
    model: UtilityModel, resources: Resources, direct: Any, images: list[Image.Image]
) -> None:
    prompt = "A photo of"
    (texts,) = _run([CaptionJob(images=tuple(images[:3]), prompt=prompt)], model, resources)
    (plain,) = _run([CaptionJob(images=tuple(images[:3]))], model, resources)
    assert texts == tuple(_reference(direct, image, prompt, 60) for image in images[:3])
    assert all(text.startswith("a photo of") for text in texts)  # BLIP's tokenizer lower-cases
    assert texts != plain


def test_max_tokens_bounds_the_caption(
    model: UtilityModel, resources: Resources, direct: Any, images: list[Image.Image]
) -> None:
    (texts,) = _run([CaptionJob(images=tuple(images), max_tokens=2)], model, resources)
    assert texts == tuple(_reference(direct, image, max_tokens=2) for image in images)
    assert all(len(text.split()) <= 2 for text in texts)  # the tiny vocabulary is whole words


def test_other_language_translates_all_captions_in_one_call(
    model: UtilityModel,
    resources: Resources,
    images: list[Image.Image],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[list[str], str, str, Resources]] = []

    def fake_translate(
        texts: Sequence[str], source: str, target: str, given: Resources
    ) -> list[str]:
        calls.append((list(texts), source, target, given))
        return [f"[{target}] {text}" for text in texts]

    monkeypatch.setattr(translation, "translate", fake_translate)
    jobs = [
        CaptionJob(images=(images[0], images[1]), language="fr", max_tokens=MAX_TOKENS),
        CaptionJob(images=(images[2],), language="fr", max_tokens=MAX_TOKENS),
    ]
    english = _run([CaptionJob(images=tuple(images[:3]), max_tokens=MAX_TOKENS)], model, resources)
    reports: list[tuple[int, int]] = []
    with torch.inference_mode():
        results = caption.run(jobs, model, _context(resources, reports))
    assert [r.texts for r in results] == [
        tuple(f"[fr] {text}" for text in english[0][:2]),
        (f"[fr] {english[0][2]}",),
    ]
    assert calls == [(list(english[0]), "en", "fr", resources)]
    assert reports == [(1, 2), (2, 2)]
    # English asks for no translation.
    _run([CaptionJob(images=(images[0],), language="en")], model, resources)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"images": ()}, "at least one image"),
        ({"max_tokens": 0}, "max tokens 0"),
        ({"max_tokens": 513}, "max tokens 513"),
        ({"language": "fra"}, "'fra'"),
        ({"language": "f1"}, "'f1'"),
    ],
)
def test_check_refuses_bad_input(changes: dict[str, Any], fragment: str) -> None:
    job = CaptionJob(**{"images": (Image.new("RGB", (8, 8)),), **changes})
    with pytest.raises(JobError) as error:
        caption.check(job)
    assert error.value.code is ErrorCode.INVALID_INPUT
    assert fragment in error.value.message


def test_utilities_table_serves_caption_jobs() -> None:
    runner = UTILITIES[CaptionJob]
    assert runner.utility is Utility.CAPTION
    assert runner.run is caption.run and runner.check is caption.check
    caption.check(CaptionJob(images=(Image.new("RGB", (8, 8)),), language="de", max_tokens=512))


def test_cancellation_propagates(
    model: UtilityModel, resources: Resources, images: list[Image.Image]
) -> None:
    def cancelled(_done: int, _total: int) -> None:
        raise JobError(ErrorCode.CANCELLED, "cancelled")

    with pytest.raises(JobError) as error, torch.inference_mode():
        caption.run(
            [CaptionJob(images=(images[0],))], model, RunContext(cancelled, resources=resources)
        )
    assert error.value.code is ErrorCode.CANCELLED


def test_missing_and_unsupported_models_are_unavailable(
    model: UtilityModel, tmp_path: Path
) -> None:
    with pytest.raises(UtilityModelMissing) as missing:
        find(tmp_path, Utility.CAPTION)
    assert "caption" in str(missing.value) and "blip-image-captioning-base" in str(missing.value)

    other = tmp_path / "caption" / "git-base"
    shutil.copytree(model.path, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["GitForCausalLM"]}))
    broken = tmp_path / "caption" / "blip-broken"
    shutil.copytree(model.path, broken)
    (broken / "model.safetensors").unlink()
    untokenized = tmp_path / "caption" / "blip-no-tokenizer"
    shutil.copytree(model.path, untokenized)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (untokenized / name).unlink()
    resources = Resources(Catalogue([]), PipelineCache("cpu", torch.float32), tmp_path)
    job = CaptionJob(images=(Image.new("RGB", (8, 8)),))
    for name, fragments in (
        ("git-base", ("GitForCausalLM", "BlipForConditionalGeneration")),
        ("blip-broken", ("blip-broken", "could not be loaded")),
        ("blip-no-tokenizer", ("blip-no-tokenizer", "no tokenizer")),
    ):
        with pytest.raises(JobError) as error:
            _run([job], find(tmp_path, Utility.CAPTION, name), resources)
        assert error.value.code is ErrorCode.MODEL_UNAVAILABLE
        assert all(fragment in error.value.message for fragment in fragments)


def test_engine_runs_caption_jobs(
    models_dir: Path, direct: Any, images: list[Image.Image], tmp_path: Path
) -> None:
    """Through a real engine (queue, worker thread, component cache): the same captions, and a
    model name that is not installed refused with what is."""
    jobs = [
        CaptionJob(images=(images[0], images[3]), max_tokens=MAX_TOKENS),
        CaptionJob(images=(images[1],), prompt="a photo of", model="blip-tiny"),
        CaptionJob(images=(images[2],), model="blip-large"),
    ]
    first, second, missing = run_jobs(models_dir, tmp_path, jobs)
    assert isinstance(first, JobResult) and isinstance(second, JobResult)
    assert first.texts == (_reference(direct, images[0]), _reference(direct, images[3]))
    assert second.texts == (_reference(direct, images[1], "a photo of", 60),)
    assert isinstance(missing, JobError) and missing.code is ErrorCode.MODEL_UNAVAILABLE
    assert "blip-large" in missing.message and "blip-tiny" in missing.message
