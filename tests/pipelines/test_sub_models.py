"""LoRAs, textual-inversion embeddings and A1111 hypernetworks applied to one job only.

A models directory laid out like a user's (tiny single-file SD 1.x and SDXL checkpoints, LoRAs in
kohya and diffusers/peft layouts, embeddings in every common layout, A1111 hypernetworks) runs
jobs through the real engine. Each image must equal what diffusers draws on a pipeline loaded
from the same checkpoint file with the sub-models loaded by diffusers itself (load_lora_weights +
set_adapters, load_textual_inversion) from the same files; hypernetworks, which diffusers lacks,
are checked against attention written out by hand. Jobs without sub-models run before and after:
nothing may leak into the next job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from models import submodels
from models.cache import PipelineCache
from models.catalogue import Architecture, Catalogue, ModelKind, ModelSpec, WeightFormat
from models.loader import ModelLoadError, load_pipeline
from models.registry import build_catalogue
from models.scan import scan_models_dir
from models.submodels import read_embedding, read_hypernetwork
from pipelines.adapters import hypernetwork, sub_models
from pipelines.jobs import (
    ErrorCode,
    GenerationJob,
    JobError,
    JobKind,
    JobResult,
    SubModel,
    SubModelKind,
)
from pipelines.runners.common import Resources, RunContext
from tests.engine_harness import run_jobs
from tests.models import tiny
from tests.models import tiny_submodels as sub
from tests.parity import assert_same_up_to_rounding

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPT, NEGATIVE = "a house by a lake", "blurry"
TAGS = {"10_mystyle": {"mystyle": 10, "cat": 3, "house": 3}, "5_more": {"cat": 4}}
# hypernetworks/<code>.pt -> how it is written (tiny SD 1.x: attention widths 32 and 64)
HYPERNETWORKS: dict[str, dict[str, Any]] = {
    "hyper-relu": {"widths": (32, 64), "activation": "relu", "seed": 5},
    "hyper-deep": {
        "widths": (32,),
        "layer_structure": (1, 2, 2, 1),
        "activation": "tanh",
        "layer_norm": True,
        "activate_output": True,
        "use_dropout": True,
        "seed": 6,
    },
}
HYPER_SETTINGS = {"activation", "layer_norm", "activate_output"}


def lora(code: str, weight: float = 1.0) -> SubModel:
    return SubModel(kind=SubModelKind.LORA, model=code, weight=weight)


def embedding(code: str) -> SubModel:
    return SubModel(kind=SubModelKind.EMBEDDING, model=code)


def hyper(code: str, weight: float = 1.0) -> SubModel:
    return SubModel(kind=SubModelKind.HYPERNETWORK, model=code, weight=weight)


def job(model: str, *subs: SubModel, **changes: Any) -> GenerationJob:
    base = GenerationJob(
        kind=JobKind.TXT2IMG,
        model=model,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=64,
        height=64,
        steps=3,
        guidance_scale=5.0,
        seeds=(7,),
        sub_models=subs,
    )
    return dataclasses.replace(base, **changes)


def pixels(result: JobResult | JobError) -> np.ndarray:
    assert isinstance(result, JobResult), result
    (image,) = result.images
    return np.asarray(image)


def draw(pipe: DiffusionPipeline, prompt: str = PROMPT, negative: str = NEGATIVE) -> np.ndarray:
    out = pipe(
        prompt=prompt,
        negative_prompt=negative,
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=[torch.Generator("cpu").manual_seed(7)],
        output_type="pil",
    )
    return np.asarray(out.images[0])


# --- the models directory ------------------------------------------------------------------------


def write_models(root: Path, cache: Path) -> None:
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
    sd1, sdxl = pipes["sd1"], pipes["sdxl"]
    loras = root / "loras"
    sub.save_lora(sub.kohya_lora(sd1, seed=1), loras / "kohya-sd1.safetensors", tag_frequency=TAGS)
    sub.save_lora(sub.peft_lora(sd1, seed=2), loras / "peft-sd1.safetensors")
    sub.save_lora(sub.kohya_lora(sdxl, seed=3), loras / "xl/kohya-sdxl.safetensors")
    sub.save_lora(sub.peft_lora(sdxl, seed=4), loras / "xl/peft-sdxl.safetensors")
    misfit = sub.kohya_lora(tiny.tiny_sd1_pipeline(cache / "tokenizers"), seed=5)
    misfit = {k: v[:, :-8] if k.endswith("lora_down.weight") else v for k, v in misfit.items()}
    sub.save_lora(misfit, loras / "misfit.safetensors")  # its input widths fit nothing
    emb = root / "embeddings"
    sub.save_a1111_pt_embedding(emb / "style-pt.pt", sub.embedding_vectors(32, 3, seed=1))
    sub.save_a1111_safetensors_embedding(
        emb / "style-st.safetensors", sub.embedding_vectors(32, 2, seed=2)
    )
    sub.save_diffusers_embedding(
        emb / "cat-toy.safetensors", "<cat-toy>", sub.embedding_vectors(32, 1, seed=3)
    )
    sub.save_diffusers_embedding(
        emb / "old/cat-bin.bin", "<cat-bin>", sub.embedding_vectors(32, 2, seed=4)
    )
    sub.save_a1111_safetensors_embedding(
        emb / "MixedCase.safetensors", sub.embedding_vectors(32, 3, seed=5)
    )
    sub.save_a1111_safetensors_embedding(
        emb / "too-wide.safetensors", sub.embedding_vectors(48, 1, seed=6)
    )
    sub.save_sdxl_embedding(
        emb / "style-xl.safetensors",
        sub.embedding_vectors(32, 2, seed=7),
        sub.embedding_vectors(64, 2, seed=8),
    )
    for code, settings in HYPERNETWORKS.items():
        path = root / f"hypernetworks/{code}.pt"
        sub.save_hypernetwork(path, sub.hypernetwork_state(**settings))
    sub.save_hypernetwork(root / "hypernetworks/hyper-48.pt", sub.hypernetwork_state([48]))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_models(root, tmp_path_factory.mktemp("cache"))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def catalogue(models_dir: Path) -> Catalogue:
    return build_catalogue(models_dir, demo_root=None).catalogue


def plain_diffusers(catalogue: Catalogue, family: str) -> DiffusionPipeline:
    """The checkpoint as easel loads it, minus models.compat's `text_model` alias (an
    attribute for diffusers' clip-skip code that its LoRA loader misreads; clip skip is off
    here), so diffusers' own LoRA loading runs exactly as it does on a diffusers pipeline."""
    pipe = load_pipeline(catalogue.resolve(family), device="cpu", dtype=torch.float32)
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is not None and vars(encoder).get("text_model") is encoder:
            del vars(encoder)["text_model"]
    return pipe


