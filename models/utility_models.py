"""Where the utility models live (background removal, captions, upscalers...), and which is which.

Each utility has a sub-folder of the models directory. An installed model is either a folder
(a Hugging Face snapshot: config.json plus weights, as `huggingface-cli download` leaves it) or a
single weights file (upscalers: ESRGAN-class .safetensors / .pth). Its name is the folder or file
name; a request may name one, else the utility's default is used: the one named "default" if
any, otherwise the first by name. Nothing is downloaded: a missing model is a clear error that
says what to put where. Only names and files are read here; the loaders live in
pipelines/utilities/.

Demo models: while a server has no real checkpoint, the catalogue builder (models/registry.py)
names the demo set's folder for its models directory (use_demo_models), and a utility with no
installed model uses the demo one (random: it answers noise). A real model of the utility replaces
it; with a real checkpoint installed no demo utility is used, so that a server in production never
passes images through a random NSFW check or prompts through a random translator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path


class Utility(StrEnum):
    BACKGROUND_REMOVAL = "background_removal"
    CAPTION = "caption"
    PROMPT_ENHANCE = "prompt_enhance"
    UPSCALE = "upscale"
    TRANSLATION = "translation"
    SAFETY_CHECKER = "safety_checker"


@dataclass(frozen=True)
class UtilityLayout:
    """Where one utility's models are and what an installed one looks like."""

    folders: tuple[str, ...]  # sub-folders of the models directory (the first is the one to use)
    folder_marker: str | None  # a model folder holds this file; None: folders are not models
    file_suffixes: tuple[str, ...]  # single-file models; empty: files are not models
    example: str  # what to install, for the missing-model error


LAYOUTS: dict[Utility, UtilityLayout] = {
    Utility.BACKGROUND_REMOVAL: UtilityLayout(
        folders=("background-removal", "rembg", "rmbg"),
        folder_marker="config.json",
        file_suffixes=(),
        example="the briaai/RMBG-1.4 (or RMBG-2.0 / BiRefNet) repository folder, with its "
        "config.json, Python files and model.safetensors",
    ),
    Utility.CAPTION: UtilityLayout(
        folders=("caption", "captioning", "blip"),
        folder_marker="config.json",
        file_suffixes=(),
        example="a BLIP captioning repository folder such as "
        "Salesforce/blip-image-captioning-base (config.json, tokenizer and processor files, "
        "model.safetensors)",
    ),
    Utility.PROMPT_ENHANCE: UtilityLayout(
        folders=("prompt-enhance", "prompt_enhance", "prompt-enhancer"),
        folder_marker="config.json",
        file_suffixes=(),
        example="a small causal language model folder such as "
        "Gustavosta/MagicPrompt-Stable-Diffusion (config.json, tokenizer files, weights)",
    ),
    Utility.UPSCALE: UtilityLayout(
        folders=("upscale_models", "upscalers", "esrgan", "realesrgan"),
        folder_marker=None,
        file_suffixes=(".safetensors", ".pth", ".pt"),
        example="an ESRGAN-class upscaler file such as RealESRGAN_x4plus.pth or "
        "4x-UltraSharp.safetensors",
    ),
    Utility.TRANSLATION: UtilityLayout(
        folders=("translation", "translators"),
        folder_marker="config.json",
        file_suffixes=(),
        example="a translation model folder such as facebook/m2m100_418M (any language) or "
        "Helsinki-NLP/opus-mt-mul-en (config.json, tokenizer files, weights)",
    ),
    Utility.SAFETY_CHECKER: UtilityLayout(
        folders=("safety-checker", "safety_checker"),
        folder_marker="config.json",
        file_suffixes=(),
        example="the CompVis/stable-diffusion-safety-checker folder (config.json, "
        "preprocessor_config.json, model.safetensors)",
    ),
}
DEFAULT_NAME = "default"

# models directory (resolved) -> the folder laid out like one that holds the demo utility models.
# Set when the catalogue is built (use_demo_models), read by every lookup of that directory.
_DEMO_DIRS: dict[Path, Path] = {}


