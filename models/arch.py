"""What a weights file or folder is, read from its tensor names and shapes, without torch.

A `.safetensors` file starts with an 8-byte little-endian header length and a JSON header that
names every tensor with its dtype, shape and byte range. That is enough to tell an SD 1.x, SD 2.x
or SDXL checkpoint apart, to spot inpainting UNets (9 input channels), and to tell LoRAs,
textual-inversion embeddings and VAEs from checkpoints, all without reading gigabytes of weights
or importing torch. Diffusers folders say what they are in model_index.json / config.json.

Anything unreadable or unrecognised raises `ModelDetectionError` with a message for the operator;
callers (the models directory scan) turn that into a skipped file, never a crash.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from models.catalogue import Architecture, ModelKind

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


class ModelDetectionError(ValueError):
    """A file or folder that is not a model easel can use; the message says why."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


Header = Mapping[str, TensorInfo]


@dataclass(frozen=True)
class Detected:
    """What detection found: the kind of model, its base architecture, inpainting or not."""

    kind: ModelKind
    architecture: Architecture
    inpainting: bool = False


# --- reading -------------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name -> dtype and shape, checked against the file size (catches truncated copies)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelDetectionError(f"{path}: not a safetensors file (only {size} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise ModelDetectionError(
                    f"{path}: not a safetensors file (header length {length} does not fit)"
                )
            raw = f.read(length)
    except OSError as e:
        raise ModelDetectionError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDetectionError(f"{path}: not a safetensors file (bad JSON header)") from e
    if not isinstance(parsed, dict):
        raise ModelDetectionError(f"{path}: not a safetensors file (header is not an object)")
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in parsed.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            tensors[name] = TensorInfo(str(dtype), tuple(int(n) for n in shape))
            data_end = max(data_end, int(end), int(start))
        except (TypeError, KeyError, ValueError) as e:
            raise ModelDetectionError(f"{path}: corrupt safetensors header at {name!r}") from e
    if 8 + length + data_end > size:
        raise ModelDetectionError(
            f"{path}: truncated ({size} bytes, the header promises {8 + length + data_end}); "
            "copy or download it again"
        )
    if not tensors:
        raise ModelDetectionError(f"{path}: holds no tensors")
    return tensors


# --- checkpoints ---------------------------------------------------------------------------------

UNET_PREFIX = "model.diffusion_model."
UNET_INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"

# Text-encoder key prefixes of the original (LDM / SGM) checkpoint layouts, most specific first.
TEXT_ENCODER_PREFIXES: dict[str, Architecture] = {
    "conditioner.embedders.1.model.": Architecture.SDXL,  # CLIP-L + OpenCLIP bigG
    "conditioner.embedders.0.model.": Architecture.SDXL_REFINER,  # OpenCLIP bigG alone
    "cond_stage_model.model.": Architecture.SD2,  # OpenCLIP ViT-H
    "cond_stage_model.transformer.": Architecture.SD1,  # CLIP ViT-L (HF layout)
}

# Cross-attention context width -> architecture; used when the text encoder is not in the file.
CONTEXT_DIMS: dict[int, Architecture] = {
    768: Architecture.SD1,
    1024: Architecture.SD2,
    2048: Architecture.SDXL,
}

# Tensor-name endings whose second dimension is the context width (UNet, ControlNet, LoRA,
# IP-Adapter layouts).
CONTEXT_KEY_SUFFIXES: tuple[str, ...] = (
    "attn2.to_k.weight",
    "attn2_to_k.lora_down.weight",
    "attn2.to_k.lora_down.weight",
    "attn2.to_k.lora_A.weight",
    "attn2.to_k.lora.down.weight",
    "attn2.processor.to_k_lora.down.weight",
    "to_k_ip.weight",
)

UNET_IN_CHANNELS: dict[int, bool] = {4: False, 9: True}  # in_channels -> inpainting


def context_architecture(header: Header) -> Architecture:
    """The architecture implied by the cross-attention width, or UNKNOWN."""
    for name, info in header.items():
        if name.endswith(CONTEXT_KEY_SUFFIXES) and len(info.shape) >= 2:
            return CONTEXT_DIMS.get(info.shape[1], Architecture.UNKNOWN)
    return Architecture.UNKNOWN


def is_checkpoint(header: Header) -> bool:
    return any(name.startswith(UNET_PREFIX) for name in header)


