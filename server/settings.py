"""Server settings: CLI flags, each also settable through an EASEL_* environment variable."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from server.limits import Limits


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = Path("easel-data")
    models_dir: Path | None = None  # None: <data_dir>/models
    keys_file: Path | None = None
    public_url: str | None = None  # base of result URLs; None: the URL the client called
    insecure: bool = False  # serve without keys on a non-loopback address
    allow_pickle: bool = False  # load .ckpt/.pt/.bin checkpoints (they can run code)
    max_queue: int = 64
    max_batch_images: int | None = None  # images per batch; None: the engine's default
    batch_window_ms: float = 10.0  # how long a partly filled batch may wait for more jobs
    compile: bool = False  # torch.compile the UNet (GPU; slow first batches per size)
    dtype: str = "auto"  # model weights and activations: auto (fp16 on GPUs), fp16, bf16, fp32
    retention_hours: float = 24.0  # results and task records are swept after this
    devices: tuple[str, ...] = ()  # empty: every CUDA device, else the CPU
    # networks (CIDR) that client-given URLs may reach although private/loopback/link-local
    url_allow: tuple[str, ...] = ()
    # redis://HOST:PORT/N: run as an API replica of a cluster (jobs go to `easel worker`s)
    broker_url: str | None = None
    # what one request may ask: body, image, pixel, prompt and WebSocket limits
    limits: Limits = field(default_factory=Limits)
    # SIGTERM: in-flight HTTP requests may finish within this, then the running batch may too;
    # jobs still waiting (or cut at the end) run again at the next start
    shutdown_grace_s: float = 30.0
    # checkpoints each GPU worker loads at start, so the server is ready (GET /readyz) before
    # its first job; "" is the catalogue's default checkpoint (EngineConfig.preload)
    preload: tuple[str, ...] = ()

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
