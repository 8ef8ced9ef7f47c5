"""Prompt translation: a local translation model turns prompts into English.

Stable Diffusion's text encoders understand English, so a generation job may ask for its prompts
to be translated first. The language is the client's word (prompt_language) or detected
(pipelines.utilities.language).

Translation models are Hugging Face folders under models_dir/translation/: M2M100 (one model,
100 languages each way; the target language is forced as the first generated token) and Marian
(Helsinki-NLP opus-mt-<source>-<target>: one pair; a "mul" source reads any language). For a pair
the model that covers it most specifically wins: a Marian of exactly that pair, then M2M100, then
a Marian of any source language. Texts of one language go through one batched, deterministic
beam search.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.utility_models import (
    LAYOUTS,
    Utility,
    UtilityModel,
    installed,
)
from pipelines.jobs import ErrorCode, GenerationJob, JobError, Translation
from pipelines.runners.common import Resources
from pipelines.utilities.installed import installed_model, load_text_model
from pipelines.utilities.language import ENGLISH, detect_language, normalise_language

ANY_LANGUAGE = "mul"  # an opus-mt source "language" that stands for any

NUM_BEAMS = 4  # beam search: deterministic, and better than greedy for short texts
MIN_NEW_TOKENS = 16  # the output budget: MIN + OUTPUT_RATIO x the longest input, in tokens
OUTPUT_RATIO = 2
CONFIG = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
OPUS_MT_NAME = re.compile(r"opus-mt-(?:tc-big-|tc-)?(?P<source>[a-z_]+)-(?P<target>[a-z_]+)$")


@dataclass(frozen=True)
class Coverage:
    """The language pairs a model translates."""

    sources: frozenset[str] | None  # None: any language
    targets: frozenset[str]

    def covers(self, source: str, target: str) -> bool:
        return (self.sources is None or source in self.sources) and target in self.targets


@dataclass(frozen=True)
class TranslationFamily:
    """How a kind of translation model (a config.json model_type) is read and driven."""

    rank: int  # preference between models covering a pair as specifically: lower first
    # The pairs a model folder translates, from its files alone; None: a folder this family's
    # code cannot drive (another tokenizer).
    coverage: Callable[[Path], Coverage | None]
    # Sets the loaded tokenizer up for a pair; the extra model.generate arguments it needs.
    prepare: Callable[[Any, str, str], dict[str, Any]]
    # Output token ids decode must drop (language tokens some tokenizers decode as text).
    drop_ids: Callable[[Any], frozenset[int]]


def _m2m100_coverage(folder: Path) -> Coverage | None:
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    config = _read_json(folder / TOKENIZER_CONFIG)
    if config.get("tokenizer_class", "M2M100Tokenizer") != "M2M100Tokenizer":
        return None  # NLLB shares the model type, with other tokenizer and language codes
    codes = FAIRSEQ_LANGUAGE_CODES.get(config.get("language_codes", "m2m100"))
    if codes is None:
        return None
    languages = frozenset(codes)
    return Coverage(sources=languages, targets=languages)


def _m2m100_prepare(tokenizer: Any, source: str, target: str) -> dict[str, Any]:
    tokenizer.src_lang = source
    return {"forced_bos_token_id": tokenizer.get_lang_id(target)}


def _m2m100_drop_ids(tokenizer: Any) -> frozenset[int]:
    return frozenset(tokenizer.lang_code_to_id.values())


def _marian_coverage(folder: Path) -> Coverage | None:
    """The pair from tokenizer_config.json (source_lang / target_lang), else from the
    opus-mt-<source>-<target> folder name."""
    config = _read_json(folder / TOKENIZER_CONFIG)
    source, target = config.get("source_lang"), config.get("target_lang")
    if not (isinstance(source, str) and isinstance(target, str)):
        match = OPUS_MT_NAME.search(folder.name.lower())
        if match is None:
            return None
        source, target = match["source"], match["target"]
    if source.lower() == ANY_LANGUAGE:
        return Coverage(sources=None, targets=frozenset({normalise_language(target)}))
    return Coverage(
        sources=frozenset({normalise_language(source)}),
        targets=frozenset({normalise_language(target)}),
    )


def _no_arguments(_tokenizer: Any, _source: str, _target: str) -> dict[str, Any]:
    return {}


def _no_ids(_tokenizer: Any) -> frozenset[int]:
    return frozenset()


FAMILIES: dict[str, TranslationFamily] = {
    "marian": TranslationFamily(
        rank=0, coverage=_marian_coverage, prepare=_no_arguments, drop_ids=_no_ids
    ),
    "m2m_100": TranslationFamily(
        rank=1, coverage=_m2m100_coverage, prepare=_m2m100_prepare, drop_ids=_m2m100_drop_ids
    ),
}


@dataclass(frozen=True)
class Translator:
    """An installed translation model that covers a pair, not loaded yet."""

    model: UtilityModel
    family: TranslationFamily
    coverage: Coverage


@dataclass(frozen=True)
class LoadedTranslator:
    model: Any  # a transformers seq2seq model on the cache's device
    tokenizer: Any


def source_language(job: GenerationJob) -> str | None:
    """The language to translate the job's prompts from; None when nothing needs translating
    (translate_prompts off, or the prompt is English)."""
    if not job.translate_prompts:
        return None
    if job.prompt_language:
        language = normalise_language(job.prompt_language)
    else:
        language = detect_language(job.prompt)
    return None if language == ENGLISH else language


def check_installed(models_dir: Path | None) -> None:
    """JobError MODEL_UNAVAILABLE naming what to install when no translation model is."""
    installed_model(models_dir, Utility.TRANSLATION)


def translator_for(models_dir: Path | None, source: str, target: str) -> Translator:
    """The installed model to translate source into target with; JobError MODEL_UNAVAILABLE
    naming what to install when none covers the pair."""
    check_installed(models_dir)
    candidates: list[Translator] = []
    for model in installed(models_dir, Utility.TRANSLATION):
        family = FAMILIES.get(str(_read_json(model.path / CONFIG).get("model_type", "")))
        coverage = family.coverage(model.path) if family is not None else None
        if family is not None and coverage is not None and coverage.covers(source, target):
            candidates.append(Translator(model, family, coverage))
    if not candidates:
        folder = models_dir / LAYOUTS[Utility.TRANSLATION].folders[0] if models_dir else None
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"no installed translation model translates {source!r} into {target!r}: put "
            f"facebook/m2m100_418M (any language) or Helsinki-NLP/opus-mt-{source}-{target} "
            f"into {folder or '<models_dir>/translation'}/",
        )
    return min(
        candidates,
        key=lambda t: (t.coverage.sources is None, t.family.rank, t.model.name.lower()),
    )


def max_new_tokens(input_tokens: int, positions: int | None) -> int:
    """The output budget for inputs of input_tokens tokens (the longest of a batch), within the
    model's positions (its max_position_embeddings; None: unbounded)."""
    budget = MIN_NEW_TOKENS + OUTPUT_RATIO * input_tokens
    return budget if positions is None else min(budget, positions)