@contextmanager
def diffusers_loras(pipe: DiffusionPipeline, files: dict[Path, float]) -> Iterator[None]:
    names = [f"ref-{i}" for i in range(len(files))]
    for name, path in zip(names, files, strict=True):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, list(files.values()))
    try:
        yield
    finally:
        pipe.unload_lora_weights()


@contextmanager
def diffusers_embedding(pipe: DiffusionPipeline, path: Path, token: str) -> Iterator[None]:
    pipe.load_textual_inversion(str(path), token=token)
    try:
        yield
    finally:
        pipe.unload_textual_inversion()


# --- hypernetworks by hand -----------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
}


def hand_mlp(x: torch.Tensor, state: dict[str, torch.Tensor], settings: dict) -> torch.Tensor:
    """A1111's HypernetworkModule.linear from its saved state dict: Linear, activation (not
    after the last Linear unless activate_output), LayerNorm; dropout does nothing here."""
    indices = sorted({int(key.split(".")[1]) for key in state})
    linears = [i for i in indices if state[f"linear.{i}.weight"].dim() == 2]
    for i in indices:
        weight, bias = state[f"linear.{i}.weight"], state[f"linear.{i}.bias"]
        if weight.dim() == 2:
            x = F.linear(x, weight, bias)
            if i != linears[-1] or settings.get("activate_output"):
                x = ACTIVATIONS[settings["activation"]](x)
        else:
            x = F.layer_norm(x, weight.shape, weight, bias)
    return x


