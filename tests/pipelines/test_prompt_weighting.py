"""Weighted prompts (GenerationJob.prompt_weighting): compel's syntax and A1111's (sdembeds).

COMPEL jobs through the real engine must draw what diffusers draws from the embeddings compel
makes when called directly, as its documentation says, on a pipeline loaded from the same file.
SDEMBEDS is our own A1111 reading: its parser is checked piece by piece, unit weights must give
the plain prompt's image bit for bit (for every kind of job and with ControlNet), weights must
change it, long prompts are chunked, and A1111's mean-restoring emphasis is checked on the
tensors. Syntax errors fail the job with INVALID_INPUT, and the engine goes on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from compel import (
    Compel,
    CompelForSD,
    CompelForSDXL,
    DiffusersTextualInversionManager,
    ReturnedEmbeddingsType,
)
from diffusers import DiffusionPipeline
from PIL import Image

from pipelines.jobs import (
    ControlUnit,
    ErrorCode,
    GenerationJob,
    JobError,
    JobKind,
    JobResult,
    PromptWeighting,
    SubModel,
    SubModelKind,
)
from pipelines.prompt_weighting import (
    CHUNK_TOKENS,
    Fragment,
    PromptSyntaxError,
    emphasise,
    parse_attention,
    prompt_embeddings,
)
from tests.engine_harness import run_jobs
from tests.models import tiny_submodels as sub
from tests.models.tiny_controlnet import save_controlnet_folder, tiny_sd1_controlnet
from tests.pipelines.masked_support import (
    SD1,
    SDXL,
    load_reference,
    make_models_dir,
    noise_image,
    one_torch_thread,
)

COMPEL, SDEMBEDS = PromptWeighting.COMPEL, PromptWeighting.SDEMBEDS
PROMPT, NEGATIVE = "a house by a lake", "blurry"
COMPEL_PROMPT, COMPEL_NEGATIVE = "a house++ by a (lake)1.3", "blurry--, (ugly)0.8"
WEIGHTED = "a (house:1.4) by a [[lake]]"
LONG = ", ".join(f"word{i}" for i in range(60))  # 229 tokens: four chunks
SIZE = 64
INIT = noise_image((SIZE, SIZE), 3)
MASK = Image.new("L", (SIZE, SIZE), 0)
MASK.paste(255, (16, 16, 48, 48))
FOREGROUND = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
FOREGROUND.paste(Image.new("RGBA", (24, 24), (200, 40, 40, 255)), (20, 20))
EMBEDDING = SubModel(kind=SubModelKind.EMBEDDING, model="style-st")
CONTROL = ControlUnit(model="cn", image=noise_image((SIZE, SIZE), 4))

BASE = GenerationJob(
    kind=JobKind.TXT2IMG,
    model=SD1,
    prompt=PROMPT,
    negative_prompt=NEGATIVE,
    width=SIZE,
    height=SIZE,
    steps=3,
    guidance_scale=5.0,
    seeds=(7,),
)
KINDS: dict[str, dict[str, Any]] = {
    "txt2img": {},
    "img2img": {"kind": JobKind.IMG2IMG, "init_image": INIT, "strength": 0.7},
    "inpaint": {"kind": JobKind.INPAINT, "init_image": INIT, "mask": MASK, "strength": 0.9},
    "background": {"kind": JobKind.BACKGROUND, "init_image": FOREGROUND, "strength": 1.0},
    "controlnet": {"controls": (CONTROL,)},
    "embedding": {"sub_models": (EMBEDDING,), "prompt": "a house, style-st"},
    "sdxl": {"model": SDXL},
    "sdxl inpaint": {"model": SDXL, "kind": JobKind.INPAINT, "init_image": INIT, "mask": MASK},
}


def unit_weights(prompt: str) -> str:
    return f"({prompt}:1.0)"


# Run in this order by one engine: the compel jobs come after jobs that loaded and unloaded an
# embedding (diffusers then rebuilds the tokenizer, whose decode compel's own textual-inversion
# manager relies on).
JOBS: dict[str, GenerationJob] = {
    **{f"plain {name}": replace(BASE, **changes) for name, changes in KINDS.items()},
    **{
        f"unit {name}": replace(
            BASE,
            **{**changes, "prompt": unit_weights(changes.get("prompt", PROMPT))},
            negative_prompt=unit_weights(NEGATIVE),
            prompt_weighting=SDEMBEDS,
        )
        for name, changes in KINDS.items()
    },
    "weighted": replace(BASE, prompt=WEIGHTED, prompt_weighting=SDEMBEDS),
    "weighted embedding": replace(
        BASE, sub_models=(EMBEDDING,), prompt="a house, (style-st:1.3)", prompt_weighting=SDEMBEDS
    ),
    "plain long": replace(BASE, prompt=LONG),
    "long": replace(BASE, prompt=LONG, prompt_weighting=SDEMBEDS),
    "compel": replace(
        BASE, prompt=COMPEL_PROMPT, negative_prompt=COMPEL_NEGATIVE, prompt_weighting=COMPEL
    ),
    "compel clip skip": replace(
        BASE,
        prompt=COMPEL_PROMPT,
        negative_prompt=COMPEL_NEGATIVE,
        prompt_weighting=COMPEL,
        clip_skip=2,
    ),
    "compel long": replace(BASE, prompt=LONG + "++", prompt_weighting=COMPEL),
    "compel embedding": replace(
        BASE, sub_models=(EMBEDDING,), prompt="a house, style-st+", prompt_weighting=COMPEL
    ),
    "compel sdxl": replace(
        BASE,
        model=SDXL,
        prompt=COMPEL_PROMPT,
        negative_prompt=COMPEL_NEGATIVE,
        prompt_weighting=COMPEL,
    ),
    "bad sdembeds": replace(BASE, prompt="a (house by a lake", prompt_weighting=SDEMBEDS),
    "bad sdembeds negative": replace(BASE, negative_prompt="blurry]", prompt_weighting=SDEMBEDS),
    "bad compel": replace(BASE, prompt='("a house", "a lake").blend(1)', prompt_weighting=COMPEL),
    "plain after errors": BASE,
}


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("weighting")
    models = make_models_dir(root, [SD1, SDXL])
    save_controlnet_folder(tiny_sd1_controlnet(10), models / "controlnet/cn")
    vectors = sub.embedding_vectors(32, 2, seed=2)
    sub.save_a1111_safetensors_embedding(models / "embeddings/style-st.safetensors", vectors)
    results = run_jobs(models, root / "data", list(JOBS.values()))
    return {
        "models": models,
        "results": dict(zip(JOBS, results, strict=True)),
        SD1: load_reference(models, SD1, root / "cache"),
        SDXL: load_reference(models, SDXL, root / "cache"),
    }


def image(setup: dict[str, Any], name: str) -> np.ndarray:
    result = setup["results"][name]
    assert isinstance(result, JobResult), result
    (only,) = result.images
    return np.asarray(only.convert("RGB"))


def error(setup: dict[str, Any], name: str) -> JobError:
    result = setup["results"][name]
    assert isinstance(result, JobError), result
    return result


def direct(pipe: DiffusionPipeline, embeds: dict[str, torch.Tensor]) -> np.ndarray:
    """The diffusers call the engine makes for BASE, with embeddings for the prompt."""
    out = pipe(
        **embeds,
        width=SIZE,
        height=SIZE,
        num_inference_steps=BASE.steps,
        guidance_scale=BASE.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in BASE.seeds],
        output_type="pil",
    )
    return np.asarray(out.images[0].convert("RGB"))


def compel_sd(pipe: DiffusionPipeline, prompt: str, negative: str) -> dict[str, torch.Tensor]:
    """compel as its documentation says for SD 1.x (with diffusers' textual inversions)."""
    manager = DiffusersTextualInversionManager(pipe)
    out = CompelForSD(pipe, textual_inversion_manager=manager)(prompt, negative_prompt=negative)
    return {"prompt_embeds": out.embeds, "negative_prompt_embeds": out.negative_embeds}


# --- A1111's syntax ------------------------------------------------------------------------------


def test_parser_weights_nest_and_merge() -> None:
    ((*fragments,),) = parse_attention("a (cat:1.3) [dog] ((bird)) (x (y:2)) [[z]]")
    weights = {f.text.strip(): round(f.weight, 6) for f in fragments if f.text.strip()}
    assert weights == {
        "a": 1.0,
        "cat": 1.3,
        "dog": round(1 / 1.1, 6),
        "bird": 1.21,
        "x": 1.1,
        "y": 2.2,
        "z": round(1 / 1.21, 6),
    }
    # equal neighbours merge, so unit weights read as the plain text
    assert parse_attention("a (house:1.0) by (a lake:1)") == (
        (Fragment("a house by a lake", 1.0),),
    )
    assert parse_attention("(a: 0.5 )") == ((Fragment("a", 0.5),),)
    assert parse_attention("style: anime, (x:)") == (
        (Fragment("style: anime, ", 1.0), Fragment("x:", 1.1)),
    )
    assert parse_attention("") == ((),)


def test_parser_escapes_are_literal() -> None:
    assert parse_attention(r"a \(b\) \[c\] d\\e") == ((Fragment(r"a (b) [c] d\e", 1.0),),)
    assert parse_attention(r"(\(x\):1.5)") == ((Fragment("(x)", 1.5),),)
    assert parse_attention("a \\ b") == ((Fragment("a \\ b", 1.0),),)


def test_parser_break_starts_sections() -> None:
    assert parse_attention("a cat BREAK (a dog:1.2)") == (
        (Fragment("a cat", 1.0),),
        (Fragment("a dog", 1.2),),
    )
    assert parse_attention("a BREAK") == ((Fragment("a", 1.0),),)  # no empty last chunk
    assert parse_attention("BREAK a") == ((), (Fragment("a", 1.0),))
    assert parse_attention("(a BREAK b:2)") == ((Fragment("a", 2.0),), (Fragment("b", 2.0),))
    assert parse_attention("aBREAK break") == ((Fragment("aBREAK break", 1.0),),)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a (cat", "unclosed '(' at character 3"),
        ("a [cat", "unclosed '[' at character 3"),
        ("a cat)", "unmatched ')' at character 6"),
        ("a cat:1.2)", "unmatched ')' at character 6"),
        ("(a cat]", "']' at character 7 closes the '(' at character 1"),
        ("(a:1.2.3)", "weight '1.2.3' at character 3 is not a number"),
        ("[cat:dog:0.5]", "prompt editing [from:to:0.5] at character 9 is not supported"),
    ],
)
def test_parser_errors_say_where(prompt: str, message: str) -> None:
    with pytest.raises(PromptSyntaxError, match=re.escape(message)):
        parse_attention(prompt)


