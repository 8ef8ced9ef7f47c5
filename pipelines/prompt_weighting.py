"""Weighted prompts (Runware's promptWeighting): the prompt is turned into embeddings here and the
pipeline gets prompt_embeds (and SDXL's pooled embeddings) instead of the prompt text.

Two syntaxes, a dispatch table each (EMBEDDERS):
- COMPEL: the `compel` library, used as its documentation says (CompelForSD / CompelForSDXL):
  `word+`, `(words)1.3`, `word--`, `.blend()`, `.and()`; long prompts are chunked and the negative
  padded to the positive's length by compel itself. Its textual-inversion hook is ours
  (_TextualInversionTokens: compel's diffusers one fails after an embedding was unloaded).
- SDEMBEDS: A1111's attention syntax, parsed by parse_attention below: `(words:1.3)`, `(words)`
  = x1.1, `[words]` = /1.1 (nesting multiplies), `\\(` `\\)` `\\[` `\\]` `\\\\` for the literal
  characters, `BREAK` to start a new chunk. Encoded the way A1111 does: 75 tokens per chunk with
  BOS/EOS added to each, each chunk through the text encoder(s) on its own, its hidden states
  multiplied by the token weights and scaled back to their original mean, chunks concatenated;
  positive and negative padded with empty chunks to the same count. SDXL: both encoders, each
  weighted on its own, their states side by side; the pooled embedding is the second encoder's,
  from the first chunk, unweighted (A1111). A prompt written with weights of 1.0 only, within 75
  tokens, gives exactly the tensors diffusers makes from the plain text, so the image is the plain
  prompt's, bit for bit.

Clip skip: the layer is the one diffusers would take for the job's clip_skip (SD 1.x: that layer
plus the final layer norm; SDXL: the layer before it, raw), applied to the negative prompt too,
as A1111 and compel do (diffusers' plain path skips layers for the positive prompt only). compel
only knows the last and penultimate layers, so for deeper skips its text encoders are seen through
_SkippingEncoder, whose outputs end `clip_skip` layers early: compel's own layer choice then lands
on diffusers' layer.

Textual-inversion tokens loaded for the job (pipelines.adapters.textual_inversion) are in the
tokenizers by the time this runs; a multi-vector embedding's token is followed by its other
vectors' tokens as diffusers does for plain prompts (SDEMBEDS: the pipeline's maybe_convert_prompt
on each fragment; COMPEL: _TextualInversionTokens on the token ids).

Not done, though A1111 does them: moving a chunk's last words after its last comma into the next
chunk (comma padding backtrack), keeping a multi-vector embedding's tokens in one chunk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyparsing
import torch
from compel import (
    BaseTextualInversionManager,
    Compel,
    CompelForSD,
    CompelForSDXL,
    ReturnedEmbeddingsType,
)
from compel.prompt_parser import PromptParser
from diffusers.loaders import TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from pipelines.jobs import ErrorCode, JobError, PromptWeighting

CHUNK_TOKENS = 75  # prompt tokens per chunk; BOS and EOS make it the encoders' 77
ROUND_BRACKETS = 1.1  # (words): A1111's emphasis
SQUARE_BRACKETS = 1 / 1.1  # [words]: A1111's de-emphasis

Embeddings = dict[str, torch.Tensor]  # diffusers call arguments: prompt_embeds, ...


class PromptSyntaxError(ValueError):
    """A prompt that the SDEMBEDS syntax cannot read; the message says where and why."""


# --- A1111's attention syntax --------------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text and the weight its tokens get."""

    text: str
    weight: float


Section = tuple[Fragment, ...]  # what lies between two BREAKs: it starts a new chunk

