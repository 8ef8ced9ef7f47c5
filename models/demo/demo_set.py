"""The demo set: a tiny random model of every kind easel serves, built once into the data directory.

Next to the demo checkpoints (SD 1.x, the default, and SDXL) it holds a ControlNet for each of
PICPIK's ControlNet codes, the `ip-adapter_sd15` IP-Adapter with its CLIP image encoder, and one
model per utility (background removal, captions, prompt enhancement, upscaling, translation, NSFW
check). Each is saved in the format its real counterpart ships in and loads through the same
loader, so a fresh server answers every action offline. They are random: they draw noise (and
the safety checker flags nothing), which every listing says. An installed model of the same kind
and code takes precedence (models/catalogue.py; utilities: models/utility_models.py).

Layout under the root (data_dir/demo), the utility folders named as in a models directory:

    easel-demo/  easel-demo-xl/                 the checkpoints (diffusers folders)
    controlnet/<code>/                          diffusers ControlNet folders, one weights file
    ipadapter/ip-adapter_sd15.safetensors       h94's flat layout
    ipadapter/image_encoder/                    its encoder, where h94 keeps it
    background-removal/easel-demo/ ...          Hugging Face repository folders (upscaler: a file)
    easel-demo-set.json                         version marker, written last

Building takes a few seconds on a CPU, with fixed seeds: the same torch version builds the same
weights. A root whose marker has the current version is reused as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

from models.catalogue import Architecture, ModelKind, ModelSpec, WeightFormat
from models.demo.checkpoint import DEMO_CHECKPOINTS, demo_spec, ensure_demo_model
from models.utility_models import LAYOUTS, Utility

DEMO_SET_VERSION = 1  # bump when a model below changes, so old builds are replaced
SET_MARKER = "easel-demo-set.json"
LOCK_FILE = ".easel-demo-set.lock"
DEMO_NAME = "easel-demo"  # the demo utility models' name (what a request may name them by)

# PICPIK's documented ControlNet codes (lllyasviel's v1.1 SD 1.5 names and ioclab's recolor).
CONTROLNET_CODES: tuple[str, ...] = (
    "control_v11p_sd15_canny",
    "control_v11f1p_sd15_depth",
    "control_v11p_sd15_mlsd",
    "control_v11p_sd15_lineart",
    "control_v11p_sd15s2_lineart_anime",
    "control_v11p_sd15_normalbae",
    "control_v11p_sd15_openpose",
    "control_v11p_sd15_scribble",
    "control_v11p_sd15_inpaint",
    "control_v11e_sd15_ip2p",
    "control_v11e_sd15_shuffle",
    "ioclab_sd15_recolor",
)
IP_ADAPTER_CODE = "ip-adapter_sd15"  # PICPIK lists it among the ControlNet codes
CONTROLNET_FOLDER = "controlnet"
IP_ADAPTER_FOLDER = "ipadapter"
ENCODER_FOLDER = "image_encoder"
UPSCALER_FILE = f"{DEMO_NAME}.safetensors"
UPSCALE_FACTOR = 4  # like RealESRGAN_x4plus


def _utility_folder(utility: Utility) -> str:
    return LAYOUTS[utility].folders[0]


def _utility_path(root: Path, utility: Utility) -> Path:
    name = UPSCALER_FILE if utility is Utility.UPSCALE else DEMO_NAME
    return root / _utility_folder(utility) / name


# --- building ------------------------------------------------------------------------------------


def _build_controlnets(root: Path) -> None:
    """One random ControlNet saved once; every code's folder links to its files."""
    from models.demo.controlnet import demo_controlnet, save_controlnet_folder

    first = save_controlnet_folder(
        demo_controlnet(), root / CONTROLNET_FOLDER / CONTROLNET_CODES[0]
    )
    for code in CONTROLNET_CODES[1:]:
        folder = root / CONTROLNET_FOLDER / code
        folder.mkdir(parents=True)
        for file in first.iterdir():
            _link_or_copy(file, folder / file.name)


def _build_ip_adapter(root: Path) -> None:
    import torch

    from models.demo.checkpoint import demo_unet
    from models.demo.ip_adapter import (
        ip_adapter_state,
        save_image_encoder,
        save_ip_adapter,
        tiny_image_encoder,
    )

    torch.manual_seed(0)
    unet = demo_unet()  # only its layout matters: which cross-attentions, how wide
    folder = root / IP_ADAPTER_FOLDER
    save_ip_adapter(
        ip_adapter_state(unet, image_embed_dim=32), folder / f"{IP_ADAPTER_CODE}.safetensors"
    )
    save_image_encoder(tiny_image_encoder(projection_dim=32), folder / ENCODER_FOLDER)