def detect_checkpoint(header: Header, *, source: str = "checkpoint") -> Detected:
    """Architecture and inpainting of an original-layout single-file checkpoint."""
    if not is_checkpoint(header):
        raise ModelDetectionError(f"{source}: no UNet weights ({UNET_PREFIX}...)")
    architecture = next(
        (
            arch
            for prefix, arch in TEXT_ENCODER_PREFIXES.items()
            if any(name.startswith(prefix) for name in header)
        ),
        Architecture.UNKNOWN,
    )
    if architecture is Architecture.UNKNOWN:
        architecture = context_architecture(header)
    if architecture is Architecture.UNKNOWN:
        raise ModelDetectionError(f"{source}: unknown architecture (not SD 1.x, SD 2.x or SDXL)")
    conv = header.get(UNET_INPUT_CONV)
    if conv is None or len(conv.shape) != 4:
        raise ModelDetectionError(f"{source}: missing {UNET_INPUT_CONV}")
    in_channels = conv.shape[1]
    if in_channels not in UNET_IN_CHANNELS:
        raise ModelDetectionError(
            f"{source}: UNet with {in_channels} input channels (only 4 = txt2img and "
            "9 = inpainting are supported)"
        )
    return Detected(ModelKind.CHECKPOINT, architecture, UNET_IN_CHANNELS[in_channels])


# --- other single files --------------------------------------------------------------------------

