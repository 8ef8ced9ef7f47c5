"""Find the models in a models directory laid out the way A1111 / ComfyUI users already have it.

    models_dir/
      checkpoints/ (or Stable-diffusion/, diffusers/)   *.safetensors, diffusers folders
      loras/ (or Lora/, LyCORIS/)                        *.safetensors
      embeddings/  hypernetworks/  controlnet/  ipadapter/ (or ip-adapter/)  vae/

Folder names match case-insensitively and sub-folders are searched too. Only file headers and
JSON configs are read, so a scan of many gigabytes takes milliseconds and needs no torch.
Pickle-based weights (.ckpt, .pt, .bin, .pth) are listed as skipped unless the operator opts in,
except embeddings and hypernetworks: those load with torch's weights-only unpickler, which runs no
code, and the scan only peeks at their object tree (models/peek.py).
Unreadable, corrupt or unrecognised files are skipped with a reason: a scan never raises for them.
Symlinks are followed only while they stay inside the models directory.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from models.arch import (
    COMPONENT_CONFIG,
    PIPELINE_INDEX,
    Detected,
    Header,
    ModelDetectionError,
    classify,
    context_architecture,
    detect_checkpoint,
    detect_diffusers_component,
    detect_diffusers_pipeline,
    image_encoder_config,
    is_checkpoint,
    read_safetensors_header,
)
from models.catalogue import Architecture, ModelKind, ModelSpec, WeightFormat
from models.peek import (
    embedding_architecture,
    embedding_vectors,
    hypernetwork_architecture,
    lora_trigger_words,
    peek_torch_file,
    read_safetensors_metadata,
)

# Sub-folder name (lower case) -> the kind of model it holds.
KIND_FOLDERS: dict[str, ModelKind] = {
    "checkpoints": ModelKind.CHECKPOINT,
    "stable-diffusion": ModelKind.CHECKPOINT,
    "diffusers": ModelKind.CHECKPOINT,
    "loras": ModelKind.LORA,
    "lora": ModelKind.LORA,
    "lycoris": ModelKind.LORA,
    "embeddings": ModelKind.EMBEDDING,
    "hypernetworks": ModelKind.HYPERNETWORK,
    "controlnet": ModelKind.CONTROLNET,
    "ipadapter": ModelKind.IP_ADAPTER,
    "ip-adapter": ModelKind.IP_ADAPTER,
    "vae": ModelKind.VAE,
}

SAFETENSORS_SUFFIXES: frozenset[str] = frozenset({".safetensors"})
PICKLE_SUFFIXES: frozenset[str] = frozenset({".ckpt", ".pt", ".bin", ".pth"})
UNSUPPORTED_SUFFIXES: dict[str, str] = {
    ".gguf": "GGUF weights are not supported",
    ".onnx": "ONNX models are not supported",
}
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
# Pickles loaded with torch's weights-only unpickler (no code runs), so without the opt-in:
# A1111 embeddings and hypernetworks are .pt files, diffusers embeddings .bin.
WEIGHTS_ONLY_PICKLES: dict[ModelKind, frozenset[str]] = {
    ModelKind.EMBEDDING: frozenset({".pt", ".bin"}),
    ModelKind.HYPERNETWORK: frozenset({".pt", ".bin"}),
}
MISPLACED_HINT = "not in a model folder: move it into checkpoints/, loras/, embeddings/, vae/..."

# Kinds whose single files must be recognised as that kind; unrecognised files in the other
# kinds' folders are accepted as the folder says.
STRICT_KINDS: frozenset[ModelKind] = frozenset(
    {ModelKind.CHECKPOINT, ModelKind.LORA, ModelKind.EMBEDDING, ModelKind.VAE}
)

PICKLE_ARCHITECTURE_NOTE = (
    "Pickle weights: architecture not read from the file, assumed SD 1.x "
    "(set `architecture` for it in manifest.toml if that is wrong)."
)
ALLOW_PICKLE_HINT = "pass --allow-pickle or set EASEL_ALLOW_PICKLE=1 to load it, or convert it"


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class ScanResult:
    specs: list[ModelSpec] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


@dataclass(frozen=True)
class _Found:
    """A model before its code is chosen: codes depend on every other model of its kind."""

    relative: Path
    path: Path
    kind: ModelKind
    detected: Detected
    weight_format: WeightFormat
    description: str = ""
    trigger_words: tuple[str, ...] = ()


def scan_models_dir(models_dir: Path, *, allow_pickle: bool = False) -> ScanResult:
    """Every model under models_dir's kind folders, plus what was skipped and why."""
    root = models_dir.resolve()
    found: dict[Path, _Found] = {}  # resolved path -> model: one file linked twice is one model
    skipped: list[SkippedFile] = []
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as e:
        reason = "models directory does not exist" if not root.exists() else str(e)
        return ScanResult([], [SkippedFile(models_dir, reason)])
    for entry in entries:
        kind = KIND_FOLDERS.get(entry.name.lower())
        if kind is None or not entry.is_dir():
            if entry.is_file() and entry.suffix.lower() in MODEL_SUFFIXES:
                skipped.append(SkippedFile(entry, MISPLACED_HINT))
            continue
        if not _inside(entry, root):
            skipped.append(SkippedFile(entry, "symlink points outside the models directory"))
            continue
        for item in _walk(entry, root, skipped):
            try:
                result = _examine(item, root, kind, allow_pickle)
                real = item.resolve()
            except (OSError, RuntimeError, ValueError) as e:  # races, loops: skip, never raise
                result, real = SkippedFile(item, f"cannot read: {e}"), item
            if isinstance(result, SkippedFile):
                skipped.append(result)
            elif result is not None and real in found:
                first = found[real].relative.as_posix()
                skipped.append(SkippedFile(item, f"same file as {first}"))
            elif result is not None:
                found[real] = result
    models = sorted(found.values(), key=lambda f: f.relative.as_posix())
    skipped.sort(key=lambda s: s.path.as_posix())
    return ScanResult(_to_specs(models), skipped)


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _walk(folder: Path, root: Path, skipped: list[SkippedFile]) -> Iterator[Path]:
    """Files and model folders under folder, depth first in name order; no escaping symlinks."""
    seen: set[Path] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            real = current.resolve()
            if real in seen:
                continue
            seen.add(real)
            children = sorted(os.scandir(current), key=lambda e: e.name, reverse=True)
        except (OSError, RuntimeError) as e:
            skipped.append(SkippedFile(current, f"cannot list folder: {e}"))
            continue
        for child in children:
            path = Path(child.path)
            if child.name.startswith("."):
                continue
            if child.is_symlink() and not _inside(path, root):
                skipped.append(SkippedFile(path, "symlink points outside the models directory"))
                continue
            if child.is_dir():
                if (path / PIPELINE_INDEX).is_file() or (path / COMPONENT_CONFIG).is_file():
                    yield path
                else:
                    stack.append(path)
            elif child.is_file():
                yield path