def test_emphasis_is_a1111s_mean_restoring_multiply() -> None:
    z = torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(1))
    weights = [1.0] * 77
    weights[3], weights[4] = 1.5, 0.5
    out = emphasise(z, weights)
    scaled = z * torch.tensor(weights).reshape(1, -1, 1)
    assert torch.allclose(out, scaled * (z.mean() / scaled.mean()), rtol=0, atol=1e-6)
    assert torch.isclose(out.mean(), z.mean(), rtol=1e-5, atol=1e-7)
    assert emphasise(z, [1.0] * 77) is z


# --- SDEMBEDS embeddings -------------------------------------------------------------------------


def encode_chunk(pipe: DiffusionPipeline, ids: list[int]) -> torch.Tensor:
    """What diffusers' SD 1.x encode_prompt takes from the text encoder for one 77-id chunk."""
    tokenizer = pipe.tokenizer
    padded = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    padded += [tokenizer.pad_token_id] * (77 - len(padded))
    return pipe.text_encoder(torch.tensor([padded]))[0]


def test_sdembeds_weights_tokens_and_restores_the_mean(setup: dict[str, Any]) -> None:
    pipe = setup[SD1]
    with torch.inference_mode():
        got = prompt_embeddings(pipe, "a (house:1.5) by a lake", "", SDEMBEDS, None)
        ids = pipe.tokenizer(PROMPT, add_special_tokens=False).input_ids
        z = encode_chunk(pipe, ids)
        weights = torch.ones(77)
        weights[1 + ids.index(pipe.tokenizer.convert_tokens_to_ids("house</w>"))] = 1.5
        scaled = z * weights.reshape(1, -1, 1)
        expected = scaled * (z.mean() / scaled.mean())
        assert torch.allclose(got["prompt_embeds"], expected, rtol=0, atol=1e-6)
        assert not torch.allclose(got["prompt_embeds"], z, atol=1e-3)
        assert torch.equal(got["negative_prompt_embeds"], encode_chunk(pipe, []))