LORA_PREFIXES: tuple[str, ...] = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
LORA_MARKERS: tuple[str, ...] = (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.", ".lora.down.")
SDXL_LORA_PREFIXES: tuple[str, ...] = ("lora_te1_", "lora_te2_", "text_encoder_2.")

EMBEDDING_KEYS: frozenset[str] = frozenset({"emb_params", "string_to_param", "clip_l", "clip_g"})
SDXL_EMBEDDING_KEYS: frozenset[str] = frozenset({"clip_l", "clip_g"})
EMBEDDING_WIDTHS: dict[int, Architecture] = {768: Architecture.SD1, 1024: Architecture.SD2}

VAE_PREFIXES: tuple[str, ...] = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
CONTROLNET_MARKERS: tuple[str, ...] = ("control_model.", "controlnet_cond_embedding.")
IP_ADAPTER_PREFIXES: tuple[str, ...] = ("image_proj.", "ip_adapter.")


def _is_lora(header: Header) -> bool:
    return any(
        name.startswith(LORA_PREFIXES) or any(m in name for m in LORA_MARKERS) for name in header
    )


def _is_embedding(header: Header) -> bool:
    if EMBEDDING_KEYS & header.keys():
        return True
    # diffusers textual inversion: one tensor named after its token, [n, width] or [width]
    if len(header) == 1:
        (info,) = header.values()
        return 1 <= len(info.shape) <= 2 and info.shape[-1] in EMBEDDING_WIDTHS
    return False


def _is_vae(header: Header) -> bool:
    names = header.keys()
    return (
        all(name.startswith(VAE_PREFIXES) for name in names)
        and any(name.startswith("encoder.") for name in names)
        and any(name.startswith("decoder.") for name in names)
    )


def _is_controlnet(header: Header) -> bool:
    return any(name.startswith(CONTROLNET_MARKERS) for name in header)


def _is_ip_adapter(header: Header) -> bool:
    return any(name.startswith(IP_ADAPTER_PREFIXES) for name in header)


def _lora_architecture(header: Header) -> Architecture:
    if any(name.startswith(SDXL_LORA_PREFIXES) for name in header):
        return Architecture.SDXL
    return context_architecture(header)


def _embedding_architecture(header: Header) -> Architecture:
    if SDXL_EMBEDDING_KEYS <= header.keys():
        return Architecture.SDXL
    widths = {info.shape[-1] for info in header.values() if info.shape}
    found = {EMBEDDING_WIDTHS[w] for w in widths if w in EMBEDDING_WIDTHS}
    return found.pop() if len(found) == 1 else Architecture.UNKNOWN


def _vae_architecture(header: Header) -> Architecture:
    return Architecture.UNKNOWN  # SD 1.x / 2.x / SDXL VAEs share one layout


# Checked in order; the first kind whose test matches wins. Checkpoints are handled first.
FILE_KINDS: tuple[
    tuple[ModelKind, Callable[[Header], bool], Callable[[Header], Architecture]], ...
] = (
    (ModelKind.LORA, _is_lora, _lora_architecture),
    (ModelKind.EMBEDDING, _is_embedding, _embedding_architecture),
    (ModelKind.CONTROLNET, _is_controlnet, context_architecture),
    (ModelKind.IP_ADAPTER, _is_ip_adapter, context_architecture),
    (ModelKind.VAE, _is_vae, _vae_architecture),
)


def classify(header: Header, *, source: str = "file") -> Detected:
    """What a standalone .safetensors file is: checkpoint, LoRA, embedding, ControlNet..."""
    if is_checkpoint(header) and not _is_controlnet(header):
        return detect_checkpoint(header, source=source)
    for kind, matches, architecture in FILE_KINDS:
        if matches(header):
            return Detected(kind, architecture(header))
    sample = ", ".join(sorted(header)[:3])
    raise ModelDetectionError(f"{source}: unrecognised weights (tensors such as {sample})")


def inspect_safetensors(path: Path) -> Detected:
    """Read a .safetensors header and classify it."""
    return classify(read_safetensors_header(path), source=str(path))


# --- diffusers folders ---------------------------------------------------------------------------

PIPELINE_INDEX = "model_index.json"
COMPONENT_CONFIG = "config.json"

# Pipelines whose folders are checkpoints easel runs -> family; SD 1.x vs 2.x by context width.
PIPELINE_FAMILIES: dict[str, Architecture] = {
    "StableDiffusionPipeline": Architecture.SD1,
    "StableDiffusionImg2ImgPipeline": Architecture.SD1,
    "StableDiffusionInpaintPipeline": Architecture.SD1,
    "StableDiffusionXLPipeline": Architecture.SDXL,
    "StableDiffusionXLImg2ImgPipeline": Architecture.SDXL,
    "StableDiffusionXLInpaintPipeline": Architecture.SDXL,
}
SD2_CONTEXT_DIM = 1024
# Families whose pipelines may come without the first text encoder: refiners (OpenCLIP only).
REFINER_FAMILIES: dict[Architecture, Architecture] = {Architecture.SDXL: Architecture.SDXL_REFINER}

# Component folders (config.json) by class name.
COMPONENT_KINDS: dict[str, ModelKind] = {
    "ControlNetModel": ModelKind.CONTROLNET,
    "AutoencoderKL": ModelKind.VAE,
    "UNet2DConditionModel": ModelKind.CHECKPOINT,  # a bare UNet: not loadable on its own
}


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelDetectionError(f"{path}: cannot read: {e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDetectionError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelDetectionError(f"{path}: not a JSON object")
    return data


def _config_int(config: Mapping[str, object], key: str, source: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelDetectionError(f"{source}: {key} missing or not an integer")
    return value


def detect_diffusers_pipeline(folder: Path) -> Detected:
    """A diffusers pipeline folder: model_index.json `_class_name` and unet/config.json."""
    index = _read_json(folder / PIPELINE_INDEX)
    class_name = index.get("_class_name")
    architecture = PIPELINE_FAMILIES.get(str(class_name))
    if architecture is None:
        raise ModelDetectionError(
            f"{folder}: {class_name} pipelines are not supported (SD 1.x, SD 2.x and SDXL are)"
        )
    if index.get("text_encoder") in (None, [None, None]):
        if architecture not in REFINER_FAMILIES:
            raise ModelDetectionError(f"{folder}: no text_encoder: not supported")
        architecture = REFINER_FAMILIES[architecture]
    unet_config_path = folder / "unet" / COMPONENT_CONFIG
    unet = _read_json(unet_config_path)
    if _config_int(unet, "cross_attention_dim", unet_config_path) == SD2_CONTEXT_DIM:
        architecture = Architecture.SD2 if architecture is Architecture.SD1 else architecture
    in_channels = _config_int(unet, "in_channels", unet_config_path)
    if in_channels not in UNET_IN_CHANNELS:
        raise ModelDetectionError(f"{folder}: UNet with {in_channels} input channels")
    return Detected(ModelKind.CHECKPOINT, architecture, UNET_IN_CHANNELS[in_channels])


# transformers `model_type`s of CLIP image-encoder folders (IP-Adapters' image encoders).
IMAGE_ENCODER_MODEL_TYPES: frozenset[str] = frozenset({"clip_vision_model", "clip"})


def image_encoder_config(folder: Path) -> dict[str, object] | None:
    """config.json of a transformers CLIP image-encoder folder, or None if it is not one."""
    try:
        config = _read_json(folder / COMPONENT_CONFIG)
    except ModelDetectionError:
        return None
    return config if config.get("model_type") in IMAGE_ENCODER_MODEL_TYPES else None


def detect_diffusers_component(folder: Path) -> Detected:
    """A single diffusers model folder (config.json), e.g. a ControlNet or a VAE."""
    config_path = folder / COMPONENT_CONFIG
    config = _read_json(config_path)
    class_name = config.get("_class_name")
    kind = COMPONENT_KINDS.get(str(class_name))
    if kind is None:
        raise ModelDetectionError(f"{folder}: unsupported diffusers model {class_name}")
    context = config.get("cross_attention_dim")
    architecture = (
        CONTEXT_DIMS.get(context, Architecture.UNKNOWN)
        if isinstance(context, int)
        else Architecture.UNKNOWN
    )
    return Detected(kind, architecture)