_SYNTAX = re.compile(
    r"""
    \\(?P<escaped>[()\[\]\\])            # \( \) \[ \] \\ : the character itself
    | :\s*(?P<weight>[+-]?[\d.]+)\s*\)   # :1.3) closes a weighted group
    | :\s*(?P<edit>[+-]?[\d.]+)\s*\]     # [from:to:0.5]: A1111's prompt editing
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|[\\:])      # words; a lone ':' or '\' is text
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_CLOSERS = {")": "(", "]": "["}
_MULTIPLIERS = {"(": ROUND_BRACKETS, "[": SQUARE_BRACKETS}


class _Break:
    """Where a BREAK stood among the parsed fragments."""


def parse_attention(prompt: str) -> tuple[Section, ...]:
    """A1111's attention syntax: the prompt's sections (split at BREAK), each a sequence of
    fragments with their weights, adjacent fragments of equal weight merged.

    Where A1111 silently guesses (an unclosed or unmatched bracket, a weight it cannot read,
    prompt editing it would take as text), this raises PromptSyntaxError naming the position.
    A lone backslash stays in the text (A1111 drops it); BREAK ends a chunk even inside brackets.
    """
    items: list[list[Any] | _Break] = []  # [text, weight] or a BREAK
    open_groups: list[tuple[str, int, int]] = []  # (bracket, position in prompt, first item)

    def multiply(start: int, factor: float) -> None:
        for item in items[start:]:
            if isinstance(item, list):
                item[1] *= factor

    for match in _SYNTAX.finditer(prompt):
        kind, value, at = match.lastgroup, match.group(match.lastgroup or 0), match.start() + 1
        if kind in ("escaped", "text"):
            for i, part in enumerate(_BREAK.split(value) if kind == "text" else [value]):
                if i:
                    items.append(_Break())
                items.append([part, 1.0])
        elif kind == "open":
            open_groups.append((value, at, len(items)))
        elif kind == "edit":
            raise PromptSyntaxError(
                f"prompt editing [from:to:{value}] at character {at} is not supported "
                "(write \\[ and \\] for literal brackets)"
            )
        else:  # a closing bracket, plain or with a weight
            bracket = ")" if kind == "weight" else value
            if not open_groups:
                raise PromptSyntaxError(
                    f"unmatched {bracket!r} at character {at} (write \\{bracket} for a literal one)"
                )
            opener, opened_at, start = open_groups.pop()
            if opener != _CLOSERS[bracket]:
                raise PromptSyntaxError(
                    f"{bracket!r} at character {at} closes the {opener!r} at character {opened_at}"
                )
            multiply(start, _weight(value, at) if kind == "weight" else _MULTIPLIERS[opener])
    if open_groups:
        opener, opened_at, _ = open_groups[-1]
        raise PromptSyntaxError(
            f"unclosed {opener!r} at character {opened_at} (write \\{opener} for a literal one)"
        )
    return _sections(items)


def _weight(text: str, at: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PromptSyntaxError(f"weight {text!r} at character {at} is not a number") from None
    if not math.isfinite(value):
        raise PromptSyntaxError(f"weight {text!r} at character {at} is not a finite number")
    return value


def _sections(items: Sequence[list[Any] | _Break]) -> tuple[Section, ...]:
    """Items split at BREAKs, equal weights merged, empty text dropped. A BREAK at the very
    end starts nothing (A1111: an empty last chunk is not added)."""
    sections: list[list[Fragment]] = [[]]
    for item in items:
        if isinstance(item, _Break):
            sections.append([])
        elif item[0]:
            current = sections[-1]
            if current and current[-1].weight == item[1]:
                current[-1] = Fragment(current[-1].text + item[0], item[1])
            else:
                current.append(Fragment(item[0], item[1]))
    if len(sections) > 1 and not sections[-1]:
        sections.pop()
    return tuple(tuple(section) for section in sections)


# --- SDEMBEDS: A1111's chunked, weighted encoding ------------------------------------------------


@dataclass(frozen=True)
class _TextEncoder:
    tokenizer: Any
    model: Any


Chunk = tuple[list[int], list[float]]  # up to CHUNK_TOKENS token ids and their weights


def _text_encoders(pipe: DiffusionPipeline) -> list[_TextEncoder]:
    """The pipeline's text encoders in diffusers' order (an SDXL refiner has the second only)."""
    pairs = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    return [
        _TextEncoder(getattr(pipe, tokenizer), getattr(pipe, model))
        for tokenizer, model in pairs
        if getattr(pipe, model, None) is not None
    ]


def _is_sdxl(pipe: DiffusionPipeline) -> bool:
    return "text_encoder_2" in pipe.components


def _expand_embeddings(pipe: DiffusionPipeline, text: str, tokenizer: Any) -> str:
    """Multi-vector textual-inversion tokens written out (`tok` -> `tok tok_1 ...`), by the
    pipeline's maybe_convert_prompt (the embeddings adapter's version during a job); only
    asked when the tokenizer has such tokens."""
    added = tokenizer.added_tokens_encoder
    if isinstance(pipe, TextualInversionLoaderMixin) and any(f"{t}_1" in added for t in added):
        return pipe.maybe_convert_prompt(text, tokenizer)
    return text


def _chunks(
    pipe: DiffusionPipeline, encoder: _TextEncoder, sections: Sequence[Section]
) -> list[Chunk]:
    """A1111's chunking: each section's tokens in runs of CHUNK_TOKENS; an empty section is one
    empty chunk. Fragments are tokenized one by one, so a weight never spans a split word."""
    chunks: list[Chunk] = []
    for section in sections:
        ids: list[int] = []
        weights: list[float] = []
        for fragment in section:
            text = _expand_embeddings(pipe, fragment.text, encoder.tokenizer)
            tokens = encoder.tokenizer(text, add_special_tokens=False, verbose=False).input_ids
            ids += tokens
            weights += [fragment.weight] * len(tokens)
        for start in range(0, max(len(ids), 1), CHUNK_TOKENS):
            chunks.append(
                (ids[start : start + CHUNK_TOKENS], weights[start : start + CHUNK_TOKENS])
            )
    return chunks


def _chunk_ids(tokenizer: Any, chunk: Chunk) -> tuple[list[int], list[float]]:
    """[BOS] tokens [EOS] [PAD]... (77 ids, as diffusers tokenizes) and one weight per id."""
    ids, weights = chunk
    padding = CHUNK_TOKENS - len(ids)
    full = [
        tokenizer.bos_token_id,
        *ids,
        tokenizer.eos_token_id,
        *[tokenizer.pad_token_id] * padding,
    ]
    return full, [1.0, *weights, 1.0, *[1.0] * padding]


def _hidden_states(
    model: Any, ids: torch.Tensor, clip_skip: int | None, sdxl: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer diffusers' encode_prompt takes for this clip_skip, and the pooled output when
    the encoder has a projection (SDXL's second), computed with the very same calls."""
    if sdxl:
        out = model(ids, output_hidden_states=True)
        pooled = out[0] if out[0].ndim == 2 else None
        return out.hidden_states[-((clip_skip or 0) + 2)], pooled
    if clip_skip is None:
        return model(ids, attention_mask=None)[0], None
    out = model(ids, attention_mask=None, output_hidden_states=True)
    return _final_layer_norm(model)(out.hidden_states[-(clip_skip + 1)]), None