def test_sdembeds_long_prompts_are_chunked(setup: dict[str, Any]) -> None:
    pipe = setup[SD1]
    with torch.inference_mode():
        got = prompt_embeddings(pipe, LONG, "blurry BREAK ugly", SDEMBEDS, None)
        ids = pipe.tokenizer(LONG, add_special_tokens=False).input_ids
        count = -(-len(ids) // CHUNK_TOKENS)
        assert count >= 3
        chunks = [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)]
        expected = torch.cat([encode_chunk(pipe, chunk) for chunk in chunks], dim=1)
        assert torch.equal(got["prompt_embeds"], expected)
        # the negative: one chunk per BREAK section, then empty chunks up to the same count
        tokens = pipe.tokenizer(["blurry", "ugly"], add_special_tokens=False).input_ids
        negative = [encode_chunk(pipe, t) for t in tokens] + [encode_chunk(pipe, [])] * (count - 2)
        assert torch.equal(got["negative_prompt_embeds"], torch.cat(negative, dim=1))


def test_sdembeds_unit_weights_are_diffusers_embeddings_at_every_clip_skip(
    setup: dict[str, Any],
) -> None:
    """Unit weights give exactly the tensors of diffusers' encode_prompt (SD 1.x: the skipped
    layer normalised; SDXL: both encoders and the pooled output), for diffusers' clip_skip None
    and 1; the negative gets the same layer as the positive (as in A1111)."""
    for family in (SD1, SDXL):
        pipe = setup[family]
        with torch.inference_mode():
            for clip_skip in (None, 1):
                got = prompt_embeddings(pipe, unit_weights(PROMPT), "", SDEMBEDS, clip_skip)
                want = pipe.encode_prompt(
                    PROMPT,
                    device=torch.device("cpu"),
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=True,
                    negative_prompt="",
                    clip_skip=clip_skip,
                )
                assert torch.equal(got["prompt_embeds"], want[0]), (family, clip_skip)
                if family == SDXL:
                    assert torch.equal(got["pooled_prompt_embeds"], want[2])
                same = prompt_embeddings(pipe, NEGATIVE, NEGATIVE, SDEMBEDS, clip_skip)
                assert torch.equal(same["prompt_embeds"], same["negative_prompt_embeds"])
            skipped = prompt_embeddings(pipe, PROMPT, "", SDEMBEDS, 1)["prompt_embeds"]
            assert not torch.equal(
                skipped, prompt_embeddings(pipe, PROMPT, "", SDEMBEDS, None)["prompt_embeds"]
            )


