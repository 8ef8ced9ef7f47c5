"""The optional `models_dir/manifest.toml`: codes, names, defaults and aliases for scanned models.

The scan finds models and names them after their files; the manifest lets the operator give them
the codes and display names their clients already send, per-model inference defaults, trigger
words, and the public aliases (PICPIK model names, Runware AIR ids) that resolve to them.
Every key is optional. Mistakes raise `ManifestError` naming the key and the file: the server
refuses to start rather than serve a catalogue that differs from what the operator wrote.

    default = "dreamshaper_8"            # optional: code of the default checkpoint
    [aliases]                            # public id -> model code (checkpoints)
    "PICPIK Anime" = "anything_v5"
    "runware:100@1" = "dreamshaper_8"
    [models."checkpoints/dreamshaper_8.safetensors"]   # key: path relative to models_dir
    code = "dreamshaper_8"
    name = "DreamShaper 8"
    architecture = "sd1"                 # optional override (sd1|sd2|sdxl|sdxl-refiner)
    inpainting = false                   # optional override
    inpainting_model = "dreamshaper_8_inpainting"  # optional: its inpainting variant's code
    config = "configs/my-arch"           # optional diffusers config folder, relative to models_dir
    trigger_words = ["dsw"]
    description = "..."
    [models."checkpoints/dreamshaper_8.safetensors".defaults]
    steps = 25
    guidance_scale = 7.0
    sampler = "DPM++ 2M Karras"
    clip_skip = 2
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from models.catalogue import Architecture, InferenceDefaults, ModelKind, ModelSpec
from models.scan import PICKLE_ARCHITECTURE_NOTE

MANIFEST_NAME = "manifest.toml"

ARCHITECTURES: dict[str, Architecture] = {
    "sd1": Architecture.SD1,
    "sd2": Architecture.SD2,
    "sdxl": Architecture.SDXL,
    "sdxl-refiner": Architecture.SDXL_REFINER,
}


class ManifestError(ValueError):
    """manifest.toml is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class ManifestEntry:
    """Overrides for one model; None = keep what the scan found."""

    code: str | None = None
    name: str | None = None
    architecture: Architecture | None = None
    inpainting: bool | None = None
    inpainting_model: str | None = None
    config_dir: Path | None = None
    trigger_words: tuple[str, ...] | None = None
    public_ids: tuple[str, ...] | None = None
    description: str | None = None
    defaults: InferenceDefaults | None = None


@dataclass(frozen=True)
class Manifest:
    models_dir: Path
    default: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    entries: dict[str, ManifestEntry] = field(default_factory=dict)  # relative posix path ->


# --- value checks: (type test, what to say) ------------------------------------------------------