def translate(texts: Sequence[str], source: str, target: str, resources: Resources) -> list[str]:
    """texts (all in `source`) in `target`, in one batched call of the installed model; empty
    texts stay empty."""
    source, target = normalise_language(source), normalise_language(target)
    todo = [i for i, text in enumerate(texts) if text.strip()]
    if not todo or source == target:
        return [text.strip() for text in texts]
    translator = translator_for(resources.models_dir, source, target)
    cache = resources.cache
    loaded = cache.component(
        (Utility.TRANSLATION.value, str(translator.model.path)),
        lambda: _load(translator.model.path, cache.device, cache.dtype),
    )
    arguments = translator.family.prepare(loaded.tokenizer, source, target)
    inputs = loaded.tokenizer(
        [texts[i].strip() for i in todo], return_tensors="pt", padding=True, truncation=True
    ).to(cache.device)
    output = loaded.model.generate(
        **inputs,
        **arguments,
        num_beams=NUM_BEAMS,
        do_sample=False,
        max_new_tokens=max_new_tokens(
            inputs["input_ids"].shape[1],
            getattr(loaded.model.config, "max_position_embeddings", None),
        ),
    )
    drop = translator.family.drop_ids(loaded.tokenizer)
    sequences = [[int(i) for i in row if int(i) not in drop] for row in output]
    decoded = loaded.tokenizer.batch_decode(sequences, skip_special_tokens=True)
    results = ["" for _ in texts]
    for i, text in zip(todo, decoded, strict=True):
        results[i] = text.strip()
    return results


def to_english(
    jobs: Sequence[GenerationJob], resources: Resources
) -> list[tuple[GenerationJob, Translation | None]]:
    """Each job with its prompts in English (translate_prompts jobs whose prompt is not), and
    what was translated; jobs that need nothing come back unchanged with None. The prompts of
    all jobs in one language go through the model together."""
    results: list[tuple[GenerationJob, Translation | None]] = [(job, None) for job in jobs]
    by_language: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        language = source_language(job)
        if language is not None:
            by_language.setdefault(language, []).append(i)
    for language, indices in by_language.items():
        texts = [jobs[i].prompt for i in indices] + [jobs[i].negative_prompt for i in indices]
        translated = translate(texts, language, ENGLISH, resources)
        prompts, negatives = translated[: len(indices)], translated[len(indices) :]
        for i, prompt, negative in zip(indices, prompts, negatives, strict=True):
            job = replace(jobs[i], prompt=prompt, negative_prompt=negative, translate_prompts=False)
            results[i] = (job, Translation(language, prompt, negative))
    return results


def _load(folder: Path, device: str, dtype: Any) -> LoadedTranslator:
    from transformers import AutoModelForSeq2SeqLM

    model, tokenizer = load_text_model(
        folder, AutoModelForSeq2SeqLM, "translation model", device, dtype
    )
    return LoadedTranslator(model, tokenizer)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's content; {} when it is missing or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