def test_sdembeds_sdxl_pools_the_first_chunk(setup: dict[str, Any]) -> None:
    pipe = setup[SDXL]
    with torch.inference_mode():
        long = prompt_embeddings(pipe, f"{PROMPT} BREAK {LONG}", "", SDEMBEDS, 1)
        first = prompt_embeddings(pipe, PROMPT, "", SDEMBEDS, None)
    assert long["prompt_embeds"].shape == long["negative_prompt_embeds"].shape
    chunks = 1 + -(-len(pipe.tokenizer(LONG, add_special_tokens=False).input_ids) // CHUNK_TOKENS)
    assert long["prompt_embeds"].shape == (1, chunks * 77, 96)
    assert torch.equal(long["pooled_prompt_embeds"], first["pooled_prompt_embeds"])
    assert long["negative_pooled_prompt_embeds"].shape == first["pooled_prompt_embeds"].shape


# --- SDEMBEDS through the engine -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(KINDS))
def test_unit_weights_give_the_plain_image(setup: dict[str, Any], name: str) -> None:
    assert np.array_equal(image(setup, f"unit {name}"), image(setup, f"plain {name}"))


def test_weights_change_the_image(setup: dict[str, Any]) -> None:
    plain = image(setup, "plain txt2img")
    assert not np.array_equal(image(setup, "weighted"), plain)
    assert not np.array_equal(image(setup, "weighted embedding"), image(setup, "plain embedding"))


def test_a_long_prompt_is_drawn_from_all_its_chunks(setup: dict[str, Any]) -> None:
    long = image(setup, "long")
    assert not np.array_equal(long, image(setup, "plain long"))  # plain: cut at 77 tokens
    pipe = setup[SD1]
    with torch.inference_mode():
        embeds = prompt_embeddings(pipe, LONG, NEGATIVE, SDEMBEDS, None)
        assert np.array_equal(long, direct(pipe, embeds))


# --- COMPEL --------------------------------------------------------------------------------------


def test_compel_sd1_equals_compel_called_directly(setup: dict[str, Any]) -> None:
    pipe = setup[SD1]
    for name, prompt, negative in (
        ("compel", COMPEL_PROMPT, COMPEL_NEGATIVE),
        ("compel long", LONG + "++", NEGATIVE),
    ):
        assert np.array_equal(image(setup, name), direct(pipe, compel_sd(pipe, prompt, negative)))
    assert not np.array_equal(image(setup, "compel"), image(setup, "plain txt2img"))


def test_compel_sdxl_equals_compel_called_directly(setup: dict[str, Any]) -> None:
    pipe = setup[SDXL]
    manager = DiffusersTextualInversionManager(pipe)
    out = CompelForSDXL(pipe, textual_inversion_manager=manager)(
        COMPEL_PROMPT, negative_prompt=COMPEL_NEGATIVE
    )
    embeds = {
        "prompt_embeds": out.embeds,
        "negative_prompt_embeds": out.negative_embeds,
        "pooled_prompt_embeds": out.pooled_embeds,
        "negative_pooled_prompt_embeds": out.negative_pooled_embeds,
    }
    assert np.array_equal(image(setup, "compel sdxl"), direct(pipe, embeds))


def test_compel_clip_skip_is_compels_own_penultimate_layer(setup: dict[str, Any]) -> None:
    """ClipSkip 2 on SD 1.x is compel's PENULTIMATE_HIDDEN_STATES_NORMALIZED."""
    pipe = setup[SD1]
    compel = Compel(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        textual_inversion_manager=DiffusersTextualInversionManager(pipe),
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED,
        truncate_long_prompts=False,
    )
    embeds = compel([COMPEL_PROMPT, COMPEL_NEGATIVE])
    expected = direct(pipe, {"prompt_embeds": embeds[:1], "negative_prompt_embeds": embeds[1:]})
    assert np.array_equal(image(setup, "compel clip skip"), expected)
    assert not np.array_equal(image(setup, "compel clip skip"), image(setup, "compel"))


def test_compel_sdxl_clip_skip_takes_diffusers_layer(setup: dict[str, Any]) -> None:
    pipe = setup[SDXL]
    with torch.inference_mode():
        got = prompt_embeddings(pipe, PROMPT, NEGATIVE, COMPEL, 1)
        want = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE, clip_skip=1)
        plain = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE)
    assert torch.allclose(got["prompt_embeds"], want[0], atol=1e-5)
    assert not torch.allclose(got["prompt_embeds"], plain[0], atol=1e-3)
    assert torch.allclose(got["pooled_prompt_embeds"], want[2], atol=1e-5)