class HandHypernetworkProcessor:
    """diffusers' AttnProcessor2_0 for the SD attention layout, with A1111's hypernetwork:
    context_k = context + mlp_k(context) * multiplier (and v likewise)."""

    def __init__(self, file: dict, settings: dict, multiplier: float) -> None:
        self.file, self.settings, self.multiplier = file, settings, multiplier

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states=None, **_):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        context_k = context_v = context
        if context.shape[-1] in self.file:
            state_k, state_v = self.file[context.shape[-1]]
            context_k = context + hand_mlp(context, state_k, self.settings) * self.multiplier
            context_v = context + hand_mlp(context, state_v, self.settings) * self.multiplier
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(context_k), attn.to_v(context_v)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (
            t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value)
        )
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


@contextmanager
def hand_hypernetwork(pipe: DiffusionPipeline, code: str, multiplier: float, models_dir: Path):
    file = torch.load(models_dir / f"hypernetworks/{code}.pt", weights_only=True)
    settings = {k: v for k, v in HYPERNETWORKS[code].items() if k in HYPER_SETTINGS}
    before = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(HandHypernetworkProcessor(file, settings, multiplier))
    try:
        yield
    finally:
        pipe.unet.set_attn_processor(before)


# --- SD 1.x through the engine -------------------------------------------------------------------

SD1_JOBS: dict[str, GenerationJob] = {
    "plain": job("sd1"),
    "kohya": job("sd1", lora("kohya-sd1", 0.8)),
    "plain after a LoRA": job("sd1"),
    "peft": job("sd1", lora("peft-sd1")),
    "two LoRAs": job("sd1", lora("kohya-sd1", 0.7), lora("peft-sd1", -0.5)),
    "a1111 pt": job("sd1", embedding("style-pt"), prompt="a style-pt house by a lake"),
    "a1111 safetensors": job("sd1", embedding("style-st"), prompt="a house, style-st"),
    "diffusers": job("sd1", embedding("cat-toy"), prompt="a cat-toy by a lake"),
    "diffusers bin": job("sd1", embedding("cat-bin"), negative_prompt="cat-bin, blurry"),
    "mixed case": job("sd1", embedding("MixedCase"), prompt="a MixedCase house by a lake"),
    "hypernetwork": job("sd1", hyper("hyper-relu", 0.8)),
    "hypernetwork 0": job("sd1", hyper("hyper-relu", 0.0)),
    "deep hypernetwork": job("sd1", hyper("hyper-deep", 1.2)),
    "everything": job(
        "sd1",
        lora("peft-sd1", 0.6),
        embedding("style-st"),
        hyper("hyper-relu", 0.5),
        prompt="a house, style-st",
    ),
    "SDXL LoRA": job("sd1", lora("kohya-sdxl")),
    "unknown LoRA": job("sd1", lora("no-such-lora")),
    "misfit LoRA": job("sd1", lora("kohya-sd1"), lora("misfit")),
    "too wide embedding": job("sd1", embedding("too-wide")),
    "hypernetwork of no width": job("sd1", hyper("hyper-48")),
    "plain again": job("sd1"),
}


@pytest.fixture(scope="module")
def sd1(models_dir: Path, data_dir: Path) -> dict[str, JobResult | JobError]:
    return dict(zip(SD1_JOBS, run_jobs(models_dir, data_dir, list(SD1_JOBS.values())), strict=True))


@pytest.fixture(scope="module")
def sd1_reference(catalogue: Catalogue) -> DiffusionPipeline:
    return plain_diffusers(catalogue, "sd1")


def test_kohya_and_peft_loras_equal_diffusers(
    sd1: dict, sd1_reference: DiffusionPipeline, models_dir: Path
) -> None:
    kohya, peft = (
        models_dir / "loras/kohya-sd1.safetensors",
        models_dir / "loras/peft-sd1.safetensors",
    )
    with diffusers_loras(sd1_reference, {kohya: 0.8}):
        assert np.array_equal(pixels(sd1["kohya"]), draw(sd1_reference))
    with diffusers_loras(sd1_reference, {peft: 1.0}):
        assert np.array_equal(pixels(sd1["peft"]), draw(sd1_reference))
    with diffusers_loras(sd1_reference, {kohya: 0.7, peft: -0.5}):
        assert np.array_equal(pixels(sd1["two LoRAs"]), draw(sd1_reference))
    images = [pixels(sd1[k]) for k in ("plain", "kohya", "peft", "two LoRAs")]
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1 :])


