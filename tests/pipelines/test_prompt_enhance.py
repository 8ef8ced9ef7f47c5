"""Prompt enhancement through a real GPT-2 folder (MagicPrompt's layout), loaded by easel's loader.

Parity: the runner's versions are what a direct transformers generate gives with the job's seed
and the module's sampling settings, after the same cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.cache import PipelineCache
from models.catalogue import Catalogue
from models.utility_models import Utility, UtilityModel, UtilityModelMissing, find
from pipelines.jobs import ErrorCode, JobError, PromptEnhanceJob
from pipelines.runners.common import Resources, RunContext
from pipelines.utilities import prompt_enhance
from tests.models.tiny_text_models import save_tiny_causal_lm

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPT = "a cat sitting on a roof"


@dataclass
class Steps:
    """A report_step that records its calls."""

    calls: list[tuple[int, int]] = field(default_factory=list)

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_causal_lm(root / "prompt-enhance" / "MagicPrompt-Stable-Diffusion")
    return root


@pytest.fixture(scope="module")
def model(models_dir: Path) -> UtilityModel:
    return find(models_dir, Utility.PROMPT_ENHANCE)


@pytest.fixture(scope="module")
def resources(models_dir: Path) -> Resources:
    return Resources(Catalogue([]), PipelineCache("cpu", torch.float32), models_dir)


def enhanced(
    job: PromptEnhanceJob, model: UtilityModel, resources: Resources, steps: Steps | None = None
) -> tuple[str, ...]:
    context = RunContext(report_step=steps or Steps(), resources=resources)
    (result,) = prompt_enhance.run([job], model, context)
    assert result.images == () and result.seeds == (job.seed,)
    return result.texts


def direct_versions(folder: Path, prompt: str, seed: int, versions: int, max_length: int) -> list:
    """One generate call as a user of transformers would write it, seeded like the job."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        output = lm.generate(
            **inputs,
            do_sample=True,
            top_k=prompt_enhance.TOP_K,
            top_p=prompt_enhance.TOP_P,
            temperature=prompt_enhance.TEMPERATURE,
            repetition_penalty=prompt_enhance.REPETITION_PENALTY,
            max_new_tokens=prompt_enhance.max_new_tokens(len(prompt), max_length),
            stop_strings=["\n"],
            tokenizer=tokenizer,
            pad_token_id=tokenizer.eos_token_id,
            num_return_sequences=versions,
        )
    return [
        prompt_enhance.cut(
            prompt + tokenizer.decode(row[length:], skip_special_tokens=True),
            len(prompt),
            max_length,
        )
        for row in output
    ]


def test_versions_match_a_direct_generate(model: UtilityModel, resources: Resources) -> None:
    job = PromptEnhanceJob(prompt=PROMPT, versions=3, max_length=80, seed=7)
    expected = direct_versions(model.path, PROMPT, seed=7, versions=3, max_length=80)
    # the first round already gives three distinct versions: the runner returns exactly them
    assert len(set(expected)) == 3 and all(len(text) > len(PROMPT) for text in expected)
    with torch.inference_mode():
        assert list(enhanced(job, model, resources)) == expected


def test_seed_decides_the_versions(model: UtilityModel, resources: Resources) -> None:
    def versions(seed: int) -> tuple[str, ...]:
        job = PromptEnhanceJob(prompt=PROMPT, versions=4, max_length=120, seed=seed)
        return enhanced(job, model, resources)

    first = versions(1)
    assert versions(1) == first
    assert versions(2) != first
    assert len(set(first)) == 4


@pytest.mark.parametrize("max_length", [32, 60, 200])
def test_versions_fit_max_length(
    model: UtilityModel, resources: Resources, max_length: int
) -> None:
    job = PromptEnhanceJob(prompt=PROMPT, versions=2, max_length=max_length, seed=3)
    steps = Steps()
    texts = enhanced(job, model, resources, steps)
    assert len(texts) == 2 and len(set(texts)) == 2
    for text in texts:
        assert text.startswith(PROMPT) and len(PROMPT) < len(text) <= max_length
        assert text == text.strip() and not text.endswith((",", ";", ":", "."))
        assert "\n" not in text and "  " not in text
    assert steps.calls[0] == (0, 2) and steps.calls[-1] == (2, 2)


