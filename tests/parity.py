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


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