def test_embeddings_in_every_layout_equal_diffusers(
    sd1: dict, sd1_reference: DiffusionPipeline, models_dir: Path
) -> None:
    cases = {
        "a1111 pt": ("style-pt.pt", "a style-pt house by a lake", NEGATIVE),
        "a1111 safetensors": ("style-st.safetensors", "a house, style-st", NEGATIVE),
        "diffusers": ("cat-toy.safetensors", "a cat-toy by a lake", NEGATIVE),
        "diffusers bin": ("old/cat-bin.bin", PROMPT, "cat-bin, blurry"),
    }
    for name, (file, prompt, negative) in cases.items():
        token = Path(file).stem
        with diffusers_embedding(sd1_reference, models_dir / "embeddings" / file, token):
            assert np.array_equal(pixels(sd1[name]), draw(sd1_reference, prompt, negative)), name
        without = draw(sd1_reference, prompt, negative)  # the token as plain words
        assert not np.array_equal(pixels(sd1[name]), without), name


def test_a_mixed_case_code_uses_all_its_vectors(
    sd1: dict, sd1_reference: DiffusionPipeline, models_dir: Path
) -> None:
    """A1111 matches embedding names case-insensitively; as written in the file name, the code
    must bring all three vectors. The reference registers it lower-cased and writes it so."""
    path = models_dir / "embeddings/MixedCase.safetensors"
    with diffusers_embedding(sd1_reference, path, "mixedcase"):
        expected = draw(sd1_reference, "a mixedcase house by a lake")
    assert np.array_equal(pixels(sd1["mixed case"]), expected)


def test_hypernetworks_equal_attention_written_out_by_hand(
    sd1: dict, sd1_reference: DiffusionPipeline, models_dir: Path
) -> None:
    cases = (("hypernetwork", "hyper-relu", 0.8), ("deep hypernetwork", "hyper-deep", 1.2))
    for name, code, weight in cases:
        with hand_hypernetwork(sd1_reference, code, weight, models_dir):
            expected = draw(sd1_reference)
        result = pixels(sd1[name])
        assert np.array_equal(result, expected), name
        assert not np.array_equal(result, pixels(sd1["plain"]))
    assert np.array_equal(pixels(sd1["hypernetwork 0"]), pixels(sd1["plain"]))


def test_lora_embedding_and_hypernetwork_together(
    sd1: dict, sd1_reference: DiffusionPipeline, models_dir: Path
) -> None:
    with (
        diffusers_loras(sd1_reference, {models_dir / "loras/peft-sd1.safetensors": 0.6}),
        diffusers_embedding(
            sd1_reference, models_dir / "embeddings/style-st.safetensors", "style-st"
        ),
        hand_hypernetwork(sd1_reference, "hyper-relu", 0.5, models_dir),
    ):
        expected = draw(sd1_reference, "a house, style-st")
    assert np.array_equal(pixels(sd1["everything"]), expected)


def test_sub_models_do_not_leak_into_the_next_job(sd1: dict) -> None:
    plain = pixels(sd1["plain"])
    assert np.array_equal(pixels(sd1["plain after a LoRA"]), plain)
    assert np.array_equal(pixels(sd1["plain again"]), plain)  # after every kind and the errors


def test_wrong_sub_models_fail_clearly(sd1: dict) -> None:
    expected = {
        "SDXL LoRA": (ErrorCode.INVALID_INPUT, ["kohya-sdxl", "sdxl", "'sd1' is sd1"]),
        "unknown LoRA": (ErrorCode.UNKNOWN_MODEL, ["no-such-lora", "loras/"]),
        "misfit LoRA": (ErrorCode.INVALID_INPUT, ["LoRA 'misfit' does not fit", "'sd1'"]),
        "too wide embedding": (ErrorCode.INVALID_INPUT, ["too-wide", "[48]", "[32]"]),
        "hypernetwork of no width": (ErrorCode.INVALID_INPUT, ["hyper-48", "[48]", "[32, 64]"]),
    }
    for name, (code, fragments) in expected.items():
        error = sd1[name]
        assert isinstance(error, JobError) and error.code is code, (name, error)
        for fragment in fragments:
            assert fragment in error.message, (name, error.message)


