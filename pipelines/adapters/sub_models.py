"""LoRAs, textual-inversion embeddings and hypernetworks applied to one job only.

Every SubModel entry is resolved in the catalogue and checked against the checkpoint's model
family before anything changes. Then LoRAs load through diffusers (one peft adapter each,
weighted together with set_adapters), embeddings register their code as a prompt token
(textual_inversion.py) and hypernetworks wrap the attention projections (hypernetwork.py). Parsed
files stay in the device's component cache, so a file is read once, not per job. On exit
everything is undone in reverse order - projections restored, tokens and embedding rows dropped,
LoRA layers removed - also when the job fails or is cancelled, so the next job sees the clean
base model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from models.cache import PipelineCache
from models.catalogue import Architecture, Catalogue, ModelKind, ModelSpec, UnknownModelError
from models.compat import expose_text_model
from models.submodels import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    file_key,
    read_hypernetwork,
    read_lora,
)
from pipelines.adapters import hypernetwork, textual_inversion
from pipelines.jobs import ErrorCode, GenerationJob, JobError, SubModel, SubModelKind
from pipelines.runners.common import Resources, RunContext

# What each kind of entry resolves to in the catalogue, and its name in messages.
CATALOGUE_KINDS: dict[SubModelKind, ModelKind] = {
    SubModelKind.LORA: ModelKind.LORA,
    SubModelKind.EMBEDDING: ModelKind.EMBEDDING,
    SubModelKind.HYPERNETWORK: ModelKind.HYPERNETWORK,
}
KIND_NAMES: dict[SubModelKind, str] = {
    SubModelKind.LORA: "LoRA",
    SubModelKind.EMBEDDING: "embedding",
    SubModelKind.HYPERNETWORK: "hypernetwork",
}
FOLDERS: dict[SubModelKind, str] = {
    SubModelKind.LORA: "loras/",
    SubModelKind.EMBEDDING: "embeddings/",
    SubModelKind.HYPERNETWORK: "hypernetworks/",
}


@dataclass(frozen=True)
class _Resolved:
    entry: SubModel
    spec: ModelSpec


@contextmanager
def applied(pipe: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> Iterator[None]:
    if not job.sub_models:
        yield
        return
    resources = _resources(ctx)
    checkpoint = resources.catalogue.resolve(job.model)
    resolved = [_resolve(entry, checkpoint, resources.catalogue) for entry in job.sub_models]
    of_kind = {kind: [r for r in resolved if r.entry.kind is kind] for kind in SubModelKind}
    hypernetworks = [
        (_hypernetwork(r.spec, resources.cache), r.entry.weight)
        for r in of_kind[SubModelKind.HYPERNETWORK]
    ]
    for loaded, _ in hypernetworks:
        hypernetwork.check_fits(pipe.unet, loaded, checkpoint.code)
    embeddings = [r.spec for r in of_kind[SubModelKind.EMBEDDING]]
    with ExitStack() as stack:
        stack.enter_context(_loras(pipe, of_kind[SubModelKind.LORA], checkpoint, resources.cache))
        stack.enter_context(
            textual_inversion.applied(pipe, embeddings, checkpoint.code, resources.cache)
        )
        stack.enter_context(hypernetwork.applied(pipe.unet, hypernetworks))
        yield


def _resources(ctx: RunContext) -> Resources:
    if ctx.resources is None:
        raise JobError(ErrorCode.INTERNAL, "sub-models need the worker's model catalogue")
    return ctx.resources


def _resolve(entry: SubModel, checkpoint: ModelSpec, catalogue: Catalogue) -> _Resolved:
    """The entry's model, refused when it was made for another family than the checkpoint
    (an unknown family - a file that does not say - is accepted for any)."""
    what = KIND_NAMES[entry.kind]
    try:
        spec = catalogue.resolve(entry.model, CATALOGUE_KINDS[entry.kind])
    except UnknownModelError:
        raise JobError(
            ErrorCode.UNKNOWN_MODEL,
            f"unknown {what} {entry.model!r}: install it in the models directory's "
            f"{FOLDERS[entry.kind]} folder",
        ) from None
    families = {spec.architecture, checkpoint.architecture}
    if len(families) > 1 and Architecture.UNKNOWN not in families:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"{what} {spec.code!r} is made for {spec.architecture.value} checkpoints, but the "
            f"checkpoint {checkpoint.code!r} is {checkpoint.architecture.value}",
        )
    return _Resolved(entry, spec)


def _hypernetwork(spec: ModelSpec, cache: PipelineCache) -> hypernetwork.Hypernetwork:
    device = torch.device(cache.device)
    return cache.component(
        file_key(spec), lambda: hypernetwork.build(spec, read_hypernetwork(spec), device)
    )


# --- LoRA ----------------------------------------------------------------------------------------


@contextmanager
def _loras(
    pipe: DiffusionPipeline,
    loras: Sequence[_Resolved],
    checkpoint: ModelSpec,
    cache: PipelineCache,
) -> Iterator[None]:
    """Each LoRA as its own adapter, all active at their weights; all removed on exit."""
    if not loras:
        yield
        return
    states = [cache.component(file_key(r.spec), partial(read_lora, r.spec)) for r in loras]
    names: list[str] = []
    try:
        with _text_model_alias_hidden(pipe):
            for i, (lora, state) in enumerate(zip(loras, states, strict=True)):
                names.append(f"easel-lora-{i}")
                _load_lora(pipe, state, names[-1], lora.spec, checkpoint)
        pipe.set_adapters(names, [lora.entry.weight for lora in loras])
        yield
    finally:
        if names:
            pipe.unload_lora_weights()


def _load_lora(
    pipe: DiffusionPipeline, state: dict, name: str, spec: ModelSpec, checkpoint: ModelSpec
) -> None:
    try:
        pipe.load_lora_weights(state, adapter_name=name)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # diffusers and peft say "does not fit" in many ways
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"LoRA {spec.code!r} does not fit the checkpoint {checkpoint.code!r}: "
            f"{type(e).__name__}: {e}",
        ) from e


@contextmanager
def _text_model_alias_hidden(pipe: DiffusionPipeline) -> Iterator[None]:
    """models.compat points `text_encoder.text_model` at the (transformers 5, flattened) encoder
    itself for diffusers' clip-skip code. diffusers' LoRA loader takes that attribute as the sign
    of a transformers 4 encoder and keeps the `text_model.` prefix of the LoRA's keys, which then
    match no module. The alias is hidden while LoRAs load."""
    hidden: list[Any] = []
    for name in (TEXT_ENCODER, TEXT_ENCODER_2):
        encoder = getattr(pipe, name, None)
        if encoder is not None and vars(encoder).get("text_model") is encoder:
            del vars(encoder)["text_model"]
            hidden.append(encoder)
    try:
        yield
    finally:
        for encoder in hidden:
            expose_text_model(encoder)
