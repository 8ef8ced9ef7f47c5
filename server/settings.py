"""Server settings: the options of `easel serve`, each also settable through an EASEL_*
environment variable (server/options.py)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from server.limits import Limits
from server.options import SETTINGS_DEFAULTS as DEFAULTS


@dataclass(frozen=True)
class Settings:
    """What `easel serve` runs with. Each field but `limits` is one option of the table in
    server/options.py, which holds its default, flag, variable and meaning."""

    host: str = DEFAULTS["host"]
    port: int = DEFAULTS["port"]
    data_dir: Path = DEFAULTS["data_dir"]
    models_dir: Path | None = DEFAULTS["models_dir"]  # None: <data_dir>/models
    keys_file: Path | None = DEFAULTS["keys_file"]  # None: an open server
    public_url: str | None = DEFAULTS["public_url"]  # None: the URL the client called
    insecure: bool = DEFAULTS["insecure"]
    allow_pickle: bool = DEFAULTS["allow_pickle"]
    max_queue: int = DEFAULTS["max_queue"]
    max_batch_images: int | None = DEFAULTS["max_batch_images"]  # None: the engine's
    batch_window_ms: float = DEFAULTS["batch_window_ms"]
    compile: bool = DEFAULTS["compile"]
    dtype: str = DEFAULTS["dtype"]
    retention_hours: float = DEFAULTS["retention_hours"]
    devices: tuple[str, ...] = DEFAULTS["devices"]  # empty: every CUDA device, else CPU
    url_allow: tuple[str, ...] = DEFAULTS["url_allow"]  # CIDR, from --allow-url-net
    broker_url: str | None = DEFAULTS["broker_url"]  # None: not an API replica
    shutdown_grace_s: float = DEFAULTS["shutdown_grace_s"]
    preload: tuple[str, ...] = DEFAULTS["preload"]  # "": the default checkpoint
    # what one request may ask: body, image, pixel, prompt and WebSocket limits
    limits: Limits = field(default_factory=Limits)

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
