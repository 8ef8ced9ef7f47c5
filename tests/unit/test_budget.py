"""The memory budget: images per batch from the activation-cost table, clamped to [1, max]."""

from __future__ import annotations

import pytest

from pipelines.batching.budget import (
    ACTIVATION_BYTES_PER_LATENT_PIXEL,
    MemoryBudget,
    cuda_activation_budget,
)

GIB = 1 << 30


def test_no_memory_bound_gives_the_hard_cap() -> None:
    assert MemoryBudget().max_images_for("sdxl", 4096, 4096) == 16
    assert MemoryBudget(max_images=3).max_images_for("sd1", 64, 64) == 3


def test_table_lookup_per_architecture() -> None:
    per_pixel = ACTIVATION_BYTES_PER_LATENT_PIXEL["sd1"]
    latent = 64 * 64  # 512x512
    budget = MemoryBudget(max_images=64, activation_bytes=5 * latent * per_pixel + 1)
    assert budget.max_images_for("sd1", 512, 512) == 5
    assert budget.max_images_for("sd1", 512, 1024) == 2  # twice the latent pixels
    sdxl = ACTIVATION_BYTES_PER_LATENT_PIXEL["sdxl"]
    budget = MemoryBudget(max_images=64, activation_bytes=3 * 128 * 128 * sdxl)
    assert budget.max_images_for("sdxl", 1024, 1024) == 3


def test_clamps_to_at_least_one_and_at_most_the_cap() -> None:
    assert MemoryBudget(activation_bytes=0).max_images_for("sd1", 512, 512) == 1
    assert MemoryBudget(activation_bytes=1).max_images_for("sdxl", 2048, 2048) == 1
    assert MemoryBudget(max_images=8, activation_bytes=1 << 50).max_images_for("sd1", 64, 64) == 8
    with pytest.raises(ValueError):
        MemoryBudget(max_images=0)


def test_sizes_off_the_latent_grid_round_up() -> None:
    per_pixel = ACTIVATION_BYTES_PER_LATENT_PIXEL["sd1"]
    budget = MemoryBudget(max_images=64, activation_bytes=4 * 64 * 64 * per_pixel)
    assert budget.max_images_for("sd1", 512, 512) == 4
    assert budget.max_images_for("sd1", 513, 512) == 3  # 65 x 64 latent pixels


def test_unknown_architecture_costs_as_much_as_the_dearest() -> None:
    dearest = max(ACTIVATION_BYTES_PER_LATENT_PIXEL.values())
    budget = MemoryBudget(max_images=64, activation_bytes=7 * 64 * 64 * dearest)
    assert budget.max_images_for("unknown", 512, 512) == 7
    assert budget.max_images_for("something-new", 512, 512) == 7


def test_cuda_activation_budget() -> None:
    assert cuda_activation_budget(80 * GIB, 10 * GIB) == int(80 * GIB * 0.85) - 10 * GIB
    assert cuda_activation_budget(20 * GIB, 5 * GIB, reserve_fraction=0.0) == 15 * GIB
    assert cuda_activation_budget(8 * GIB, 8 * GIB) == 0  # never negative
    with pytest.raises(ValueError):
        cuda_activation_budget(8 * GIB, 0, reserve_fraction=1.0)
