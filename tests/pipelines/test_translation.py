"""Prompt translation: language detection on real-looking prompts, and translation through real
M2M100 and Marian folders loaded by easel's loader.

Parity: translate() gives what a direct transformers generate + decode gives on a model loaded
from the same folder with the module's settings.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from models.cache import PipelineCache
from models.catalogue import Catalogue
from models.utility_models import Utility
from pipelines.jobs import ErrorCode, GenerationJob, JobError, JobKind, Translation
from pipelines.runners.common import Resources
from pipelines.utilities import language, translation
from tests.models.tiny_text_models import save_tiny_m2m100, save_tiny_marian

ENGLISH_PROMPTS = (
    "a cat, masterpiece, best quality, 8k",
    "portrait of a woman, bokeh",
    "1girl, solo, long hair, blush, smile, looking at viewer",
    "a beautiful landscape with mountains and a lake at sunset, trending on artstation",
    "masterpiece, best quality, ultra detailed, illustration",
    "cute corgi puppy",
    "dog",
    "sakura trees, japanese temple, ukiyo-e",  # langdetect: Estonian, 99.99 %
    "logo design, vector, flat, minimal",  # langdetect: Spanish, 99.99 %
    "pixel art, 16-bit, retro game sprite",
    "epic fantasy castle on a cliff, volumetric fog, unreal engine 5",
    "a sad clown, baroque painting, chiaroscuro",
    "a cat, masterpiece, best quality, 8k, (sharp focus:1.2), <lora:detail_tweaker:0.8>",
    "pokémon, pikachu, cute, chibi",
    "café racer motorcycle, studio photo",
    "Motörhead album cover, heavy metal",
    "a girl in a kimono, el greco style",
    "de chirico metaphysical painting, piazza",
    "a cat in the style of le corbusier",
    "no humans, scenery, mountain, river, clouds",
    "(masterpiece:1.2), (best quality), [blurry], 1boy, armor, sword",
    "portrait of a beautiful elf princess, intricate, elegant, highly detailed, digital "
    "painting, artstation, concept art, smooth, sharp focus, art by artgerm and alphonse mucha",
    "studio ghibli landscape, rolling hills, windmill",
    "art nouveau poster of a woman, alphonse mucha",
    "",
    "8k, 4k, uhd",
)
OTHER_PROMPTS = (
    ("de", "eine Katze auf dem Dach, Meisterwerk, beste Qualität"),
    ("de", "ein Hund spielt im Park mit einem Ball"),
    ("de", "ein Hund mit einem Ball, masterpiece, best quality, highly detailed"),
    ("de", "ein Schloss im Nebel bei Sonnenaufgang"),
    ("fr", "une femme qui marche sous la pluie la nuit"),
    ("fr", "portrait d'une jeune femme aux cheveux roux, peinture à l'huile"),
    ("fr", "un château dans la brume au lever du soleil"),
    ("es", "un gato en el tejado, obra maestra, mejor calidad"),
    ("es", "una mujer caminando bajo la lluvia por la noche"),
    ("es", "un dragón sobre las montañas, arte de fantasía"),
    ("it", "un gatto sul tetto, capolavoro, migliore qualità"),
    ("pt", "um gato no telhado, obra-prima, melhor qualidade"),
    ("nl", "een kat op het dak, meesterwerk"),
    ("pl", "zamek we mgle o wschodzie słońca"),
    ("zh", "一只猫坐在屋顶上，杰作，最好的质量"),
    ("zh", "一个女孩在海边, masterpiece, best quality"),
    ("zh", "masterpiece, best quality, 1girl, 猫耳"),
    ("ja", "屋根の上の猫、傑作、最高品質"),
    ("ja", "海辺の少女"),
    ("ja", "桜の木の下の着物を着た女の子"),
    ("ru", "кошка на крыше, шедевр, лучшее качество"),
    ("ru", "кошка, masterpiece, best quality"),
    ("ru", "дракон над горами, фэнтези арт, высокая детализация"),
    ("uk", "кіт на даху, шедевр, найкраща якість"),
    ("ko", "고양이가 지붕 위에 앉아 있다"),
    ("ar", "قطة على السطح"),
    ("el", "μια γάτα στη στέγη"),
    ("hi", "छत पर एक बिल्ली"),
)
# Marian's tokenizer asks for sacremoses (punctuation normalising), which easel does without.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses"),
    pytest.mark.usefixtures("single_torch_thread"),
]

GERMAN = ("eine Katze auf dem Dach, Meisterwerk", "ein Hund im Park, Ölgemälde")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """M2M100 for any pair, a Marian for German only."""
    root = tmp_path_factory.mktemp("models")
    save_tiny_m2m100(root / "translation" / "m2m100_418M")
    save_tiny_marian(root / "translation" / "opus-mt-de-en", "de", "en")
    return root


def resources_for(models_dir: Path | None) -> Resources:
    return Resources(Catalogue([]), PipelineCache("cpu", torch.float32), models_dir)


@pytest.fixture(scope="module")
def resources(models_dir: Path) -> Resources:
    return resources_for(models_dir)


def job(prompt: str, negative: str = "", **fields: Any) -> GenerationJob:
    return GenerationJob(
        kind=JobKind.TXT2IMG,
        model="",
        prompt=prompt,
        negative_prompt=negative,
        width=64,
        height=64,
        steps=2,
        guidance_scale=7.0,
        seeds=(1,),
        **{"translate_prompts": True, **fields},
    )


def direct_translation(
    folder: Path, texts: list[str], source: str, target: str, *, m2m100: bool
) -> list[str]:
    """Translation as a user of transformers would write it."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    arguments: dict[str, Any] = {}
    if m2m100:
        tokenizer.src_lang = source
        arguments["forced_bos_token_id"] = tokenizer.get_lang_id(target)
    inputs = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            **arguments,
            num_beams=translation.NUM_BEAMS,
            do_sample=False,
            max_new_tokens=translation.max_new_tokens(inputs["input_ids"].shape[1], 128),
        )
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


