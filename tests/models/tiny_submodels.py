"""Sub-model files for the tiny pipelines of tiny.py, in the layouts users download.

- LoRAs in kohya's layout (`lora_unet_*`, `lora_te_*` / `lora_te1_*`, `lora_te2_*` with
  `.lora_down.weight`, `.lora_up.weight`, `.alpha`): SD 1.x names follow the diffusers UNet, SDXL
  names the original (sgm) UNet's input/middle/output blocks, as kohya's trainer writes them; and
  in diffusers/peft layout (`unet.<module>.lora_A.weight`, `text_encoder.text_model.<module>...`).
- Textual-inversion embeddings: A1111 `.pt`, A1111/civitai `.safetensors` (`emb_params`),
  diffusers (`{token: vectors}`) and SDXL (`clip_l` / `clip_g`).
- A1111 hypernetwork `.pt` files.

Key names come from the tiny pipeline's real modules, so diffusers' converters see what they see
in real files. Weights are random, seeded, and large enough to change a 64x64 image.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file
from torch import nn

# UNet modules kohya's LoRA trains: the linear (and 1x1 conv) layers of the transformer blocks.
UNET_TARGETS: tuple[str, ...] = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
    "proj_in",
    "proj_out",
)
TEXT_TARGETS: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
)
# SDXL or not -> pipeline text encoder attribute -> kohya key prefix.
KOHYA_TEXT_PREFIXES: dict[bool, dict[str, str]] = {
    False: {"text_encoder": "lora_te_"},
    True: {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
}


def lora_targets(pipe: DiffusionPipeline) -> dict[str, dict[str, nn.Module]]:
    """Component -> module name -> module, for every layer a LoRA of the pipeline adapts."""
    targets: dict[str, dict[str, nn.Module]] = {
        "unet": {
            name: module
            for name, module in pipe.unet.named_modules()
            if ".attentions." in name and name.endswith(UNET_TARGETS)
        }
    }
    for component in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, component, None)
        if encoder is not None:
            targets[component] = {
                name: module
                for name, module in encoder.named_modules()
                if name.endswith(TEXT_TARGETS)
            }
    return targets


def _pair(
    module: nn.Module, rank: int, generator: torch.Generator, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) matrices for a Linear or a 1x1 Conv2d."""
    if isinstance(module, nn.Conv2d):
        fan_in, fan_out, tail = module.in_channels, module.out_channels, (1, 1)
    else:
        fan_in, fan_out, tail = module.in_features, module.out_features, ()
    down = torch.randn(rank, fan_in, *tail, generator=generator) / fan_in**0.5
    up = torch.randn(fan_out, rank, *tail, generator=generator) * scale
    return down, up


def _sgm_name(name: str, layers_per_block: int) -> str:
    """A diffusers UNet attention's name in the original (sgm) UNet that kohya trains SDXL on."""
    parts = name.split(".")
    if parts[0] == "down_blocks":  # down_blocks.B.attentions.J -> input_blocks.(1+B*(L+1)+J).1
        index = 1 + int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["input_blocks", str(index), "1", *parts[4:]])
    if parts[0] == "up_blocks":  # up_blocks.B.attentions.J -> output_blocks.(B*(L+1)+J).1
        index = int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["output_blocks", str(index), "1", *parts[4:]])
    return ".".join(["middle_block", "1", *parts[3:]])  # mid_block.attentions.0


def _transformers4_name(name: str) -> str:
    """Text encoder module names as LoRA files have them: transformers 5 flattened
    CLIPTextModel (no `text_model.`), CLIPTextModelWithProjection kept it."""
    return name if name.startswith("text_model.") else "text_model." + name


def kohya_lora(
    pipe: DiffusionPipeline, *, rank: int = 4, alpha: float = 2.0, seed: int = 0, scale: float = 0.3
) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA over every target of the pipeline (UNet and text encoders)."""
    sdxl = hasattr(pipe, "text_encoder_2")
    generator = torch.Generator().manual_seed(seed)
    targets = lora_targets(pipe)
    layers_per_block = pipe.unet.config.layers_per_block
    names: dict[str, dict[str, str]] = {
        "unet": {
            name: "lora_unet_" + (_sgm_name(name, layers_per_block) if sdxl else name)
            for name in targets["unet"]
        }
    }
    for component, prefix in KOHYA_TEXT_PREFIXES[sdxl].items():
        names[component] = {n: prefix + _transformers4_name(n) for n in targets[component]}
    state: dict[str, torch.Tensor] = {}
    for component, modules in targets.items():
        for name, module in modules.items():
            key = names[component][name].replace(".", "_")
            down, up = _pair(module, rank, generator, scale)
            state[f"{key}.lora_down.weight"] = down
            state[f"{key}.lora_up.weight"] = up
            state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def peft_lora(
    pipe: DiffusionPipeline, *, rank: int = 4, seed: int = 1, scale: float = 0.3
) -> dict[str, torch.Tensor]:
    """A diffusers/peft-format LoRA; text encoder keys keep transformers 4's `text_model.`."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for component, modules in lora_targets(pipe).items():
        for name, module in modules.items():
            down, up = _pair(module, rank, generator, scale)
            key = name if component == "unet" else _transformers4_name(name)
            state[f"{component}.{key}.lora_A.weight"] = down
            state[f"{component}.{key}.lora_B.weight"] = up
    return state


