"""What a sub-model file holds, read without torch and without loading its weights.

The models directory scan names and classifies files in milliseconds, so it reads headers only:
the JSON metadata of a `.safetensors` file (kohya LoRAs keep their training tags there), and the
object tree of a `torch.save` pickle with every tensor replaced by its shape. A1111 embeddings
and hypernetworks are such pickles. Reading one here runs no code from the file: the unpickler
resolves no global but a few stand-ins of its own, and never reads the tensors' bytes.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from models.arch import (
    CONTEXT_DIMS,
    EMBEDDING_WIDTHS,
    MAX_HEADER_BYTES,
    SDXL_EMBEDDING_KEYS,
    ModelDetectionError,
    TensorInfo,
)
from models.catalogue import Architecture

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # an object tree without its tensors is far smaller
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's first pickle before the zip format
TRIGGER_WORD_COUNT = 3  # the most frequent training tags offered as a LoRA's trigger words


# --- safetensors metadata ------------------------------------------------------------------------


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` strings of a .safetensors header ({} when it has none)."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER_BYTES:
                return {}
            header = json.loads(f.read(length))
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(k): v for k, v in metadata.items() if isinstance(v, str)}


def lora_trigger_words(metadata: Mapping[str, str]) -> tuple[str, ...]:
    """The most frequent caption tags of a kohya-trained LoRA (`ss_tag_frequency`): the words
    its training captions repeated, which is what makes it show its subject or style."""
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency", "{}"))
    except json.JSONDecodeError:
        return ()
    counts: Counter[str] = Counter()
    for tags in frequency.values() if isinstance(frequency, dict) else ():
        for tag, count in tags.items() if isinstance(tags, dict) else ():
            if isinstance(count, int) and tag.strip():
                counts[tag.strip()] += count
    return tuple(tag for tag, _ in counts.most_common(TRIGGER_WORD_COUNT))


# --- torch.save pickles --------------------------------------------------------------------------


class _Opaque:
    """Stands in for any torch object the tree mentions (storage types, dtypes, sizes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque()


def _tensor(_storage: Any, _offset: Any, size: Any, *_rest: Any) -> TensorInfo:
    shape = tuple(int(n) for n in size) if isinstance(size, tuple | list) else ()
    return TensorInfo("", shape)


def _parameter(data: Any, *_rest: Any) -> Any:
    return data


# The only globals a peeked pickle may name: state-dict containers and tensor rebuilders.
_STAND_INS: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): dict,
    ("torch._utils", "_rebuild_tensor"): _tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
}
_OPAQUE_MODULES = frozenset({"torch", "torch.storage"})  # FloatStorage, float16, Size...


class _ShapeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get((module, name))
        if stand_in is not None:
            return stand_in
        if module in _OPAQUE_MODULES:
            return _Opaque
        raise pickle.UnpicklingError(f"{module}.{name} is not plain weights")

    def persistent_load(self, pid: Any) -> Any:
        return None  # a tensor's storage: its bytes are never read


def _unpickle(stream: IO[bytes]) -> Any:
    return _ShapeUnpickler(stream).load()


def peek_torch_file(path: Path) -> Any:
    """The object a torch.save file holds, tensors as TensorInfo (dtype left empty).

    Raises ModelDetectionError when the file is not a torch.save file or holds objects other
    than plain containers, numbers, strings and tensors.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                entry = next(
                    (i for i in archive.infolist() if i.filename.endswith("data.pkl")), None
                )
                if entry is None or entry.file_size > MAX_PICKLE_BYTES:
                    raise ModelDetectionError(f"{path}: not a PyTorch weights file (no data.pkl)")
                with archive.open(entry) as stream:
                    return _unpickle(stream)
        with path.open("rb") as stream:  # the legacy format: magic, version, system info, object
            if _unpickle(stream) != LEGACY_MAGIC:
                raise ModelDetectionError(f"{path}: not a PyTorch weights file")
            _unpickle(stream), _unpickle(stream)
            return _unpickle(stream)
    except ModelDetectionError:
        raise
    except OSError as e:
        raise ModelDetectionError(f"{path}: cannot read: {e.strerror or e}") from e
    except Exception as e:  # any malformed pickle: the file is not what its folder says
        raise ModelDetectionError(f"{path}: not a PyTorch weights file ({e})") from e


def hypernetwork_architecture(tree: Any) -> Architecture:
    """An A1111 hypernetwork keeps one module pair per attention width; the text context width
    (768, 1024 or 2048) tells the family. The others (320, 640, 1280) are self-attention."""
    if not isinstance(tree, dict):
        return Architecture.UNKNOWN
    found = {CONTEXT_DIMS[k] for k in tree if isinstance(k, int) and k in CONTEXT_DIMS}
    return found.pop() if len(found) == 1 else Architecture.UNKNOWN


def embedding_vectors(tree: Any) -> dict[str, TensorInfo]:
    """The vector tables of an embedding pickle by name; {} when it holds none."""
    if isinstance(tree, TensorInfo):
        return {"emb_params": tree}
    if not isinstance(tree, dict):
        return {}
    params = tree.get("string_to_param")
    if isinstance(params, dict):  # A1111: {"string_to_param": {"*": tensor}, "name": ...}
        tensors = [v for v in params.values() if isinstance(v, TensorInfo)]
        return {"emb_params": tensors[0]} if len(tensors) == 1 else {}
    return {str(k): v for k, v in tree.items() if isinstance(v, TensorInfo)}


def embedding_architecture(vectors: Mapping[str, TensorInfo]) -> Architecture:
    if SDXL_EMBEDDING_KEYS <= vectors.keys():
        return Architecture.SDXL
    widths = {info.shape[-1] for info in vectors.values() if info.shape}
    found = {EMBEDDING_WIDTHS[w] for w in widths if w in EMBEDDING_WIDTHS}
    return found.pop() if len(found) == 1 else Architecture.UNKNOWN