# --- SDXL ----------------------------------------------------------------------------------------

SDXL_JOBS: dict[str, GenerationJob] = {
    "plain": job("sdxl"),
    "kohya": job("sdxl", lora("kohya-sdxl", 0.9)),
    "peft": job("sdxl", lora("peft-sdxl", 0.8), lora("kohya-sdxl", -0.4)),
    "embedding": job("sdxl", embedding("style-xl"), prompt="a style-xl house"),
    "SD 1.x embedding": job("sdxl", embedding("style-st")),
    "plain again": job("sdxl"),
}


def test_sdxl_loras_and_embeddings_equal_diffusers(
    models_dir: Path, data_dir: Path, catalogue: Catalogue
) -> None:
    results = run_jobs(models_dir, data_dir, list(SDXL_JOBS.values()))
    results = dict(zip(SDXL_JOBS, results, strict=True))
    pipe = plain_diffusers(catalogue, "sdxl")
    kohya, peft = (models_dir / f"loras/xl/{n}-sdxl.safetensors" for n in ("kohya", "peft"))
    # LoRA layers round by the address of their operands (tests/parity.py): equal up to that.
    with diffusers_loras(pipe, {kohya: 0.9}):
        assert_same_up_to_rounding(pixels(results["kohya"]), draw(pipe))
    with diffusers_loras(pipe, {peft: 0.8, kohya: -0.4}):
        assert_same_up_to_rounding(pixels(results["peft"]), draw(pipe))
    state = load_file(models_dir / "embeddings/style-xl.safetensors")  # as diffusers' docs do
    for key, encoder, tokenizer in (
        ("clip_l", "text_encoder", "tokenizer"),
        ("clip_g", "text_encoder_2", "tokenizer_2"),
    ):
        pipe.load_textual_inversion(
            state[key],
            token="style-xl",
            text_encoder=getattr(pipe, encoder),
            tokenizer=getattr(pipe, tokenizer),
        )
    assert np.array_equal(pixels(results["embedding"]), draw(pipe, "a style-xl house"))
    plain = pixels(results["plain"])
    assert not any(np.array_equal(pixels(results[k]), plain) for k in ("kohya", "embedding"))
    for lora in ("kohya", "peft"):  # the rounding allowance is far below what a LoRA changes
        with pytest.raises(AssertionError):
            assert_same_up_to_rounding(pixels(results[lora]), plain)
    error = results["SD 1.x embedding"]
    assert isinstance(error, JobError) and error.code is ErrorCode.INVALID_INPUT
    assert "[32]" in error.message and "[32, 64]" in error.message
    assert np.array_equal(pixels(results["plain again"]), plain)


# --- the adapter itself --------------------------------------------------------------------------


def snapshot(pipe: DiffusionPipeline) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name in ("unet", "text_encoder"):
        model = getattr(pipe, name)
        state[f"{name} state"] = {k: v.clone() for k, v in model.state_dict().items()}
        state[f"{name} modules"] = [(n, type(m)) for n, m in model.named_modules()]
    encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
    table = encoder.get_input_embeddings()
    state["embedding objects"] = (table, table.weight, table.weight.data.data_ptr())
    state["embedding size"] = (table.num_embeddings, tuple(table.weight.shape))
    state["text encoder config"] = encoder.config.to_dict()
    state["text_model alias"] = vars(encoder).get("text_model") is encoder
    state["tokenizer"] = (
        len(tokenizer),
        tokenizer.get_vocab(),
        {i: str(t) for i, t in tokenizer.added_tokens_decoder.items()},
        tokenizer._tokenizer.to_str(),
        tokenizer(f"a {PROMPT} style-pt MixedCase").input_ids,
    )
    state["projections"] = [
        (m.to_k, m.to_v) for m in pipe.unet.modules() if hasattr(m, "to_k") and hasattr(m, "to_v")
    ]
    return state


