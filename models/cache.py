"""Loaded checkpoints kept per device, least recently used evicted first.

Only the device's worker thread touches its cache (diffusers pipelines are not thread-safe), so
it needs no lock. The bound is a count of checkpoints. On CUDA the UNet and VAE are put in
channels_last memory format once at load: convolutions run faster that way in half precision.
An optional listener hears of each checkpoint loaded or evicted (the engine's metrics count them).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from models.catalogue import Architecture, ModelSpec
from models.loader import load_pipeline, load_vae

log = logging.getLogger(__name__)

T = TypeVar("T")


class CacheEvent(StrEnum):
    LOAD = "load"
    EVICT = "evict"


# (event, checkpoint code, seconds the load took: 0 for evictions), called on the worker thread
CacheListener = Callable[[CacheEvent, str, float], None]


class PipelineCache:
    def __init__(
        self,
        device: str,
        dtype: torch.dtype,
        *,
        max_models: int = 1,
        cache_dir: Path | None = None,
        allow_pickle: bool = False,
        listener: CacheListener | None = None,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.max_models = max_models
        self.cache_dir = cache_dir
        self.allow_pickle = allow_pickle
        self.listener = listener
        self._loaded: OrderedDict[tuple[str, str], DiffusionPipeline] = OrderedDict()
        self._vaes: dict[tuple[str, Architecture], AutoencoderKL] = {}
        self._components: OrderedDict[Hashable, Any] = OrderedDict()

    def holds(self, code: str) -> bool:
        """Whether the checkpoint `code` is loaded here (the engine's model affinity)."""
        return code in self.loaded()

    def loaded(self) -> list[str]:
        """Codes of the checkpoints loaded here, least recently used first (any thread)."""
        return [code for _kind, code in list(self._loaded)]

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
            if self.listener is not None:
                self.listener(CacheEvent.EVICT, code, 0.0)
        log.info("loading %s onto %s", spec.code, self.device)
        started = time.perf_counter()
        pipe = load_pipeline(
            spec,
            device=self.device,
            dtype=self.dtype,
            allow_pickle=self.allow_pickle,
            cache_dir=self.cache_dir,
        )
        if self.device.startswith("cuda"):
            _channels_last(pipe)
        self._loaded[key] = pipe
        if self.listener is not None:
            self.listener(CacheEvent.LOAD, spec.code, time.perf_counter() - started)
        return pipe

    def get_vae(self, spec: ModelSpec, architecture: Architecture) -> AutoencoderKL:
        """A standalone VAE configured for the architecture it decodes for (its latent scale
        differs between SD 1.x and SDXL). VAEs are small: the few in use stay loaded."""
        key = (spec.code, architecture)
        vae = self._vaes.get(key)
        if vae is None:
            log.info("loading VAE %s onto %s", spec.code, self.device)
            vae = load_vae(
                spec,
                device=self.device,
                dtype=self.dtype,
                architecture=architecture,
                allow_pickle=self.allow_pickle,
            )
            self._vaes[key] = vae
        return vae

    def component(self, key: Hashable, load: Callable[[], T], *, keep: int = 8) -> T:
        """A loaded auxiliary model (ControlNet, image encoder, preprocessor, adapter weights...)
        kept by key; the `keep` most recently used stay, older ones are dropped."""
        if key in self._components:
            self._components.move_to_end(key)
            return self._components[key]
        log.info("loading %s onto %s", key, self.device)
        value = load()
        self._components[key] = value
        while len(self._components) > keep:
            self._components.popitem(last=False)
        return value


def _channels_last(pipe: DiffusionPipeline) -> None:
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)
