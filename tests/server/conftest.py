"""Server-test fixtures: the direct diffusers pipeline the parity tests compare against."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline

from models.compat import apply_compat


@pytest.fixture(scope="module")
def reference(demo_dir: Path) -> StableDiffusionPipeline:
    """The demo checkpoint loaded by diffusers itself, once per test module."""
    pipe = StableDiffusionPipeline.from_pretrained(demo_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # diffusers' clip-skip path needs the pre-transformers-5 attribute: the same bridge as the
    # server's loader (models/compat.py); it changes no computation.
    return apply_compat(pipe)
