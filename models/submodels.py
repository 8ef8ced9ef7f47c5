"""Read LoRA, textual-inversion embedding and hypernetwork files into plain tensors, safely.

`.safetensors` files load with safetensors. Pickles (A1111 `.pt` embeddings and hypernetworks,
diffusers `.bin` embeddings, opted-in LoRA pickles) load with torch's weights-only unpickler: it
builds containers, numbers, strings and tensors and runs no code from the file, which is why the
embeddings and hypernetworks folders need no --allow-pickle. A file it refuses, or a layout that
is none of the known ones, becomes a ModelLoadError that names the file and the fix.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file

from models.catalogue import ModelSpec, WeightFormat
from models.loader import ModelLoadError

# Text encoder attribute names of a pipeline, in order: CLIP-L (or SD 2's only encoder) first.
TEXT_ENCODER, TEXT_ENCODER_2 = "text_encoder", "text_encoder_2"


def file_key(spec: ModelSpec) -> tuple[Hashable, ...]:
    """A cache key that changes when the file is replaced."""
    try:
        stat = spec.path.stat()
    except OSError as e:
        raise ModelLoadError(f"{spec.code}: cannot read {spec.path}: {e.strerror or e}") from e
    return (spec.kind.value, str(spec.path), stat.st_mtime_ns, stat.st_size)


def _load(spec: ModelSpec) -> Any:
    what = f"{spec.code} ({spec.path})"
    try:
        if spec.weight_format is WeightFormat.SAFETENSORS:
            return load_file(spec.path, device="cpu")
        if spec.weight_format is WeightFormat.PICKLE:
            return torch.load(spec.path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise ModelLoadError(
            f"{what} holds more than plain weights, so torch's safe loader refused it "
            f"({reason}); convert it to .safetensors"
        ) from e
    except Exception as e:
        raise ModelLoadError(f"{what}: cannot load: {type(e).__name__}: {e}") from e
    raise ModelLoadError(f"{what}: a {spec.kind.value} must be a single weights file")


def _tensor_table(value: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values()):
        return {str(k): v for k, v in value.items()}
    return None


# --- LoRA ----------------------------------------------------------------------------------------


def read_lora(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The LoRA's tensors as stored (kohya or diffusers/peft names); diffusers converts them."""
    state = _tensor_table(_load(spec))
    if not state:
        raise ModelLoadError(f"{spec.code} ({spec.path}): not a LoRA (no table of tensors)")
    return state


# --- textual-inversion embeddings ----------------------------------------------------------------