def _final_layer_norm(model: Any) -> Any:
    return getattr(model, "text_model", model).final_layer_norm


def emphasise(hidden: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """A1111's emphasis: each token's hidden state times its weight, then the whole chunk scaled
    so its mean is what it was (in float32). All weights 1.0: the states untouched."""
    if all(weight == 1.0 for weight in weights):
        return hidden
    z = hidden.float()
    original_mean = z.mean()
    z = z * torch.tensor(weights, dtype=z.dtype, device=z.device).reshape(1, -1, 1)
    z = z * (original_mean / z.mean())
    return z.to(hidden.dtype)


def _sdembeds(
    pipe: DiffusionPipeline, prompt: str, negative_prompt: str, clip_skip: int | None
) -> Embeddings:
    parsed = [_parse(prompt, "prompt"), _parse(negative_prompt, "negative prompt")]
    encoders = _text_encoders(pipe)
    sdxl = _is_sdxl(pipe)
    chunks = [[_chunks(pipe, encoder, sections) for sections in parsed] for encoder in encoders]
    count = max(len(c) for per_encoder in chunks for c in per_encoder)
    device = pipe._execution_device
    embeds: list[list[torch.Tensor]] = [[], []]  # positive, negative: one tensor per encoder
    pooled: list[torch.Tensor | None] = [None, None]
    for encoder, per_prompt in zip(encoders, chunks, strict=True):
        for side, prompt_chunks in enumerate(per_prompt):
            states = []
            for chunk in prompt_chunks + [([], [])] * (count - len(prompt_chunks)):
                ids, weights = _chunk_ids(encoder.tokenizer, chunk)
                tensor = torch.tensor([ids], dtype=torch.long, device=device)
                hidden, chunk_pooled = _hidden_states(encoder.model, tensor, clip_skip, sdxl)
                states.append(emphasise(hidden, weights))
                if chunk_pooled is not None and pooled[side] is None:
                    pooled[side] = chunk_pooled  # the first chunk's, as A1111
            embeds[side].append(torch.cat(states, dim=1))
    result = {
        "prompt_embeds": torch.cat(embeds[0], dim=-1),
        "negative_prompt_embeds": torch.cat(embeds[1], dim=-1),
    }
    if sdxl:
        positive, negative = pooled
        if positive is None or negative is None:  # SDXL's last text encoder has a projection
            raise JobError(ErrorCode.INTERNAL, "sdEmbeds: no pooled prompt embedding for SDXL")
        result["pooled_prompt_embeds"], result["negative_pooled_prompt_embeds"] = positive, negative
    return result


def _parse(prompt: str, what: str) -> tuple[Section, ...]:
    try:
        return parse_attention(prompt)
    except PromptSyntaxError as error:
        raise JobError(
            ErrorCode.INVALID_INPUT, f"the {what} cannot be read as sdembeds weighting: {error}"
        ) from error


# --- COMPEL ---------------------------------------------------------------------------------------


class _SkippingEncoder:
    """A text encoder whose outputs end `skip` layers early: A1111 clip skip for compel.

    compel takes `last_hidden_state` (SD 1.x: the last layer, normalised) or `hidden_states[-2]`
    (SDXL: the penultimate layer, raw). With the last `skip` layers cut off (and the last
    remaining one normalised) those name the layers diffusers uses for clip_skip=skip; the pooled
    output of SDXL's second encoder stays the model's own, as in diffusers. Everything else
    (device, dtype, config) is the encoder's."""

    def __init__(self, model: Any, skip: int) -> None:
        self._model = model
        self._skip = skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, input_ids: torch.Tensor, attention_mask: Any = None, **kwargs: Any) -> Any:
        kwargs["output_hidden_states"] = True
        out = self._model(input_ids, attention_mask, **kwargs)
        out.hidden_states = out.hidden_states[: -self._skip]
        out.last_hidden_state = _final_layer_norm(self._model)(out.hidden_states[-1])
        return out


