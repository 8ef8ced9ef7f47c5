"""Loaded checkpoints kept per device, least recently used evicted first.

Only the device's worker thread touches its cache (diffusers pipelines are not thread-safe), so
it needs no lock. The bound is a count of checkpoints for now; the batching issue turns it into a
memory budget.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from models.catalogue import ModelSpec
from models.compat import apply_compat
from models.loader import load_pipeline

log = logging.getLogger(__name__)

Loader = Callable[[ModelSpec], DiffusionPipeline]


class PipelineCache:
    def __init__(
        self,
        device: str,
        dtype: torch.dtype,
        *,
        max_models: int = 1,
        cache_dir: Path | None = None,
        allow_pickle: bool = False,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.max_models = max_models
        self.cache_dir = cache_dir
        self.allow_pickle = allow_pickle
        self._loaded: OrderedDict[tuple[str, str], DiffusionPipeline] = OrderedDict()

    def get(self, spec: ModelSpec) -> DiffusionPipeline:
        key = (spec.kind.value, spec.code)
        pipe = self._loaded.get(key)
        if pipe is not None:
            self._loaded.move_to_end(key)
            return pipe
        while len(self._loaded) >= self.max_models:
            (_, code), _evicted = self._loaded.popitem(last=False)
            log.info("unloading %s from %s", code, self.device)
            del _evicted
            gc.collect()
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
        log.info("loading %s onto %s", spec.code, self.device)
        pipe = load_pipeline(
            spec,
            device=self.device,
            dtype=self.dtype,
            **self._loader_options(),
        )
        self._loaded[key] = apply_compat(pipe)
        return pipe

    def _loader_options(self) -> dict[str, object]:
        """Options newer loader versions accept (tokenizer cache, pickle opt-in)."""
        import inspect

        params = inspect.signature(load_pipeline).parameters
        options: dict[str, object] = {}
        if "cache_dir" in params:
            options["cache_dir"] = self.cache_dir
        if "allow_pickle" in params:
            options["allow_pickle"] = self.allow_pickle
        return options

    def loaded_codes(self) -> list[str]:
        return [code for _, code in self._loaded]
