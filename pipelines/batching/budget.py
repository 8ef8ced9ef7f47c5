"""How many images one batch may hold: a hard cap, and on a GPU what its free memory allows.

Pure Python (no torch): the worker measures the device once (total memory, loaded weights) and
hands the numbers in, so the arithmetic is unit-testable anywhere. The per-image cost is an
estimate, kept as data below; the worker still splits a batch that runs out of memory, so an
estimate that is too low costs a retry, never a failed job.
"""

from __future__ import annotations

from dataclasses import dataclass

# Activation memory per image, in bytes per latent pixel (latent = width/8 x height/8), with
# classifier-free guidance's doubled rows included, at half precision with SDPA attention. These
# are deliberately conservative estimates (a 512x512 SD1 image: 4096 latent pixels, ~400 MB),
# not measurements: generous enough that a batch they admit fits on the GPU in practice.
ACTIVATION_BYTES_PER_LATENT_PIXEL: dict[str, int] = {
    "sd1": 100_000,
    "sd2": 100_000,
    "sdxl": 100_000,
}
# An architecture missing from the table is assumed to cost as much as the dearest one.
_UNKNOWN_ARCHITECTURE_COST = max(ACTIVATION_BYTES_PER_LATENT_PIXEL.values())
_LATENT_SCALE = 8  # the VAE's downsampling factor


@dataclass(frozen=True)
class MemoryBudget:
    max_images: int = 16  # hard cap on images per batch (any device)
    activation_bytes: int | None = None  # device memory for activations; None: no memory bound

    def __post_init__(self) -> None:
        if self.max_images < 1:
            raise ValueError(f"max_images must be at least 1, not {self.max_images}")

    def max_images_for(self, architecture: str, width: int, height: int) -> int:
        """Images of this size that fit in one batch: at least 1 (a job too big for the budget
        still runs, alone), at most max_images."""
        if self.activation_bytes is None:
            return self.max_images
        per_pixel = ACTIVATION_BYTES_PER_LATENT_PIXEL.get(architecture, _UNKNOWN_ARCHITECTURE_COST)
        latent_pixels = _latent_side(width) * _latent_side(height)
        fits = self.activation_bytes // (latent_pixels * per_pixel)
        return max(1, min(fits, self.max_images))


def _latent_side(pixels: int) -> int:
    """Latent size along one side, rounded up (conservative for sizes off the multiple of 8)."""
    return max(1, -(-pixels // _LATENT_SCALE))


def cuda_activation_budget(
    total_bytes: int, weights_bytes: int, reserve_fraction: float = 0.15
) -> int:
    """Device memory left for activations: the total less a reserve (CUDA context, allocator
    fragmentation, VAE decode peaks) less the loaded weights; never negative."""
    if not 0 <= reserve_fraction < 1:
        raise ValueError(f"reserve_fraction must be in [0, 1), not {reserve_fraction}")
    usable = int(total_bytes * (1 - reserve_fraction))
    return max(0, usable - weights_bytes)
