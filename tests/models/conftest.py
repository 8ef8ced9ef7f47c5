"""Tiny models built once per session, and the helpers tests use to lay out models directories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from tests.models.tiny import tiny_sd1_pipeline, tiny_sdxl_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a shared CPU extra threads spin and wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("easel-cache")


@pytest.fixture(scope="session")
def sd1_pipe(tokenizer_cache: Path) -> DiffusionPipeline:
    return tiny_sd1_pipeline(tokenizer_cache / "tokenizers")


@pytest.fixture(scope="session")
def sd1_inpaint_pipe(tokenizer_cache: Path) -> DiffusionPipeline:
    return tiny_sd1_pipeline(tokenizer_cache / "tokenizers", inpainting=True)


@pytest.fixture(scope="session")
def sdxl_pipe(tokenizer_cache: Path) -> DiffusionPipeline:
    return tiny_sdxl_pipeline(tokenizer_cache / "tokenizers")


@pytest.fixture(scope="session")
def sdxl_inpaint_pipe(tokenizer_cache: Path) -> DiffusionPipeline:
    return tiny_sdxl_pipeline(tokenizer_cache / "tokenizers", inpainting=True)