def save_lora(
    state: Mapping[str, torch.Tensor], dest: Path, *, tag_frequency: Mapping[str, Any] | None = None
) -> Path:
    """A .safetensors LoRA, with kohya's `ss_tag_frequency` metadata if given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_tag_frequency": json.dumps(tag_frequency)} if tag_frequency else None
    save_file({k: v.contiguous() for k, v in state.items()}, dest, metadata=metadata)
    return dest


# --- embeddings ----------------------------------------------------------------------------------


def embedding_vectors(width: int, count: int, *, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def save_a1111_pt_embedding(dest: Path, vectors: torch.Tensor, *, name: str = "*") -> Path:
    """What A1111's textual-inversion training saves."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors.clone()},
        "name": name,
        "step": 1500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }
    torch.save(data, dest)
    return dest


def save_a1111_safetensors_embedding(dest: Path, vectors: torch.Tensor) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors.contiguous()}, dest)
    return dest


def save_diffusers_embedding(dest: Path, token: str, vectors: torch.Tensor) -> Path:
    """learned_embeds.safetensors / .bin: {token: vectors} ([width] for one vector)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tensor = vectors[0].clone() if len(vectors) == 1 else vectors.clone()
    if dest.suffix == ".safetensors":
        save_file({token: tensor.contiguous()}, dest)
    else:
        torch.save({token: tensor}, dest)
    return dest


def save_sdxl_embedding(dest: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, dest)
    return dest


# --- hypernetworks -------------------------------------------------------------------------------


def hypernetwork_state(
    widths: Sequence[int],
    *,
    layer_structure: Sequence[float] = (1, 2, 1),
    activation: str | None = "relu",
    layer_norm: bool = False,
    activate_output: bool = False,
    use_dropout: bool = False,
    seed: int = 0,
    scale: float = 0.3,
) -> dict[Any, Any]:
    """What A1111's Hypernetwork.save writes: per width a (key, value) pair of state dicts of
    `linear` = Sequential(Linear, [activation], [LayerNorm], [Dropout], ...), plus settings."""
    generator = torch.Generator().manual_seed(seed)
    dropout = [0.0] + [0.3] * (len(layer_structure) - 3) + [0.0, 0.0] if use_dropout else None
    state: dict[Any, Any] = {}
    for width in widths:
        pair = []
        for _ in range(2):
            module: OrderedDict[str, torch.Tensor] = OrderedDict()
            index = 0
            for i in range(len(layer_structure) - 1):
                fan_in, fan_out = (
                    int(width * layer_structure[i]),
                    int(width * layer_structure[i + 1]),
                )
                weight = torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5
                module[f"linear.{index}.weight"] = weight
                module[f"linear.{index}.bias"] = torch.randn(fan_out, generator=generator) * scale
                index += 1
                last = i == len(layer_structure) - 2
                if activation not in (None, "linear") and (activate_output or not last):
                    index += 1
                if layer_norm:
                    module[f"linear.{index}.weight"] = 1 + torch.randn(fan_out, generator=generator)
                    module[f"linear.{index}.bias"] = torch.randn(fan_out, generator=generator)
                    index += 1
                if dropout is not None and dropout[i + 1] > 0:
                    index += 1
            pair.append(module)
        state[width] = tuple(pair)
    state.update(
        step=1000,
        name="tiny",
        layer_structure=list(layer_structure),
        activation_func=activation,
        is_layer_norm=layer_norm,
        weight_initialization="Normal",
        sd_checkpoint="0123456789",
        sd_checkpoint_name="tiny",
        activate_output=activate_output,
        use_dropout=use_dropout,
        dropout_structure=dropout,
        last_layer_dropout=False,
        optional_info=None,
    )
    return state


def save_hypernetwork(dest: Path, state: Mapping[Any, Any]) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), dest)
    return dest