def _sdxl(tree: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(tree, Mapping) and {"clip_l", "clip_g"} <= tree.keys():
        return {TEXT_ENCODER: tree["clip_l"], TEXT_ENCODER_2: tree["clip_g"]}
    return None


def _a1111(tree: Any) -> dict[str, torch.Tensor] | None:
    params = tree.get("string_to_param") if isinstance(tree, Mapping) else None
    table = _tensor_table(params)
    return {TEXT_ENCODER: next(iter(table.values()))} if table and len(table) == 1 else None


def _a1111_safetensors(tree: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(tree, Mapping) and isinstance(tree.get("emb_params"), torch.Tensor):
        return {TEXT_ENCODER: tree["emb_params"]}
    return None


def _diffusers(tree: Any) -> dict[str, torch.Tensor] | None:
    table = _tensor_table(tree)  # {token: vectors}, e.g. learned_embeds.safetensors
    return {TEXT_ENCODER: next(iter(table.values()))} if table and len(table) == 1 else None


def _bare(tree: Any) -> dict[str, torch.Tensor] | None:
    return {TEXT_ENCODER: tree} if isinstance(tree, torch.Tensor) else None


# Embedding layouts, most specific first: each returns vectors per text encoder, or None.
EMBEDDING_LAYOUTS: tuple[Callable[[Any], dict[str, torch.Tensor] | None], ...] = (
    _sdxl,  # {"clip_l": [n, 768], "clip_g": [n, 1280]}
    _a1111,  # .pt: {"string_to_param": {"*": [n, width]}, "name": ..., "step": ...}
    _a1111_safetensors,  # {"emb_params": [n, width]}
    _diffusers,  # {"<token>": [width] or [n, width]}
    _bare,  # a tensor saved on its own
)


def read_embedding(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The embedding's vectors per text encoder attribute, each [vectors, width]."""
    tree = _load(spec)
    for layout in EMBEDDING_LAYOUTS:
        vectors = layout(tree)
        if vectors is not None and all(1 <= v.dim() <= 2 for v in vectors.values()):
            return {name: v.reshape(-1, v.shape[-1]) for name, v in vectors.items()}
    raise ModelLoadError(
        f"{spec.code} ({spec.path}): not a textual-inversion embedding (A1111, diffusers or "
        "SDXL clip_l/clip_g layout)"
    )


# --- hypernetworks -------------------------------------------------------------------------------

# A1111's first hypernetworks named their two linear layers differently.
OLD_HYPERNETWORK_KEYS: dict[str, str] = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}


@dataclass(frozen=True)
class HypernetworkWeights:
    """An A1111 hypernetwork: per attention context width, a key and a value module whose
    layers follow the settings it was trained with (see pipelines/adapters/hypernetwork.py)."""

    modules: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]
    layer_structure: tuple[float, ...]  # layer widths as multiples of the context width
    activation: str | None  # after every layer but the last (unless activate_output)
    layer_norm: bool
    activate_output: bool
    dropout: tuple[float, ...]  # per layer_structure entry; placement only, inactive at inference


def _dropout_structure(structure: tuple[float, ...], use: bool, last_layer: bool) -> list[float]:
    """A1111's parse_dropout_structure, for files saved before `dropout_structure` existed."""
    if not use:
        return [0.0] * len(structure)
    return [0.0] + [0.3] * (len(structure) - 3) + [0.3 if last_layer else 0.0, 0.0]


def read_hypernetwork(spec: ModelSpec) -> HypernetworkWeights:
    """The module pairs and settings, with A1111's defaults for what older files lack."""
    tree = _load(spec)
    what = f"{spec.code} ({spec.path})"
    if not isinstance(tree, Mapping):
        raise ModelLoadError(f"{what}: not an A1111 hypernetwork (a dict of modules)")
    modules = {}
    for width, pair in tree.items():
        if not isinstance(width, int):
            continue  # settings and training notes
        tables = [_tensor_table(m) for m in pair] if isinstance(pair, list | tuple) else []
        present = [table for table in tables if table]
        if len(tables) != 2 or len(present) != 2:
            raise ModelLoadError(f"{what}: width {width} does not hold a key and a value module")
        key, value = ({OLD_HYPERNETWORK_KEYS.get(k, k): v for k, v in t.items()} for t in present)
        modules[width] = (key, value)
    if not modules:
        raise ModelLoadError(f"{what}: not an A1111 hypernetwork (no modules)")
    structure = tuple(float(n) for n in tree.get("layer_structure") or (1, 2, 1))
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
        raise ModelLoadError(f"{what}: layer_structure {list(structure)} must start and end at 1")
    dropout = tree.get("dropout_structure") or _dropout_structure(
        structure, bool(tree.get("use_dropout")), bool(tree.get("last_layer_dropout"))
    )
    if len(dropout) != len(structure):
        raise ModelLoadError(f"{what}: dropout_structure does not match layer_structure")
    layer_norm = tree.get("is_layer_norm", tree.get("add_layer_norm", False))
    return HypernetworkWeights(
        modules=modules,
        layer_structure=structure,
        activation=tree.get("activation_func"),
        layer_norm=bool(layer_norm),
        activate_output=bool(tree.get("activate_output", True)),
        dropout=tuple(float(p) for p in dropout),
    )