def _build_rmbg(path: Path) -> None:
    from models.demo.rmbg import save_tiny_rmbg

    save_tiny_rmbg(path, "BriaRMBG")


def _build_caption(path: Path) -> None:
    from models.demo.blip import save_tiny_blip

    save_tiny_blip(path)


def _build_prompt_enhance(path: Path) -> None:
    from models.demo.text_models import save_tiny_causal_lm

    save_tiny_causal_lm(path)


def _build_upscaler(path: Path) -> None:
    from models.demo.upscaler import save_tiny_upscaler

    save_tiny_upscaler(path, scale=UPSCALE_FACTOR)


def _build_translation(path: Path) -> None:
    from models.demo.text_models import save_tiny_m2m100

    save_tiny_m2m100(path)


def _build_safety_checker(path: Path) -> None:
    from models.demo.safety_checker import save_tiny_safety_checker

    save_tiny_safety_checker(path)  # flags nothing


UTILITY_BUILDERS: dict[Utility, Callable[[Path], None]] = {
    Utility.BACKGROUND_REMOVAL: _build_rmbg,
    Utility.CAPTION: _build_caption,
    Utility.PROMPT_ENHANCE: _build_prompt_enhance,
    Utility.UPSCALE: _build_upscaler,
    Utility.TRANSLATION: _build_translation,
    Utility.SAFETY_CHECKER: _build_safety_checker,
}


def ensure_demo_set(root: Path) -> Path:
    """Build the whole demo set under root once (the checkpoints each keep their own marker);
    later calls reuse it. Processes starting at once on one data directory (an API replica and
    a worker) build it once: the others wait for the first. Returns root."""
    with _locked(root):
        for code in DEMO_CHECKPOINTS:
            ensure_demo_model(root, code)
        if not _current(root):
            _build(root)
    return root


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock on root's lock file (none where the OS has no flock)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _build(root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=".demo-set-build-") as tmp:
        staging = Path(tmp)
        _quiet_progress_bars()
        _build_controlnets(staging)
        _build_ip_adapter(staging)
        for utility, build in UTILITY_BUILDERS.items():
            build(_utility_path(staging, utility))
        for part in sorted(staging.iterdir()):
            dest = root / part.name
            if dest.exists():
                shutil.rmtree(dest)
            part.rename(dest)
    (root / SET_MARKER).write_text(json.dumps({"version": DEMO_SET_VERSION}))


def _current(root: Path) -> bool:
    marker = root / SET_MARKER
    try:
        return json.loads(marker.read_text()).get("version") == DEMO_SET_VERSION
    except (OSError, ValueError):
        return False


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, dest)


def _quiet_progress_bars() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


# --- what it holds -------------------------------------------------------------------------------

_NOISE = "Tiny random {what} of easel's demo set: it draws noise"


def demo_specs(root: Path) -> list[ModelSpec]:
    """The catalogue entries of a demo set built under root: checkpoints (the default first),
    ControlNets, the IP-Adapter."""
    specs = [demo_spec(root / code, code) for code in DEMO_CHECKPOINTS]
    for code in CONTROLNET_CODES:
        specs.append(
            ModelSpec(
                code=code,
                name=code,
                kind=ModelKind.CONTROLNET,
                architecture=Architecture.SD1,
                path=root / CONTROLNET_FOLDER / code,
                weight_format=WeightFormat.DIFFUSERS,
                description=(
                    _NOISE.format(what="ControlNet")
                    + f", and fits only the easel-demo checkpoint. Put the real {code}."
                    "safetensors into the models directory's controlnet/ folder."
                ),
                is_demo=True,
            )
        )
    specs.append(
        ModelSpec(
            code=IP_ADAPTER_CODE,
            name=IP_ADAPTER_CODE,
            kind=ModelKind.IP_ADAPTER,
            architecture=Architecture.SD1,
            path=root / IP_ADAPTER_FOLDER / f"{IP_ADAPTER_CODE}.safetensors",
            weight_format=WeightFormat.SAFETENSORS,
            description=(
                _NOISE.format(what="IP-Adapter")
                + ", and fits only the easel-demo checkpoint. Put h94's ip-adapter_sd15"
                ".safetensors and its image encoder into the models directory's ipadapter/ folder."
            ),
            is_demo=True,
        )
    )
    return specs