def same_objects(a: Any, b: Any) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(same_objects(x, y) for x, y in zip(a, b, strict=True))
    return a is b or (isinstance(a, int) and a == b)


def assert_restored(pipe: DiffusionPipeline, before: dict[str, Any]) -> None:
    after = snapshot(pipe)
    for key, value in before.items():
        if key.endswith(" state"):
            assert after[key].keys() == value.keys(), key
            assert all(torch.equal(after[key][k], value[k]) for k in value), key
        elif key in ("embedding objects", "projections"):  # the very same objects
            assert same_objects(after[key], value), key
        else:
            assert after[key] == value, key


EVERYTHING = job(
    "sd1",
    lora("kohya-sd1", 0.5),
    lora("peft-sd1", -0.3),
    embedding("style-pt"),
    embedding("cat-toy"),
    embedding("MixedCase"),
    hyper("hyper-relu"),
    hyper("hyper-deep", 0.5),
)


def test_adapter_restores_the_base_model_bit_for_bit_and_reads_files_once(
    catalogue: Catalogue, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = PipelineCache("cpu", torch.float32, cache_dir=tmp_path)
    pipe = cache.get(catalogue.resolve("sd1"))
    ctx = RunContext(lambda *_: None, resources=Resources(catalogue, cache, models_dir))
    read: list[str] = []
    load = submodels._load
    monkeypatch.setattr(submodels, "_load", lambda spec: read.append(spec.code) or load(spec))
    before = snapshot(pipe)
    tokens_in = pipe.tokenizer(f"a {PROMPT} style-pt MixedCase").input_ids
    for _ in range(2):
        with torch.inference_mode(), sub_models.applied(pipe, EVERYTHING, ctx):
            assert set(pipe.get_list_adapters()["unet"]) == {"easel-lora-0", "easel-lora-1"}
            assert pipe.tokenizer(f"a {PROMPT} style-pt MixedCase").input_ids != tokens_in
            expanded = pipe.maybe_convert_prompt("a MixedCase house", pipe.tokenizer)
            assert expanded == "a MixedCase MixedCase_1 MixedCase_2 house"
            wrapped = [
                m for m in pipe.unet.modules() if isinstance(m, hypernetwork.HyperProjection)
            ]
            assert len(wrapped) == 2 * 12  # k and v of every attention: widths 32 and 64
        assert_restored(pipe, before)
        assert len(read) == 7  # 2 LoRAs, 3 embeddings, 2 hypernetworks: read by the first job
    with pytest.raises(RuntimeError, match="cancelled"):
        with torch.inference_mode(), sub_models.applied(pipe, EVERYTHING, ctx):
            raise RuntimeError("cancelled")
    assert_restored(pipe, before)
    with pytest.raises(JobError, match="misfit"):
        with (
            torch.inference_mode(),
            sub_models.applied(
                pipe, job("sd1", embedding("style-pt"), lora("kohya-sd1"), lora("misfit")), ctx
            ),
        ):
            pass
    assert_restored(pipe, before)


def test_hypernetwork_attention_equals_the_formula(catalogue: Catalogue, models_dir: Path) -> None:
    """One cross-attention and one self-attention block, computed by hand: softmax(q k^T / sqrt
    d) v with k, v from the hypernetwork-transformed context."""
    spec = catalogue.resolve("hyper-deep", ModelKind.HYPERNETWORK)
    loaded = hypernetwork.build(spec, read_hypernetwork(spec), torch.device("cpu"))
    file = torch.load(spec.path, weights_only=True)
    settings = {k: v for k, v in HYPERNETWORKS["hyper-deep"].items() if k in HYPER_SETTINGS}
    unet = plain_diffusers(catalogue, "sd1").unet
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 32, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)

    def by_hand(attn: Any, context: torch.Tensor, multiplier: float) -> torch.Tensor:
        state_k, state_v = file[context.shape[-1]]
        context_k = context + hand_mlp(context, state_k, settings) * multiplier
        context_v = context + hand_mlp(context, state_v, settings) * multiplier
        q, k, v = attn.to_q(x), attn.to_k(context_k), attn.to_v(context_v)
        heads, d = attn.heads, q.shape[-1] // attn.heads
        q, k, v = (t.reshape(2, -1, heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
        out = (weights @ v).permute(0, 2, 1, 3).reshape(2, -1, heads * d)
        return attn.to_out[0](out)

    with torch.inference_mode():
        plain = (block.attn1(x), block.attn2(x, encoder_hidden_states=text))
        with hypernetwork.applied(unet, [(loaded, 0.7)]):
            self_attention = block.attn1(x)
            cross_attention = block.attn2(x, encoder_hidden_states=text)
        with hypernetwork.applied(unet, [(loaded, 0.0)]):
            zero = (block.attn1(x), block.attn2(x, encoder_hidden_states=text))
        torch.testing.assert_close(self_attention, by_hand(block.attn1, x, 0.7))
        torch.testing.assert_close(cross_attention, by_hand(block.attn2, text, 0.7))
        assert not torch.allclose(cross_attention, plain[1])
        assert all(torch.equal(a, b) for a, b in zip(zero, plain, strict=True))
        assert torch.equal(block.attn2(x, encoder_hidden_states=text), plain[1])


# --- files: scan, formats, pickle safety ---------------------------------------------------------


def test_scan_lists_sub_models_with_family_and_trigger_words(models_dir: Path) -> None:
    scan = scan_models_dir(models_dir)
    specs = {(s.kind, s.code): s for s in scan.specs}
    assert specs[(ModelKind.LORA, "kohya-sd1")].trigger_words == ("mystyle", "cat", "house")
    assert specs[(ModelKind.LORA, "peft-sd1")].trigger_words == ()
    families = {code: s.architecture for (_, code), s in specs.items()}
    assert families["kohya-sdxl"] is families["peft-sdxl"] is Architecture.SDXL
    assert families["style-xl"] is Architecture.SDXL
    pickles = {code for (_, code), s in specs.items() if s.weight_format is WeightFormat.PICKLE}
    assert pickles == {"style-pt", "cat-bin", "hyper-relu", "hyper-deep", "hyper-48"}
    assert scan.skipped == []


def test_pickles_are_peeked_and_loaded_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "code ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    root = tmp_path / "models"
    evil = root / "hypernetworks/evil.pt"
    evil.parent.mkdir(parents=True)
    torch.save({768: [{"linear.0.weight": torch.zeros(2, 2)}, Payload()]}, evil)
    legacy = root / "embeddings/legacy.pt"
    legacy.parent.mkdir(parents=True)
    module = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(2, 768))})
    torch.save({"string_to_param": module, "name": "legacy"}, legacy)
    sub.save_hypernetwork(
        root / "hypernetworks/sd1.pt",
        sub.hypernetwork_state([768, 320], layer_structure=(1, 0.01, 1)),
    )
    sub.save_a1111_pt_embedding(root / "embeddings/sd1.pt", torch.zeros(2, 768))
    (root / "embeddings/junk.pt").write_bytes(b"not a pickle")
    scan = scan_models_dir(root)
    assert {(s.kind, s.code, s.architecture) for s in scan.specs} == {
        (ModelKind.HYPERNETWORK, "sd1", Architecture.SD1),
        (ModelKind.EMBEDDING, "sd1", Architecture.SD1),
    }
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert "is not plain weights" in reasons["evil.pt"], reasons
    assert "ParameterDict is not plain weights" in reasons["legacy.pt"], reasons
    assert "not a PyTorch weights file" in reasons["junk.pt"]
    for path, kind, read in (
        (evil, ModelKind.HYPERNETWORK, read_hypernetwork),
        (legacy, ModelKind.EMBEDDING, read_embedding),
    ):
        spec = ModelSpec(path.stem, path.stem, kind, Architecture.SD1, path, WeightFormat.PICKLE)
        with pytest.raises(ModelLoadError, match="safe loader refused it") as info:
            read(spec)
        assert str(path) in str(info.value) and ".safetensors" in str(info.value)
    assert not marker.exists()
