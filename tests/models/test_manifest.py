"""manifest.toml: parsing, applying to scanned specs, and the errors that stop the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.catalogue import Architecture, Catalogue, InferenceDefaults, ModelKind
from models.manifest import (
    Manifest,
    ManifestError,
    apply_manifest,
    load_manifest,
)
from models.scan import scan_models_dir
from tests.models import tiny
from tests.models.tiny import write_fake_safetensors

GOOD = """
default = "dreamshaper_8"

[aliases]
"PICPIK Anime" = "anything_v5"
"runware:100@1" = "dreamshaper_8"

[models."checkpoints/dreamshaper_8.safetensors"]
code = "dreamshaper_8"
name = "DreamShaper 8"
architecture = "sd1"
inpainting = false
config = "configs/my-arch"
trigger_words = ["dsw"]
description = "General purpose."

[models."checkpoints/dreamshaper_8.safetensors".defaults]
steps = 25
guidance_scale = 7
sampler = "DPM++ 2M Karras"
clip_skip = 2

[models."checkpoints/anime/anything-v5-PrtRE.safetensors"]
code = "anything_v5"

[models."checkpoints/legacy.ckpt"]
architecture = "sdxl"

[models."loras/add_detail.safetensors"]
trigger_words = ["detailed", "intricate"]
"""


@pytest.fixture()
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_fake_safetensors(root / "checkpoints/dreamshaper_8.safetensors", tiny.SD1_CHECKPOINT)
    write_fake_safetensors(
        root / "checkpoints/anime/anything-v5-PrtRE.safetensors", tiny.SD1_CHECKPOINT
    )
    write_fake_safetensors(root / "loras/add_detail.safetensors", tiny.SD1_LORA)
    (root / "checkpoints/legacy.ckpt").write_bytes(b"pickle")
    (root / "configs/my-arch").mkdir(parents=True)
    return root


def write(models_dir: Path, text: str) -> Path:
    path = models_dir / "manifest.toml"
    path.write_text(text)
    return path


def test_no_manifest_is_an_empty_one(models_dir: Path) -> None:
    manifest = load_manifest(models_dir)
    assert manifest == Manifest(models_dir)
    specs = scan_models_dir(models_dir).specs
    assert apply_manifest(specs, manifest) == specs


def test_good_manifest_parses(models_dir: Path) -> None:
    write(models_dir, GOOD)
    manifest = load_manifest(models_dir)
    assert manifest.default == "dreamshaper_8"
    assert manifest.aliases == {"PICPIK Anime": "anything_v5", "runware:100@1": "dreamshaper_8"}
    entry = manifest.entries["checkpoints/dreamshaper_8.safetensors"]
    assert entry.code == "dreamshaper_8"
    assert entry.architecture is Architecture.SD1
    assert entry.inpainting is False
    assert entry.config_dir == models_dir / "configs/my-arch"
    assert entry.trigger_words == ("dsw",)
    assert entry.defaults == InferenceDefaults(
        steps=25, guidance_scale=7.0, sampler="DPM++ 2M Karras", clip_skip=2
    )
    assert isinstance(entry.defaults.guidance_scale, float)


def test_manifest_applies_to_scanned_specs(models_dir: Path) -> None:
    write(models_dir, GOOD)
    manifest = load_manifest(models_dir)
    specs = apply_manifest(scan_models_dir(models_dir, allow_pickle=True).specs, manifest)
    by_path = {s.path.relative_to(models_dir.resolve()).as_posix(): s for s in specs}

    dream = by_path["checkpoints/dreamshaper_8.safetensors"]
    assert (dream.code, dream.name, dream.description) == (
        "dreamshaper_8",
        "DreamShaper 8",
        "General purpose.",
    )
    assert dream.config_dir == models_dir / "configs/my-arch"
    assert dream.defaults.steps == 25 and dream.trigger_words == ("dsw",)

    anime = by_path["checkpoints/anime/anything-v5-PrtRE.safetensors"]
    assert (anime.code, anime.name) == ("anything_v5", "anything_v5")

    legacy = by_path["checkpoints/legacy.ckpt"]
    assert legacy.architecture is Architecture.SDXL
    assert legacy.description == ""  # the "architecture assumed" note no longer applies

    lora = by_path["loras/add_detail.safetensors"]
    assert (lora.kind, lora.code, lora.trigger_words) == (
        ModelKind.LORA,
        "add_detail",
        ("detailed", "intricate"),
    )

    catalogue = Catalogue(specs, aliases=manifest.aliases, default_checkpoint=manifest.default)
    assert catalogue.resolve("runware:100@1").code == "dreamshaper_8"
    assert catalogue.resolve("PICPIK Anime").code == "anything_v5"
    assert catalogue.resolve("DreamShaper 8").code == "dreamshaper_8"
    assert catalogue.resolve(None).code == "dreamshaper_8"


def test_entries_for_skipped_files_stay_unused(models_dir: Path) -> None:
    write(models_dir, GOOD.replace('default = "dreamshaper_8"', ""))
    specs = apply_manifest(scan_models_dir(models_dir).specs, load_manifest(models_dir))
    assert "legacy" not in {s.code for s in specs}  # pickle refused by the scan


ENTRY = '[models."checkpoints/dreamshaper_8.safetensors"]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default = ", "not valid TOML"),
        ("defaults = 1", "unknown top-level key 'defaults'"),
        ("default = 3", "default must be a model code"),
        ("aliases = 3", "aliases must be a table"),
        ('[aliases]\n"x" = 1', "aliases.'x' must be a model code"),
        ("models = 1", "models must be tables"),
        (
            ENTRY + "colour = 'red'",
            "unknown key models.'checkpoints/dreamshaper_8.safetensors'.colour",
        ),
        (ENTRY + "code = ''", ".code must be a non-empty string"),
        (ENTRY + "architecture = 'sd3'", ".architecture must be one of 'sd1', 'sd2', 'sdxl'"),
        (ENTRY + "inpainting = 'no'", ".inpainting must be true or false"),
        (ENTRY + "trigger_words = 'dsw'", ".trigger_words must be a list of strings"),
        (ENTRY + "config = 'configs/absent'", ".config: no folder"),
        (ENTRY + "defaults = 3", ".defaults must be a table"),
        (ENTRY + "defaults = {steps = '25'}", ".defaults.steps must be a positive integer"),
        (ENTRY + "defaults = {steps = true}", ".defaults.steps must be a positive integer"),
        (ENTRY + "defaults = {steps = 0}", ".defaults.steps must be a positive integer"),
        (ENTRY + "defaults = {guidance_scale = '7'}", ".guidance_scale must be a number"),
        (ENTRY + "defaults = {clip_skip = 1.5}", ".clip_skip must be a positive integer"),
        (ENTRY + "defaults = {scheduler = 'x'}", "unknown key"),
        ('[models."checkpoints/absent.safetensors"]', "no such file or folder"),
        ('[models."../outside.safetensors"]', "must be a path inside the models directory"),
        ('[models."/etc/passwd"]', "must be a path inside the models directory"),
        ('models."checkpoints/dreamshaper_8.safetensors" = 3', "must be a table"),
    ],
)
def test_bad_manifests_name_the_key_and_the_file(models_dir: Path, text: str, message: str) -> None:
    path = write(models_dir, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(models_dir)
    assert message in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('default = "nope"', "default = 'nope' is not an installed checkpoint code"),
        ('[aliases]\n"PICPIK General" = "nope"', "aliases.'PICPIK General' = 'nope' is not"),
        (
            '[models."checkpoints/dreamshaper_8.safetensors"]\ncode = "x"\n'
            '[models."checkpoints/anime/anything-v5-PrtRE.safetensors"]\ncode = "x"\n',
            "2 checkpoint models would share the code 'x'",
        ),
        (
            '[aliases]\n"a" = "add_detail"',  # a LoRA code: aliases are for checkpoints
            "not an installed checkpoint code",
        ),
    ],
)
def test_references_are_checked_when_applied(models_dir: Path, text: str, message: str) -> None:
    path = write(models_dir, text)
    manifest = load_manifest(models_dir)
    with pytest.raises(ManifestError) as info:
        apply_manifest(scan_models_dir(models_dir).specs, manifest)
    assert message in str(info.value)
    assert str(path) in str(info.value)