def _examine(
    path: Path, root: Path, kind: ModelKind, allow_pickle: bool
) -> _Found | SkippedFile | None:
    relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            if kind is ModelKind.IP_ADAPTER and image_encoder_config(path) is not None:
                return None  # an adapter's CLIP image encoder (h94's image_encoder/): not a model
            return _Found(relative, path, kind, _detect_folder(path, kind), WeightFormat.DIFFUSERS)
        if suffix in SAFETENSORS_SUFFIXES:
            detected = _detect_file(path, kind)
            words = _trigger_words(path) if kind is ModelKind.LORA else ()
            return _Found(relative, path, kind, detected, WeightFormat.SAFETENSORS, "", words)
        if suffix in WEIGHTS_ONLY_PICKLES.get(kind, ()):
            detected = _detect_weights_only_pickle(path, kind)
            return _Found(relative, path, kind, detected, WeightFormat.PICKLE)
    except ModelDetectionError as e:
        return SkippedFile(path, str(e).removeprefix(f"{path}: "))
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            return SkippedFile(
                path, f"pickle weights are not loaded by default: {ALLOW_PICKLE_HINT}"
            )
        detected = Detected(kind, Architecture.SD1)
        return _Found(relative, path, kind, detected, WeightFormat.PICKLE, PICKLE_ARCHITECTURE_NOTE)
    if suffix in UNSUPPORTED_SUFFIXES:
        return SkippedFile(path, UNSUPPORTED_SUFFIXES[suffix])
    return None  # previews, notes, configs: not models