# --- detection ------------------------------------------------------------------------------------


def test_english_prompts_stay_english() -> None:
    wrong = {p: translation.detect_language(p) for p in ENGLISH_PROMPTS}
    assert {p: lang for p, lang in wrong.items() if lang != "en"} == {}


def test_other_languages_are_detected() -> None:
    found = {prompt: translation.detect_language(prompt) for _, prompt in OTHER_PROMPTS}
    assert found == {prompt: language for language, prompt in OTHER_PROMPTS}


def test_detection_is_deterministic_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [*ENGLISH_PROMPTS, *(prompt for _, prompt in OTHER_PROMPTS)]
    serial = [translation.detect_language(p) for p in prompts]
    monkeypatch.setattr(language, "_factory", None)  # threads race to load the profiles
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(translation.detect_language, prompts)) == serial


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("de", "de"),
        ("DE", "de"),
        ("zh-CN", "zh"),
        ("zh_tw", "zh"),
        ("pt-BR", "pt"),
        ("deu", "de"),
        ("eng", "en"),
        ("nb", "no"),
        ("en-US", "en"),
    ],
)
def test_normalise_language(code: str, expected: str) -> None:
    assert language.normalise_language(code) == expected


@pytest.mark.parametrize(
    ("generation_job", "expected"),
    [
        (job(GERMAN[0], translate_prompts=False), None),
        (job(GERMAN[0]), "de"),
        (job("a cat, masterpiece, best quality"), None),
        (job("a cat, masterpiece", prompt_language="fr"), "fr"),  # the client's word wins
        (job(GERMAN[0], prompt_language="EN"), None),
        (job("一只猫", prompt_language="zh-CN"), "zh"),
        (job(""), None),
    ],
)
def test_source_language(generation_job: GenerationJob, expected: str | None) -> None:
    assert translation.source_language(generation_job) == expected


# --- translation ----------------------------------------------------------------------------------


def test_m2m100_translation_matches_a_direct_generate(tmp_path: Path) -> None:
    folder = save_tiny_m2m100(tmp_path / "translation" / "m2m100_418M")
    texts = ["un chat sur le toit, chef-d'oeuvre", "une femme sous la pluie", *GERMAN]
    with torch.inference_mode():
        got = translation.translate(texts, "fr", "en", resources_for(tmp_path))
        german = translation.translate(texts, "de", "en", resources_for(tmp_path))
    assert got == direct_translation(folder, texts, "fr", "en", m2m100=True)
    assert any(got)
    assert german != got  # the source language token is set


def test_m2m100_language_tokens_never_reach_the_prompt(tmp_path: Path) -> None:
    """Folders whose tokenizer_config.json does not list the language tokens decode them as
    text ("__en__ ..."): the translator drops them, with the same result otherwise."""
    listed = tmp_path / "listed"
    save_tiny_m2m100(listed / "translation" / "m2m100")
    save_tiny_m2m100(tmp_path / "unlisted" / "translation" / "m2m100", list_language_tokens=False)
    with torch.inference_mode():
        got = translation.translate(GERMAN, "de", "en", resources_for(tmp_path / "unlisted"))
        expected = translation.translate(GERMAN, "de", "en", resources_for(listed))
    assert got == expected
    assert not any("__" in text for text in got)


