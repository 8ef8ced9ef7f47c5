"""A1111 hypernetworks on a diffusers UNet, for one job.

A hypernetwork holds two small MLPs (key, value) per attention width. AUTOMATIC1111 runs an
attention layer's context through them before the key and value projections:

    context_k = context + mlp_k(context) * multiplier        k = to_k(context_k)
    context_v = context + mlp_v(context) * multiplier        v = to_v(context_v)

where the context is the text for cross-attention and the image features themselves for
self-attention (A1111 trains modules for 768, 320, 640 and 1280 by default: every attention of
SD 1.x). Several hypernetworks chain in the order given. diffusers has no such hook; wrapping each
matching attention's to_k and to_v projections computes exactly this without replacing its
attention processor, so IP-Adapter processors and LoRA layers keep working underneath. The
original projections come back on exit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from models.catalogue import ModelSpec
from models.loader import ModelLoadError
from models.submodels import HypernetworkWeights
from pipelines.jobs import ErrorCode, JobError

# A1111's activation names: every torch.nn activation by its lower-cased class name, and the
# original short list on top (its "swish" is Hardswish).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    **{
        name.lower(): cls
        for name, cls in inspect.getmembers(nn.modules.activation, inspect.isclass)
        if cls.__module__ == nn.modules.activation.__name__ and issubclass(cls, nn.Module)
    },
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class HypernetworkModule(nn.Module):
    """One MLP laid out like A1111's HypernetworkModule (same `linear.<i>` names, dropout
    placeholders included), so its saved state dict loads as it is. Returns the residual only."""

    def __init__(self, width: int, weights: HypernetworkWeights) -> None:
        super().__init__()
        sizes = [int(width * n) for n in weights.layer_structure]
        activation = weights.activation
        if activation not in (None, "linear") and activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation function {activation!r}")
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            last = i == len(sizes) - 2
            if activation not in (None, "linear") and (weights.activate_output or not last):
                layers.append(ACTIVATIONS[activation]())
            if weights.layer_norm:
                layers.append(nn.LayerNorm(sizes[i + 1]))
            if weights.dropout[i + 1] > 0:
                layers.append(nn.Dropout(weights.dropout[i + 1]))  # inactive in eval()
        self.linear = nn.Sequential(*layers)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.linear(context)


@dataclass(frozen=True)
class Hypernetwork:
    """A hypernetwork ready on a device: (key, value) modules per attention context width."""

    code: str
    modules: dict[int, tuple[HypernetworkModule, HypernetworkModule]]


def build(spec: ModelSpec, weights: HypernetworkWeights, device: torch.device) -> Hypernetwork:
    """The modules in float32 (A1111 runs them in full precision), in eval mode."""
    modules = {}
    try:
        for width, states in weights.modules.items():
            pair = []
            for state in states:
                module = HypernetworkModule(width, weights)
                module.load_state_dict(state)
                pair.append(module.to(device=device, dtype=torch.float32).eval())
            modules[width] = (pair[0], pair[1])
    except (ValueError, TypeError, RuntimeError) as e:  # TypeError: an activation with args
        raise ModelLoadError(
            f"{spec.code} ({spec.path}): its modules do not match its settings "
            f"(layer_structure {list(weights.layer_structure)}, activation "
            f"{weights.activation}): {e}"
        ) from e
    return Hypernetwork(spec.code, modules)


class HyperProjection(nn.Module):
    """A key or value projection that first runs its input through hypernetwork modules."""

    def __init__(self, projection: nn.Module, chain: Sequence[tuple[nn.Module, float]]) -> None:
        super().__init__()
        self.projection = projection
        self.chain = list(chain)  # a plain list: the modules stay out of the UNet's state dict

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        hidden = context.to(torch.float32)
        for module, multiplier in self.chain:
            hidden = hidden + module(hidden) * multiplier
        return self.projection(hidden.to(context.dtype))


def _attentions(unet: nn.Module) -> list[Attention]:
    return [m for m in unet.modules() if isinstance(m, Attention)]


def check_fits(unet: nn.Module, hypernetwork: Hypernetwork, checkpoint: str) -> None:
    """A hypernetwork none of whose widths occurs in the UNet would silently do nothing."""
    widths = {attention.cross_attention_dim for attention in _attentions(unet)}
    if not widths & hypernetwork.modules.keys():
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"hypernetwork {hypernetwork.code!r} has modules for attention widths "
            f"{sorted(hypernetwork.modules)}, but the checkpoint {checkpoint!r} has attention "
            f"widths {sorted(widths)}: it was trained for another model family",
        )


@contextmanager
def applied(unet: nn.Module, hypernetworks: Sequence[tuple[Hypernetwork, float]]) -> Iterator[None]:
    """Each attention whose context width has modules gets wrapped projections until exit."""
    patched: list[tuple[Attention, nn.Module, nn.Module]] = []
    try:
        for attention in _attentions(unet):
            width = attention.cross_attention_dim  # the context's width (query_dim for attn1)
            chain = [(h.modules[width], m) for h, m in hypernetworks if width in h.modules]
            if not chain:
                continue
            patched.append((attention, attention.to_k, attention.to_v))
            # diffusers types to_k / to_v as nn.Linear; any module of the same shapes works
            # there (peft's LoRA layers replace them too).
            hyper_k = HyperProjection(attention.to_k, [(k, m) for (k, _), m in chain])
            hyper_v = HyperProjection(attention.to_v, [(v, m) for (_, v), m in chain])
            attention.to_k = hyper_k  # type: ignore[assignment]  # typed nn.Linear in diffusers
            attention.to_v = hyper_v  # type: ignore[assignment]  # typed nn.Linear in diffusers
        yield
    finally:
        for attention, to_k, to_v in reversed(patched):
            attention.to_k = to_k  # type: ignore[assignment]  # nn.Linear in diffusers' types
            attention.to_v = to_v  # type: ignore[assignment]  # nn.Linear in diffusers' types