def test_global_random_state_is_left_alone(model: UtilityModel, resources: Resources) -> None:
    before = torch.random.get_rng_state()
    enhanced(PromptEnhanceJob(prompt=PROMPT, versions=2, max_length=60), model, resources)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_cancel_stops_the_job(model: UtilityModel, resources: Resources) -> None:
    def cancel(done: int, total: int) -> None:
        if done:
            raise JobError(ErrorCode.CANCELLED, "cancelled")

    before = torch.random.get_rng_state()
    context = RunContext(report_step=cancel, resources=resources)
    job = PromptEnhanceJob(prompt=PROMPT, versions=2, max_length=60)
    with pytest.raises(JobError) as caught:
        prompt_enhance.run([job], model, context)
    assert caught.value.code is ErrorCode.CANCELLED
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize(
    ("text", "prompt_length", "max_length", "expected"),
    [
        ("a cat, masterpiece, best quality", 5, 100, "a cat, masterpiece, best quality"),
        ("a cat, masterpiece, best quality", 5, 24, "a cat, masterpiece, best"),
        ("a cat, masterpiece, best quality", 5, 23, "a cat, masterpiece"),  # inside "best"
        ("a cat, masterpiece, best quality", 5, 20, "a cat, masterpiece"),
        ("a cat, masterpiece,\nanother prompt", 5, 100, "a cat, masterpiece"),
        ("a cat,   soft\tlight ,", 5, 100, "a cat, soft light"),
        ("a cat\x1b, 8k\ufffd", 5, 100, "a cat, 8k"),
        ("a cat, masterpiece", 5, 9, "a cat"),  # the first word does not fit
        ("a catastrophe", 5, 9, "a cat"),  # nor does a word that extends the prompt's
        ("a cats on a roof", 5, 11, "a cats on a"),
        ("a cat,,, ", 5, 100, "a cat"),
    ],
)
def test_cut(text: str, prompt_length: int, max_length: int, expected: str) -> None:
    assert prompt_enhance.cut(text, prompt_length, max_length) == expected


@pytest.mark.parametrize(
    "job",
    [
        PromptEnhanceJob(prompt=""),
        PromptEnhanceJob(prompt="   "),
        PromptEnhanceJob(prompt=PROMPT, versions=0),
        PromptEnhanceJob(prompt=PROMPT, versions=6),
        PromptEnhanceJob(prompt="cat", max_length=3),
        PromptEnhanceJob(prompt=PROMPT, max_length=401),
        PromptEnhanceJob(prompt=PROMPT, max_length=len(PROMPT)),
    ],
)
def test_check_refuses_bad_jobs(
    job: PromptEnhanceJob, model: UtilityModel, resources: Resources
) -> None:
    with pytest.raises(JobError) as caught:
        prompt_enhance.check(job)
    assert caught.value.code is ErrorCode.INVALID_INPUT
    with pytest.raises(JobError) as caught:
        enhanced(job, model, resources)
    assert caught.value.code is ErrorCode.INVALID_INPUT


def test_check_accepts_the_bounds() -> None:
    prompt_enhance.check(PromptEnhanceJob(prompt="cat", versions=1, max_length=4))
    prompt_enhance.check(PromptEnhanceJob(prompt=PROMPT, versions=5, max_length=400))


class RepeatingModel:
    """A causal LM stand-in that always writes the same continuation."""

    def __init__(self, real: Any, continuation: torch.Tensor) -> None:
        self.config = real.config
        self.continuation = continuation
        self.calls = 0

    def generate(self, input_ids: torch.Tensor, num_return_sequences: int, **_: Any) -> Any:
        self.calls += 1
        row = torch.cat([input_ids[0], self.continuation])
        return row.repeat(num_return_sequences, 1)


def test_too_few_distinct_versions_fail_after_bounded_tries(model: UtilityModel) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    real = AutoModelForCausalLM.from_pretrained(model.path)
    stub = RepeatingModel(real, tokenizer(", masterpiece", return_tensors="pt")["input_ids"][0])
    loaded = prompt_enhance.LoadedModel(stub, tokenizer)
    job = PromptEnhanceJob(prompt=PROMPT, versions=3, max_length=100)
    steps = Steps()
    with pytest.raises(JobError) as caught:
        prompt_enhance.enhance(job, loaded, "cpu", steps)
    assert caught.value.code is ErrorCode.INVALID_INPUT
    assert "only 1 distinct" in caught.value.message
    assert stub.calls == prompt_enhance.MAX_ROUNDS
    assert steps.calls[-1] == (1, 3)
    # one version is all this model can write: asked for one, it is the answer
    one = PromptEnhanceJob(prompt=PROMPT, versions=1, max_length=100)
    assert prompt_enhance.enhance(one, loaded, "cpu", Steps()) == [f"{PROMPT}, masterpiece"]


def test_missing_model_names_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(UtilityModelMissing) as caught:
        find(tmp_path, Utility.PROMPT_ENHANCE)
    message = str(caught.value)
    assert "MagicPrompt-Stable-Diffusion" in message
    assert str(tmp_path / "prompt-enhance") in message


def test_broken_model_is_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "prompt-enhance" / "broken"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    broken = find(tmp_path, Utility.PROMPT_ENHANCE)
    context = RunContext(
        report_step=Steps(),
        resources=Resources(Catalogue([]), PipelineCache("cpu", torch.float32), tmp_path),
    )
    with pytest.raises(JobError) as caught:
        prompt_enhance.run([PromptEnhanceJob(prompt=PROMPT)], broken, context)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert str(folder) in caught.value.message