def _is_str(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(_is_str(v) for v in value)


def _is_arch(value: object) -> bool:
    return value in ARCHITECTURES


Check = tuple[Callable[[object], bool], str]

TOP_LEVEL_KEYS: frozenset[str] = frozenset({"default", "aliases", "models"})
ENTRY_FIELDS: dict[str, Check] = {
    "code": (_is_str, "a non-empty string"),
    "name": (_is_str, "a non-empty string"),
    "architecture": (_is_arch, "one of " + ", ".join(repr(a) for a in ARCHITECTURES)),
    "inpainting": (_is_bool, "true or false"),
    "inpainting_model": (_is_str, "the code of an installed inpainting checkpoint"),
    "config": (_is_str, "a folder path relative to the models directory"),
    "trigger_words": (_is_str_list, "a list of strings"),
    "ids": (_is_str_list, "a list of strings"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "defaults": (lambda v: isinstance(v, dict), "a table"),
}
DEFAULTS_FIELDS: dict[str, Check] = {
    "steps": (_is_int, "a positive integer"),
    "guidance_scale": (_is_number, "a number >= 0"),
    "sampler": (_is_str, "a non-empty string"),
    "clip_skip": (_is_int, "a positive integer"),
}


def _check_table(
    table: Mapping[str, Any], fields: Mapping[str, Check], where: str, source: Path
) -> None:
    for key, value in table.items():
        if key not in fields:
            allowed = ", ".join(fields)
            raise ManifestError(f"{source}: unknown key {where}.{key} (allowed: {allowed})")
        test, expected = fields[key]
        if not test(value):
            raise ManifestError(f"{source}: {where}.{key} must be {expected}, not {value!r}")


# --- loading -------------------------------------------------------------------------------------


def load_manifest(models_dir: Path) -> Manifest:
    """Parse and check models_dir/manifest.toml; an absent file is an empty manifest."""
    source = models_dir / MANIFEST_NAME
    if not source.exists():
        return Manifest(models_dir)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{source}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{source}: not valid TOML: {e}") from e
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ManifestError(
                f"{source}: unknown top-level key {key!r} (allowed: {', '.join(TOP_LEVEL_KEYS)})"
            )
    default = data.get("default")
    if default is not None and not _is_str(default):
        raise ManifestError(f"{source}: default must be a model code (a string), not {default!r}")
    aliases = data.get("aliases", {})
    if not isinstance(aliases, dict):
        raise ManifestError(f'{source}: aliases must be a table of "public id" = "model code"')
    for alias, code in aliases.items():
        if not _is_str(code):
            raise ManifestError(f"{source}: aliases.{alias!r} must be a model code, not {code!r}")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ManifestError(f'{source}: models must be tables [models."<path>"]')
    entries = {
        _relative_key(key, models_dir, source): _entry(key, table, models_dir, source)
        for key, table in models.items()
    }
    return Manifest(models_dir, default, dict(aliases), entries)


def _relative_key(key: str, models_dir: Path, source: Path) -> str:
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ManifestError(
            f"{source}: models.{key!r}: must be a path inside the models directory, "
            'relative to it (e.g. "checkpoints/model.safetensors")'
        )
    if not (models_dir / path).exists():
        raise ManifestError(f"{source}: models.{key!r}: no such file or folder in {models_dir}")
    return path.as_posix()


def _entry(key: str, table: object, models_dir: Path, source: Path) -> ManifestEntry:
    where = f"models.{key!r}"
    if not isinstance(table, dict):
        raise ManifestError(f"{source}: {where} must be a table")
    _check_table(table, ENTRY_FIELDS, where, source)
    defaults_table = table.get("defaults")
    defaults = None
    if defaults_table is not None:
        _check_table(defaults_table, DEFAULTS_FIELDS, f"{where}.defaults", source)
        defaults = InferenceDefaults(**defaults_table)
        if defaults.guidance_scale is not None:
            defaults = dataclasses.replace(defaults, guidance_scale=float(defaults.guidance_scale))
    config_dir = None
    if "config" in table:
        config_dir = models_dir / table["config"]
        if not config_dir.is_dir():
            raise ManifestError(f"{source}: {where}.config: no folder {config_dir}")
    architecture = table.get("architecture")
    words = table.get("trigger_words")
    return ManifestEntry(
        code=table.get("code"),
        name=table.get("name"),
        architecture=ARCHITECTURES[architecture] if architecture is not None else None,
        inpainting=table.get("inpainting"),
        inpainting_model=table.get("inpainting_model"),
        config_dir=config_dir,
        trigger_words=tuple(words) if words is not None else None,
        public_ids=tuple(table["ids"]) if "ids" in table else None,
        description=table.get("description"),
        defaults=defaults,
    )


# --- applying ------------------------------------------------------------------------------------


def apply_manifest(specs: list[ModelSpec], manifest: Manifest) -> list[ModelSpec]:
    """Specs with the manifest's overrides; checks that codes, default and aliases add up.

    Pass every spec the catalogue will hold (the demo model too) so references resolve. Entries
    for files the scan skipped (a refused pickle, a corrupt file) are left unused: the scan
    already says why those files are missing.
    """
    source = manifest.models_dir / MANIFEST_NAME
    root = manifest.models_dir.resolve()
    result = [_apply_entry(spec, _entry_for(spec, manifest, root)) for spec in specs]
    counts = Counter((s.kind, s.code) for s in result)
    for (kind, code), n in counts.items():
        if n > 1:
            raise ManifestError(f"{source}: {n} {kind.value} models would share the code {code!r}")
    checkpoints = {s.code for s in result if s.kind is ModelKind.CHECKPOINT}
    if manifest.default is not None and manifest.default not in checkpoints:
        raise ManifestError(
            f"{source}: default = {manifest.default!r} is not an installed checkpoint code"
        )
    for alias, code in manifest.aliases.items():
        if code not in checkpoints:
            raise ManifestError(
                f"{source}: aliases.{alias!r} = {code!r} is not an installed checkpoint code"
            )
    return result


def _entry_for(spec: ModelSpec, manifest: Manifest, root: Path) -> ManifestEntry | None:
    for base in (manifest.models_dir, root):
        if spec.path.is_relative_to(base):
            return manifest.entries.get(spec.path.relative_to(base).as_posix())
    return None


def _apply_entry(spec: ModelSpec, entry: ManifestEntry | None) -> ModelSpec:
    if entry is None:
        return spec
    changes: dict[str, Any] = {  # ModelSpec field -> value, each of that field's type
        name: value
        for name, value in (
            ("code", entry.code),
            ("name", entry.name or entry.code),
            ("architecture", entry.architecture),
            ("inpainting", entry.inpainting),
            ("inpainting_model", entry.inpainting_model),
            ("config_dir", entry.config_dir),
            ("trigger_words", entry.trigger_words),
            ("public_ids", entry.public_ids),
            ("description", entry.description),
            ("defaults", entry.defaults),
        )
        if value is not None
    }
    if entry.architecture is not None and entry.description is None:
        if spec.description == PICKLE_ARCHITECTURE_NOTE:
            changes["description"] = ""
    return dataclasses.replace(spec, **changes)