class _TextualInversionTokens(BaseTextualInversionManager):
    """compel's hook for multi-vector textual inversions, working on token ids: each embedding's
    first token is followed by the ids of its other vectors (`code_1`, `code_2`...), as diffusers'
    maybe_convert_prompt writes them out for a plain prompt.

    compel's DiffusersTextualInversionManager decodes the ids to text and encodes them again;
    once diffusers' unload_textual_inversion has rebuilt a transformers-5 CLIP tokenizer (after
    any job with an embedding), its decode keeps the `</w>` word ends and that round trip makes
    other tokens. SDXL's two tokenizers get the same added tokens in the same order (the
    embeddings adapter loads each into both), so one tokenizer's ids serve both, as in compel."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        added = self.tokenizer.added_tokens_encoder
        if not added:
            return token_ids
        contents = {index: token for token, index in added.items()}
        expanded: list[int] = []
        for token_id in token_ids:
            expanded.append(token_id)
            token = contents.get(token_id)
            vector = 1
            while token is not None and f"{token}_{vector}" in added:
                expanded.append(added[f"{token}_{vector}"])
                vector += 1
        return expanded


@dataclass(frozen=True)
class _EncodersView:
    """The tokenizers and text encoders compel's wrappers read from a pipeline."""

    tokenizer: Any
    text_encoder: Any
    tokenizer_2: Any = None
    text_encoder_2: Any = None