def test_compel_with_a_textual_inversion_equals_diffusers(setup: dict[str, Any]) -> None:
    pipe = setup[SD1]
    pipe.load_textual_inversion(
        str(setup["models"] / "embeddings/style-st.safetensors"), token="style-st"
    )
    try:
        expected = direct(pipe, compel_sd(pipe, "a house, style-st+", NEGATIVE))
    finally:
        pipe.unload_textual_inversion()
    assert np.array_equal(image(setup, "compel embedding"), expected)


# --- errors --------------------------------------------------------------------------------------


def test_syntax_errors_fail_the_job_and_the_engine_goes_on(setup: dict[str, Any]) -> None:
    cases = {
        "bad sdembeds": "the prompt cannot be read as sdembeds weighting: unclosed '('",
        "bad sdembeds negative": "the negative prompt cannot be read as sdembeds weighting: "
        "unmatched ']'",
        "bad compel": "the prompt cannot be read as compel weighting: ",
    }
    for name, message in cases.items():
        failure = error(setup, name)
        assert failure.code is ErrorCode.INVALID_INPUT
        assert failure.message.startswith(message), failure.message
    assert "blend" in error(setup, "bad compel").message.lower()
    assert np.array_equal(image(setup, "plain after errors"), image(setup, "plain txt2img"))
