"""Prompt translation: language detection and a local translation model.

Stable Diffusion's text encoders understand English, so a generation job may ask for its prompts
to be translated first. The language is the client's word (prompt_language) or detected here;
detection must let English prompts through untouched, and SD prompts are hard on detectors: tag
lists ("logo design, vector, flat, minimal") are too short and too odd for n-gram statistics,
which happily call them Spanish with 99.99 % confidence. So langdetect only names a candidate
and the text has to confirm it:

- a prompt with letters of a non-Latin script (CJK, Cyrillic, Arabic...) is in a language of
  that script, never English (the language is langdetect's best guess among that script's
  languages, else the script's main one);
- a Latin-script prompt is English unless langdetect is confident in another language (more so
  for plain ASCII text than for text with accents) and the prompt uses more of that language's
  function words ("der", "une", "con"...) than English ones. Latin languages without a word list
  here are not detected: the client can still name them.

langdetect is pure Python and seeded here (its detector samples n-grams at random), so the same
text always gets the same answer; its profiles load once, under a lock, on first use.

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
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

from models.utility_models import (
    LAYOUTS,
    Utility,
    UtilityModel,
    install_hint,
    installed,
)
from pipelines.jobs import ErrorCode, GenerationJob, JobError, Translation
from pipelines.runners.common import Resources

ENGLISH = "en"
ANY_LANGUAGE = "mul"  # an opus-mt source "language" that stands for any

# --- detection ------------------------------------------------------------------------------------

MIN_LATIN_LETTERS = 6  # fewer letters than this: too short to tell, English
# langdetect's probability needed to call a Latin-script text non-English: plain ASCII text with
# a single function word of the language needs much (tag lists fool n-grams)...
ASCII_CONFIDENCE = 0.9
# ... text with non-ASCII letters (ä, é, ñ, ł...) or several different function words less.
EVIDENT_CONFIDENCE = 0.5
EVIDENT_WORDS = 2  # different function words of a language that are evidence enough
MIN_SCRIPT_LETTERS = 2  # letters of non-Latin scripts that make a prompt non-English
# langdetect's probability needed to prefer another language of a script over its main one
# (it tells Russian from Macedonian, or Hindi from Nepali, poorly on short texts).
SCRIPT_CONFIDENCE = 0.9
DETECTION_SEED = 0

# Function words (articles, prepositions, conjunctions) per Latin-script language: evidence that
# a prompt is written in it rather than made of English tags. Words that are also English, or
# common in English prompts ("a", "hat", "was", "art"), are left out.
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        ENGLISH: "a an the of with in on at and by from for to is are under over into near "
        "behind wearing holding his her their its this that these while",
        "de": "der die das den dem des ein eine einer einem einen und mit im auf unter ist von "
        "zu zum zur bei aus nach vor über für sehr sich nicht vom ins mein meine",
        "fr": "le la les un une des du de et avec dans sur sous qui au aux est pour par d l "
        "à ou ce cette sa ses en très",
        "es": "el la los las un una unos unas de del con en y por para que sobre bajo al es "
        "muy su sus entre",
        "it": "il lo la gli le un una uno di del della dei delle con nel nella sul sulla e "
        "che per da dal dalla alla al è molto tra",
        "pt": "o os as um uma de do da dos das com na nas em e que por para ao sobre muito é",
        "nl": "de het een met op van en is bij naar voor onder uit aan zijn die dat",
        "pl": "na w we z i ze do pod nad jest przy oraz się od po o",
        "sv": "en ett och med på av är från till det den som vid",
        "da": "en et og med på af er fra til det den som ved",
        "no": "en et og med på av er fra til det den som ved",
        "ro": "un o și cu pe în la de din sub este pentru",
        "tr": "bir ve ile bu şu çok için üzerinde altında",
        "cs": "a na v se s z je pod nad do pro",
        "id": "di dan yang dengan seekor sebuah ke dari pada atas",
        "vi": "một và với trên dưới của là những các",
        "ca": "el la els les un una de del amb en i per que sobre",
    }.items()
}

# Non-Latin scripts (the first word of a letter's Unicode name) -> the langdetect codes of the
# languages written in them, the script's main language first.
SCRIPT_LANGUAGES: dict[str, tuple[str, ...]] = {
    "CJK": ("zh-cn", "zh-tw", "ja"),  # Korean is told by its Hangul
    "HIRAGANA": ("ja",),
    "KATAKANA": ("ja",),
    "KATAKANA-HIRAGANA": ("ja",),
    "HANGUL": ("ko",),
    "CYRILLIC": ("ru", "uk", "bg", "mk"),
    "ARABIC": ("ar", "fa", "ur"),
    "HEBREW": ("he",),
    "GREEK": ("el",),
    "THAI": ("th",),
    "DEVANAGARI": ("hi", "mr", "ne"),
    "BENGALI": ("bn",),
    "TAMIL": ("ta",),
    "TELUGU": ("te",),
    "KANNADA": ("kn",),
    "MALAYALAM": ("ml",),
    "GUJARATI": ("gu",),
    "GURMUKHI": ("pa",),
    "GEORGIAN": ("ka",),
    "ARMENIAN": ("hy",),
    "ETHIOPIC": ("am",),
    "KHMER": ("km",),
    "LAO": ("lo",),
    "MYANMAR": ("my",),
    "SINHALA": ("si",),
}
# Scripts that decide the language whenever present (kana: Japanese also writes kanji).
DECISIVE_SCRIPTS = frozenset({"HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "HANGUL"})
LATIN = "LATIN"
WIDTH_PREFIXES = frozenset({"FULLWIDTH", "HALFWIDTH"})  # "FULLWIDTH LATIN CAPITAL LETTER A"

# Language codes as langdetect, clients and model folders write them -> ISO 639-1.
LANGUAGE_ALIASES: dict[str, str] = {
    "zh-cn": "zh",
    "zh-tw": "zh",
    "zh-hans": "zh",
    "zh-hant": "zh",
    "nb": "no",
    "iw": "he",
    "eng": "en",
    "deu": "de",
    "ger": "de",
    "fra": "fr",
    "fre": "fr",
    "spa": "es",
    "ita": "it",
    "por": "pt",
    "nld": "nl",
    "dut": "nl",
    "pol": "pl",
    "rus": "ru",
    "ukr": "uk",
    "zho": "zh",
    "chi": "zh",
    "cmn": "zh",
    "jpn": "ja",
    "kor": "ko",
    "ara": "ar",
    "tur": "tr",
    "swe": "sv",
    "dan": "da",
    "nor": "no",
    "ces": "cs",
    "cze": "cs",
    "ron": "ro",
    "rum": "ro",
    "ind": "id",
    "vie": "vi",
    "hin": "hi",
    "ell": "el",
    "gre": "el",
    "heb": "he",
}
WORD = re.compile(r"[^\W\d_]+")
MARKUP = re.compile(r"<[^>]*>")  # <lora:name:0.8>, <embedding>: names, not language

_lock = threading.Lock()
_factory: DetectorFactory | None = None


def detect_language(text: str) -> str:
    """The ISO 639-1 code of text's language; "en" when it is English or too short to tell."""
    text = MARKUP.sub(" ", text)
    script = _dominant_script(text)
    if script is not None:
        return _script_language(text, script)
    words = WORD.findall(text.lower())
    if sum(len(word) for word in words) < MIN_LATIN_LETTERS:
        return ENGLISH
    english = sum(word in FUNCTION_WORDS[ENGLISH] for word in words)
    for code, probability in _probabilities(text):
        language = normalise_language(code)
        markers = FUNCTION_WORDS.get(language)
        if language == ENGLISH or markers is None:
            continue
        found = [word for word in words if word in markers]
        if len(found) <= english:
            continue
        evident = not text.isascii() or len(set(found)) >= EVIDENT_WORDS
        if probability >= (EVIDENT_CONFIDENCE if evident else ASCII_CONFIDENCE):
            return language
    return ENGLISH