def _detect_folder(path: Path, kind: ModelKind) -> Detected:
    if (path / PIPELINE_INDEX).is_file():
        if kind is not ModelKind.CHECKPOINT:
            raise ModelDetectionError(
                f"{path}: a diffusers pipeline in a {kind.value} folder: move it to checkpoints/"
            )
        return detect_diffusers_pipeline(path)
    detected = detect_diffusers_component(path)
    if detected.kind is not kind or kind is ModelKind.CHECKPOINT:
        raise ModelDetectionError(
            f"{path}: a diffusers {detected.kind.value} model folder does not belong in a "
            f"{kind.value} folder"
        )
    return detected


def _trigger_words(path: Path) -> tuple[str, ...]:
    """A kohya LoRA's most frequent training tags (the manifest's trigger_words override them)."""
    return lora_trigger_words(read_safetensors_metadata(path))


def _detect_weights_only_pickle(path: Path, kind: ModelKind) -> Detected:
    tree = peek_torch_file(path)
    if kind is ModelKind.HYPERNETWORK:
        return Detected(kind, hypernetwork_architecture(tree))
    vectors = embedding_vectors(tree)
    if not vectors:
        raise ModelDetectionError(f"{path}: not recognised as an embedding")
    return Detected(kind, embedding_architecture(vectors))


def detect_safetensors(path: Path, kind: ModelKind) -> Detected:
    """What the scan makes of a .safetensors file in a `kind` folder (`easel models pull` asks
    before placing one); ModelDetectionError says why the scan would skip it."""
    return _detect_file(path, kind)


def _detect_file(path: Path, kind: ModelKind) -> Detected:
    header = read_safetensors_header(path)
    if kind is ModelKind.CHECKPOINT and is_checkpoint(header):
        return detect_checkpoint(header, source=str(path))  # its errors say what is wrong
    detected = _classify_or_none(header, path)
    if detected is not None and detected.kind is kind:
        return detected
    if detected is not None:
        raise ModelDetectionError(
            f"{path}: looks like a {detected.kind.value}, not a {kind.value}: move it to the "
            f"{detected.kind.value} folder"
        )
    if kind is ModelKind.EMBEDDING and _one_vector_table(header):
        return Detected(kind, Architecture.UNKNOWN)  # a diffusers embedding of an unusual width
    if kind in STRICT_KINDS:
        raise ModelDetectionError(f"{path}: not recognised as a {kind.value}")
    # ControlNet / IP-Adapter / hypernetwork layouts vary: accept what the folder says.
    return Detected(kind, context_architecture(header))


def _one_vector_table(header: Header) -> bool:
    return len(header) == 1 and all(1 <= len(info.shape) <= 2 for info in header.values())


def _classify_or_none(header: Header, path: Path) -> Detected | None:
    try:
        return classify(header, source=str(path))
    except ModelDetectionError:
        return None


def _codes(found: list[_Found]) -> list[str]:
    """File stem (folder name) per model; colliding ones fall back to longer relative paths."""
    kinds = [f.kind for f in found]
    bases = [
        f.relative if f.weight_format is WeightFormat.DIFFUSERS else f.relative.with_suffix("")
        for f in found
    ]
    codes = [base.name for base in bases]
    for fallback in ([b.as_posix() for b in bases], [f.relative.as_posix() for f in found]):
        counts = Counter(zip(kinds, codes, strict=True))
        codes = [
            code if counts[(kind, code)] == 1 else longer
            for kind, code, longer in zip(kinds, codes, fallback, strict=True)
        ]
    return codes


def _to_specs(found: list[_Found]) -> list[ModelSpec]:
    return [
        ModelSpec(
            code=code,
            name=code,
            kind=f.kind,
            architecture=f.detected.architecture,
            path=f.path,
            weight_format=f.weight_format,
            inpainting=f.detected.inpainting,
            description=f.description,
            trigger_words=f.trigger_words,
        )
        for f, code in zip(found, _codes(found), strict=True)
    ]
