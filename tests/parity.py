"""What the server parity tests share: the reference call's generators and the exact check."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image


def seeded_generators(seed: int, count: int) -> list[torch.Generator]:
    """The server's seeds for a batch: image i uses seed + i."""
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def assert_same_images(server: list[np.ndarray], direct: list[Image.Image]) -> None:
    assert len(server) == len(direct)
    for got, want in zip(server, direct, strict=True):
        assert got.shape == np.asarray(want).shape
        assert np.array_equal(got, np.asarray(want))


# What a LoRA parity check allows: CPU BLAS kernels round a product differently depending on where
# its operands lie in memory (their address and alignment), not only on their values and shapes.
# easel's worker and the reference pipeline hold the very same LoRA weights and inputs, but their
# activations sit at other addresses, so a LoRA projection can come out one float32 ulp apart
# (measured: 4.8e-7 in one LoRA layer of the SDXL UNet); a deep copy of the worker's own UNet, at
# fresh addresses, gives the reference's output bit for bit. After the VAE that is at most one
# 8-bit level in a handful of the 12288 values of a 64x64 image (measured: 1-2 values with torch's
# scalar kernels, ATEN_CPU_CAPABILITY=default; 1 on an AMD EPYC CPU with AVX2; 0 on others).
# A real difference - a LoRA weighted wrongly, missing or left behind - moves thousands of values
# by many levels, which this still fails.
ROUNDING_LEVELS = 1
ROUNDING_SHARE = 0.001  # 12 of 12288 values


def assert_same_up_to_rounding(got: np.ndarray, want: np.ndarray) -> None:
    """got equals want, but for ROUNDING_LEVELS in at most ROUNDING_SHARE of the values."""
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert int(diff.max()) <= ROUNDING_LEVELS, f"values differ by up to {int(diff.max())} levels"
    share = float((diff > 0).mean())
    assert share <= ROUNDING_SHARE, f"{share:.2%} of the values differ"


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
