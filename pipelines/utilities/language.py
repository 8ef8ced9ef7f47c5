"""Which language a prompt is written in, for prompt translation.

SD prompts are hard on language detectors: tag lists ("logo design, vector, flat, minimal") are
too short and too odd for n-gram statistics, which happily call them Spanish with 99.99 %
confidence. English prompts must pass through untouched, so langdetect only names candidates and
the text has to confirm them:

- a prompt with letters of a non-Latin script (CJK, Cyrillic, Arabic...) is in a language of
  that script, never English: the script's main language unless langdetect is sure of another
  one written in it (kana make it Japanese, Hangul Korean);
- a Latin-script prompt is English unless it uses more function words ("der", "une", "con"...)
  of another language than English ones and langdetect agrees on that language: confidently
  for plain ASCII text with a single such word, less so for text with accents or several such
  words. Latin languages without a word list here are not detected: clients can still name
  them.

langdetect is pure Python and seeded here (its detector samples n-grams at random), so the same
text always gets the same answer; its profiles load once, under a lock, on first use.
"""

from __future__ import annotations

import re
import threading
import unicodedata

from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

ENGLISH = "en"

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
