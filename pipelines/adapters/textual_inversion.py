"""Textual-inversion embeddings for one job: the embedding's code becomes a prompt token.

A1111's convention: an embedding is used by writing its name (the file stem, here the model
code) in the prompt or the negative prompt. diffusers' load_textual_inversion adds that token
(plus `<code>_1`, `<code>_2`... for multi-vector embeddings) to the tokenizer and grows the text
encoder's embedding matrix; SDXL embeddings load their clip_l vectors into the first encoder and
their clip_g vectors into the second under the same token. On exit unload_textual_inversion
takes the tokens out again, and the text encoder gets back its original embedding parameter,
tensor and size - the very same objects, so the base model is bit-for-bit what it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from diffusers.loaders import TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from torch import nn

from models.cache import PipelineCache
from models.catalogue import ModelSpec
from models.submodels import TEXT_ENCODER, TEXT_ENCODER_2, file_key, read_embedding
from pipelines.jobs import ErrorCode, JobError

# Text encoder attribute -> its tokenizer attribute, in a pipeline.
TOKENIZERS: dict[str, str] = {TEXT_ENCODER: "tokenizer", TEXT_ENCODER_2: "tokenizer_2"}


@dataclass(frozen=True)
class _InputEmbeddings:
    """A text encoder's token embedding as it was before a job grew it."""

    module: nn.Embedding
    weight: nn.Parameter
    data: torch.Tensor
    rows: int
    vocab_size: int

    @classmethod
    def of(cls, encoder: Any) -> _InputEmbeddings:
        module = encoder.get_input_embeddings()
        weight = module.weight
        return cls(module, weight, weight.data, module.num_embeddings, encoder.config.vocab_size)

    def restore(self, encoder: Any) -> None:
        encoder.set_input_embeddings(self.module)
        self.module.weight = self.weight
        self.weight.data = self.data
        self.module.num_embeddings = self.rows
        encoder.config.vocab_size = self.vocab_size


def _tokens(code: str, count: int) -> list[str]:
    """The tokens diffusers registers for an embedding of `count` vectors."""
    return [code, *(f"{code}_{i}" for i in range(1, count))]


def _encoders(pipe: DiffusionPipeline) -> list[str]:
    return [name for name in TOKENIZERS if getattr(pipe, name, None) is not None]


def _check_fits(
    pipe: DiffusionPipeline, spec: ModelSpec, vectors: dict[str, torch.Tensor], checkpoint: str
) -> None:
    need = {
        name: getattr(pipe, name).get_input_embeddings().embedding_dim for name in _encoders(pipe)
    }
    have = {name: v.shape[-1] for name, v in vectors.items()}
    if have != need:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"embedding {spec.code!r} has vectors of width {sorted(have.values())}, but the "
            f"checkpoint {checkpoint!r} has text encoders of width {sorted(need.values())}: it "
            "was trained for another model family",
        )


@contextmanager
def applied(
    pipe: DiffusionPipeline, specs: Sequence[ModelSpec], checkpoint: str, cache: PipelineCache
) -> Iterator[None]:
    if not specs:
        yield
        return
    unique = list({spec.code: spec for spec in specs}.values())
    tables = [(s, cache.component(file_key(s), partial(read_embedding, s))) for s in unique]
    for spec, vectors in tables:
        _check_fits(pipe, spec, vectors, checkpoint)
    encoders = _encoders(pipe)
    originals = {name: _InputEmbeddings.of(getattr(pipe, name)) for name in encoders}
    loaded: dict[str, list[str]] = {name: [] for name in encoders}
    # Only the worker thread runs pipelines: swapping the class attribute for the job is safe.
    diffusers_convert = TextualInversionLoaderMixin._maybe_convert_prompt
    TextualInversionLoaderMixin._maybe_convert_prompt = _maybe_convert_prompt  # type: ignore[method-assign]
    try:
        for spec, vectors in tables:
            for name in encoders:
                encoder, tokenizer = getattr(pipe, name), getattr(pipe, TOKENIZERS[name])
                try:
                    pipe.load_textual_inversion(
                        vectors[name], token=spec.code, tokenizer=tokenizer, text_encoder=encoder
                    )
                except ValueError as e:  # its token is already a word of the vocabulary
                    raise JobError(
                        ErrorCode.INVALID_INPUT,
                        f"embedding {spec.code!r} cannot be a prompt token: {e} (rename the file)",
                    ) from e
                loaded[name] += _tokens(spec.code, len(vectors[name]))
        yield
    finally:
        TextualInversionLoaderMixin._maybe_convert_prompt = diffusers_convert  # type: ignore[method-assign]
        for name in encoders:
            encoder, tokenizer = getattr(pipe, name), getattr(pipe, TOKENIZERS[name])
            if loaded[name]:
                pipe.unload_textual_inversion(
                    loaded[name], tokenizer=tokenizer, text_encoder=encoder
                )
            originals[name].restore(encoder)


# --- prompt tokens -------------------------------------------------------------------------------


def _maybe_convert_prompt(self: Any, prompt: str, tokenizer: Any) -> str:
    """diffusers' multi-vector expansion (`tok` -> `tok tok_1 tok_2`), case-insensitively.

    CLIP's tokenizer lower-cases the prompt, so a token registered as `EasyNegative` matches
    however it is written; diffusers then looks the lower-cased piece up and replaces it in the
    raw prompt case-sensitively, so an embedding whose code has capitals (most file names) would
    get only its first vector. A1111 matches embedding names case-insensitively too.
    """
    added = tokenizer.added_tokens_encoder
    by_lower = {token.lower(): token for token in added}
    for piece in set(tokenizer.tokenize(prompt)):
        token = by_lower.get(piece.lower())
        if token is None or f"{token}_1" not in added:
            continue
        count = 1
        while f"{token}_{count}" in added:
            count += 1
        replacement = " ".join(_tokens(token, count))
        prompt = re.sub(re.escape(token), _literal(replacement), prompt, flags=re.IGNORECASE)
    return prompt


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement that inserts text as it is (no backslash escapes)."""
    return lambda _match: text