def _compel_view(pipe: DiffusionPipeline, clip_skip: int | None) -> _EncodersView:
    def seen(model: Any) -> Any:
        return model if model is None or not clip_skip else _SkippingEncoder(model, clip_skip)

    return _EncodersView(
        pipe.tokenizer,
        seen(pipe.text_encoder),
        getattr(pipe, "tokenizer_2", None),
        seen(getattr(pipe, "text_encoder_2", None)),
    )


def _compel(
    pipe: DiffusionPipeline, prompt: str, negative_prompt: str, clip_skip: int | None
) -> Embeddings:
    view = _compel_view(pipe, clip_skip)
    manager = _TextualInversionTokens(
        view.tokenizer if view.tokenizer is not None else view.tokenizer_2
    )
    try:
        if not _is_sdxl(pipe):
            sd = CompelForSD(view, textual_inversion_manager=manager)
            out = sd(prompt, negative_prompt=negative_prompt)
            return {"prompt_embeds": out.embeds, "negative_prompt_embeds": out.negative_embeds}
        if view.text_encoder is None:
            return _compel_refiner(view, manager, prompt, negative_prompt)
        out = CompelForSDXL(view, textual_inversion_manager=manager)(
            prompt, negative_prompt=negative_prompt
        )
    except (PromptParser.ParsingException, pyparsing.ParseBaseException, ValueError) as error:
        # compel's parser reports malformed .blend() / .and() this way (ValueError: a weight
        # that is not a number); the text encoders raise nothing of the kind.
        raise JobError(
            ErrorCode.INVALID_INPUT, f"the prompt cannot be read as compel weighting: {error}"
        ) from error
    return {
        "prompt_embeds": out.embeds,
        "negative_prompt_embeds": out.negative_embeds,
        "pooled_prompt_embeds": out.pooled_embeds,
        "negative_pooled_prompt_embeds": out.negative_pooled_embeds,
    }


def _compel_refiner(
    view: _EncodersView, manager: BaseTextualInversionManager, prompt: str, negative_prompt: str
) -> Embeddings:
    """An SDXL refiner (second encoder only): compel's single-encoder form, SDXL's settings."""
    compel = Compel(
        tokenizer=view.tokenizer_2,
        text_encoder=view.text_encoder_2,
        textual_inversion_manager=manager,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=True,
        truncate_long_prompts=False,
    )
    embeds, pooled = compel([prompt, negative_prompt])  # padded to the same length
    return {
        "prompt_embeds": embeds[:1],
        "negative_prompt_embeds": embeds[1:],
        "pooled_prompt_embeds": pooled[:1],
        "negative_pooled_prompt_embeds": pooled[1:],
    }


# --- entry point ---------------------------------------------------------------------------------

Embedder = Callable[[DiffusionPipeline, str, str, int | None], Embeddings]

EMBEDDERS: dict[PromptWeighting, Embedder] = {
    PromptWeighting.COMPEL: _compel,
    PromptWeighting.SDEMBEDS: _sdembeds,
}


def prompt_embeddings(
    pipe: DiffusionPipeline,
    prompt: str,
    negative_prompt: str,
    weighting: PromptWeighting,
    clip_skip: int | None,
) -> Embeddings:
    """The diffusers call arguments that replace prompt / negative_prompt (and clip_skip) for a
    weighted prompt: prompt_embeds and negative_prompt_embeds of equal length, plus the pooled
    pair for SDXL. clip_skip is diffusers' (None = the model's usual layer)."""
    return EMBEDDERS[weighting](pipe, prompt, negative_prompt, clip_skip)