def normalise_language(code: str) -> str:
    """An ISO 639-1 code for a language code as clients, langdetect or model folders write it
    ("zh-CN", "zh_tw", "deu", "DE" -> "zh", "zh", "de", "de")."""
    code = code.strip().lower().replace("_", "-")
    if code in LANGUAGE_ALIASES:
        return LANGUAGE_ALIASES[code]
    primary = code.split("-", 1)[0]
    return LANGUAGE_ALIASES.get(primary, primary)


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


def _dominant_script(text: str) -> str | None:
    """The non-Latin script the text is written in, if it has letters of one (None: Latin or no
    letters)."""
    counts: dict[str, int] = {}
    for char in text:
        if char.isalpha():
            script = _script(char)
            if script in SCRIPT_LANGUAGES:
                counts[script] = counts.get(script, 0) + 1
    if sum(counts.values()) < MIN_SCRIPT_LETTERS:
        return None
    return max(counts, key=lambda script: (script in DECISIVE_SCRIPTS, counts[script]))


def _script(char: str) -> str:
    words = unicodedata.name(char, "").split()
    if len(words) > 1 and words[0] in WIDTH_PREFIXES:
        return words[1]
    return words[0] if words else ""


def _script_language(text: str, script: str) -> str:
    """The language of a text written (at least partly) in a non-Latin script: the script's
    main language unless langdetect is sure of another one written in it."""
    main, *others = SCRIPT_LANGUAGES[script]
    if others:
        for code, probability in _probabilities(text):
            if code in others and probability >= SCRIPT_CONFIDENCE:
                return normalise_language(code)
    return normalise_language(main)


def _probabilities(text: str) -> list[tuple[str, float]]:
    """langdetect's languages for text, most probable first (none when it finds no features)."""
    detector = _detectors().create()
    detector.append(text)
    try:
        return [(found.lang, found.prob) for found in detector.get_probabilities()]
    except LangDetectException:
        return []


def _detectors() -> DetectorFactory:
    """The process's langdetect factory, loaded on first use and seeded (deterministic answers).
    It is only read once loaded, and each detection gets its own Detector, so only the loading
    needs the lock; a private factory leaves langdetect's global one alone."""
    global _factory
    with _lock:
        if _factory is None:
            factory = DetectorFactory()
            factory.load_profile(PROFILES_DIRECTORY)
            factory.set_seed(DETECTION_SEED)
            _factory = factory
        return _factory


# --- models ---------------------------------------------------------------------------------------

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


def check_installed(models_dir: Path | None) -> None:
    """JobError MODEL_UNAVAILABLE naming what to install when no translation model is."""
    if not installed(models_dir, Utility.TRANSLATION):
        raise JobError(ErrorCode.MODEL_UNAVAILABLE, install_hint(models_dir, Utility.TRANSLATION))


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
    results = ["" for _ in texts]
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
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the translation model in {folder} could not be loaded ({error}); reinstall it",
        ) from error
    return LoadedTranslator(model.to(device).eval(), tokenizer)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's content; {} when it is missing or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