def test_marian_pair_wins_for_its_languages(models_dir: Path, resources: Resources) -> None:
    with torch.inference_mode():
        german = translation.translate(GERMAN, "de", "en", resources)
        french = translation.translate(GERMAN, "fr", "en", resources)
    folder = models_dir / "translation"
    assert german == direct_translation(
        folder / "opus-mt-de-en", list(GERMAN), "de", "en", m2m100=False
    )
    assert french == direct_translation(
        folder / "m2m100_418M", list(GERMAN), "fr", "en", m2m100=True
    )
    assert german != french


def test_marian_any_source(tmp_path: Path) -> None:
    save_tiny_marian(tmp_path / "translation" / "opus-mt-mul-en", "mul", "en")
    resources = resources_for(tmp_path)
    assert translation.translator_for(tmp_path, "ja", "en").model.name == "opus-mt-mul-en"
    with torch.inference_mode():
        assert all(translation.translate(["屋根の上の猫"], "ja", "en", resources))
    with pytest.raises(JobError) as caught:
        translation.translate(["a cat"], "en", "de", resources)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "opus-mt-en-de" in caught.value.message and "m2m100" in caught.value.message
    assert str(tmp_path / "translation") in caught.value.message


def test_marian_pair_from_the_folder_name(tmp_path: Path) -> None:
    folder = save_tiny_marian(tmp_path / "translation" / "opus-mt-fr-en", "fr", "en")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    del config["source_lang"], config["target_lang"]
    config_file.write_text(json.dumps(config))
    assert translation.translator_for(tmp_path, "fr", "en").model.path == folder
    with pytest.raises(JobError):
        translation.translator_for(tmp_path, "de", "en")


def test_empty_texts_stay_empty(resources: Resources) -> None:
    with torch.inference_mode():
        got = translation.translate(["", GERMAN[0], "  "], "de", "en", resources)
        alone = translation.translate([GERMAN[0]], "de", "en", resources)
    assert got == ["", alone[0], ""]


# --- jobs -----------------------------------------------------------------------------------------


class CountingGenerate:
    """Wraps a loaded model's generate to count the batched calls."""

    def __init__(self, model: Any) -> None:
        self.model, self.generate = model, model.generate
        self.batches: list[int] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.batches.append(kwargs["input_ids"].shape[0])
        return self.generate(**kwargs)


def test_to_english_translates_and_reports(models_dir: Path) -> None:
    resources = resources_for(models_dir)
    jobs = [
        job(GERMAN[0], "hässlich, verschwommen"),
        job("a cat, masterpiece, best quality", "blurry"),
        job(GERMAN[1]),
        job("une femme sous la pluie, chef-d'oeuvre", prompt_language="fr"),
        job(GERMAN[0], translate_prompts=False),
    ]
    with torch.inference_mode():
        expected_german = translation.translate(
            [GERMAN[0], GERMAN[1], "hässlich, verschwommen", ""], "de", "en", resources
        )
        expected_french = translation.translate([jobs[3].prompt], "fr", "en", resources)
        counters = []
        for name in ("opus-mt-de-en", "m2m100_418M"):
            key = (Utility.TRANSLATION.value, str(models_dir / "translation" / name))
            loaded = resources.cache.component(key, lambda: pytest.fail("not loaded yet"))
            counter = CountingGenerate(loaded.model)
            loaded.model.generate = counter
            counters.append(counter)
        results = translation.to_english(jobs, resources)

    assert sorted(batch for c in counters for batch in c.batches) == [1, 3]  # one per language
    (german, german_t), (english, english_t), (german2, german2_t) = results[:3]
    (french, french_t), (untouched, untouched_t) = results[3:]
    assert german_t == Translation("de", expected_german[0], expected_german[2])
    assert german == replace(
        jobs[0],
        prompt=expected_german[0],
        negative_prompt=expected_german[2],
        translate_prompts=False,
    )
    assert german2_t == Translation("de", expected_german[1], "")
    assert german2.prompt == expected_german[1] and german2.negative_prompt == ""
    assert french_t == Translation("fr", expected_french[0], "")
    assert french.prompt == expected_french[0] and not french.translate_prompts
    assert (english, english_t) == (jobs[1], None)
    assert (untouched, untouched_t) == (jobs[4], None)


def test_english_jobs_need_no_model(tmp_path: Path) -> None:
    jobs = [job("portrait of a woman, bokeh"), job(GERMAN[0], translate_prompts=False)]
    assert translation.to_english(jobs, resources_for(tmp_path)) == [(j, None) for j in jobs]
    assert translation.to_english(jobs, resources_for(None)) == [(j, None) for j in jobs]


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(JobError) as caught:
        translation.check_installed(tmp_path)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "m2m100_418M" in caught.value.message
    assert str(tmp_path / "translation") in caught.value.message
    with pytest.raises(JobError) as caught:
        translation.to_english([job(GERMAN[0])], resources_for(tmp_path))
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_check_installed_accepts_an_installed_model(models_dir: Path) -> None:
    translation.check_installed(models_dir)