@dataclass(frozen=True)
class UtilityModel:
    utility: Utility
    name: str  # the folder or file name: what a request names it by
    path: Path
    is_demo: bool = False  # one of the demo set's random models


def use_demo_models(models_dir: Path, demo_dir: Path | None) -> None:
    """Lookups in models_dir fall back to the demo models under demo_dir (laid out like a models
    directory); None: no fallback."""
    key = models_dir.resolve()
    if demo_dir is None:
        _DEMO_DIRS.pop(key, None)
    else:
        _DEMO_DIRS[key] = demo_dir


class UtilityModelMissing(LookupError):
    """The utility has no installed model (or none by the name asked); the message says what to
    install where."""


def installed(models_dir: Path | None, utility: Utility) -> list[UtilityModel]:
    """The utility's installed models, by name (folders that resolve outside the models
    directory are ignored); none installed: the demo model, if models_dir has the fallback."""
    if models_dir is None:
        return []
    found = _installed_in(models_dir, utility)
    demo_dir = _DEMO_DIRS.get(models_dir.resolve()) if not found else None
    if demo_dir is not None:
        found = [replace(m, is_demo=True) for m in _installed_in(demo_dir, utility)]
    return found


def _installed_in(models_dir: Path, utility: Utility) -> list[UtilityModel]:
    if not models_dir.is_dir():
        return []
    layout = LAYOUTS[utility]
    root = models_dir.resolve()
    found: dict[str, UtilityModel] = {}
    for folder in _folders(models_dir, layout):
        for entry in sorted(folder.iterdir()):
            resolved = entry.resolve()
            if not resolved.is_relative_to(root):
                continue
            if _is_model(entry, layout) and entry.name not in found:
                found[entry.name] = UtilityModel(utility, entry.name, entry)
    return [found[name] for name in sorted(found, key=str.lower)]


def find(models_dir: Path | None, utility: Utility, name: str | None = None) -> UtilityModel:
    """The model to run: the one named (case-insensitive), else the default; raises
    UtilityModelMissing with the install hint."""
    models = installed(models_dir, utility)
    if not models:
        raise UtilityModelMissing(install_hint(models_dir, utility))
    if name is None:
        by_name = {m.name.lower(): m for m in models}
        return by_name.get(DEFAULT_NAME, models[0])
    for model in models:
        if model.name.lower() == name.lower() or _stem(model).lower() == name.lower():
            return model
    names = ", ".join(m.name for m in models)
    if all(m.is_demo for m in models):  # nothing installed: say where to install it
        raise UtilityModelMissing(
            f"no {utility.value.replace('_', ' ')} model named {name!r} is installed: put "
            f"{LAYOUTS[utility].example} into {_where(models_dir, utility)} (the demo set "
            f"has only {names})"
        )
    raise UtilityModelMissing(
        f"no {utility.value.replace('_', ' ')} model named {name!r} is installed "
        f"(installed: {names})"
    )


def install_hint(models_dir: Path | None, utility: Utility) -> str:
    return (
        f"no {utility.value.replace('_', ' ')} model is installed: put "
        f"{LAYOUTS[utility].example} into {_where(models_dir, utility)}"
    )


def _where(models_dir: Path | None, utility: Utility) -> str:
    folder = LAYOUTS[utility].folders[0]
    return f"{models_dir / folder}/" if models_dir else f"<models_dir>/{folder}/"


def _folders(models_dir: Path, layout: UtilityLayout) -> list[Path]:
    """The utility's sub-folders present, matched case-insensitively."""
    wanted = {name.lower() for name in layout.folders}
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and p.name.lower() in wanted)


def _is_model(entry: Path, layout: UtilityLayout) -> bool:
    if entry.is_dir():
        return layout.folder_marker is not None and (entry / layout.folder_marker).is_file()
    return entry.is_file() and entry.suffix.lower() in layout.file_suffixes


def _stem(model: UtilityModel) -> str:
    return model.path.stem if model.path.is_file() else model.name
