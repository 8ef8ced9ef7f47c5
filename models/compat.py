"""Small bridges between library versions, applied to every pipeline the loader returns.

transformers 5 flattened CLIPTextModel (no `.text_model` wrapper any more), while diffusers 0.42's
SD pipelines still reach `text_encoder.text_model.final_layer_norm` when clip skip is used. An
unregistered attribute pointing the old name at the model itself bridges the two without touching
the module tree, the state dict or the weights.
"""

from __future__ import annotations

from typing import Any


def expose_text_model(text_encoder: Any) -> None:
    if text_encoder is None or hasattr(text_encoder, "text_model"):
        return
    if hasattr(text_encoder, "final_layer_norm") and hasattr(text_encoder, "encoder"):
        object.__setattr__(text_encoder, "text_model", text_encoder)


def apply_compat(pipe: Any) -> Any:
    for name in ("text_encoder", "text_encoder_2"):
        expose_text_model(getattr(pipe, name, None))
    return pipe
