"""Build a models directory for the benchmarks: one checkpoint with random weights.

    python scripts/bench_models.py --out /tmp/bench-sd15 --arch sd15 [--device cuda]

`sd15` and `sdxl` are full-size architectures built from easel's bundled configs
(models/configs/<arch>: the same layers, hence the same FLOPs, as the real SD 1.5 and SDXL base
weights) with torch's default random initialisation, saved in fp16 as a diffusers folder
(safetensors) at OUT/checkpoints/<name>/. `tiny` copies easel's embedded demo model (the one the
server ships and builds on first start), so CPU numbers use exactly that model.

Random weights draw noise, but compute costs the same as with trained weights. Building the
modules on the target device (`--device cuda`) makes the initialisation of SDXL's 2.6 billion
UNet parameters take seconds instead of minutes. Nothing is downloaded: the CLIP tokenizers are
derived from the bundled vocabulary (models/tokenizer.py), as easel itself does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Bundled config folder per benchmark architecture (models/configs/<name>).
CONFIG_NAMES: dict[str, str] = {"sd15": "sd15", "sdxl": "sdxl"}
# models.catalogue.Architecture value per benchmark architecture.
FAMILY_NAMES: dict[str, str] = {"sd15": "sd1", "sdxl": "sdxl"}
ARCHITECTURES = (*CONFIG_NAMES, "tiny")
DEFAULT_NAMES: dict[str, str] = {arch: f"bench-{arch}" for arch in ARCHITECTURES}
# model_index.json components that a benchmark pipeline leaves out (SD 1.x's safety checker).
ABSENT_COMPONENTS = frozenset({"safety_checker", "feature_extractor", "image_encoder"})


def _import_repo() -> None:
    """Make the easel packages importable when the script runs from a plain checkout."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def _quiet() -> None:
    """No progress bars or cast warnings from the libraries: the script prints one line."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.disable_progress_bar()
        logging.set_verbosity_error()


def _component(
    name: str, library: str, class_name: str, config_dir: Path, pads: dict[str, str], cache: Path
) -> Any:
    """One pipeline component: tokenizers derived offline, schedulers and models from configs."""
    import diffusers
    import transformers

    from models.tokenizer import clip_tokenizer

    if class_name == "CLIPTokenizer":
        return clip_tokenizer(cache, pad_token=pads[name])
    module = diffusers if library == "diffusers" else transformers
    cls = getattr(module, class_name)
    if name == "scheduler":
        return cls.from_pretrained(config_dir, subfolder="scheduler")
    if library == "diffusers":
        return cls.from_config(cls.load_config(config_dir / name))
    return cls(cls.config_class.from_pretrained(config_dir / name))


def build_random_pipeline(arch: str, device: str, cache: Path, seed: int = 0) -> Any:
    """The full-size pipeline of `arch` with random weights, in fp16 on `device`."""
    _import_repo()
    import torch

    from models.catalogue import Architecture
    from models.loader import CONFIGS_DIR, PIPELINE_CLASSES, PIPELINE_OPTIONS, TOKENIZER_PADS

    family = Architecture(FAMILY_NAMES[arch])
    config_dir = CONFIGS_DIR / CONFIG_NAMES[arch]
    index = json.loads((config_dir / "model_index.json").read_text())
    torch.manual_seed(seed)
    components: dict[str, Any] = {}
    with torch.device(device):
        for name, entry in index.items():
            if name.startswith("_") or not isinstance(entry, list) or name in ABSENT_COMPONENTS:
                continue
            library, class_name = entry
            components[name] = _component(
                name, library, class_name, config_dir, TOKENIZER_PADS[family], cache
            )
    cls = PIPELINE_CLASSES[(family, False)]
    accepted = inspect.signature(cls.__init__).parameters
    absent = {name: None for name in ABSENT_COMPONENTS if name in accepted}
    pipe = cls(**{**absent, **PIPELINE_OPTIONS[cls], **components})
    return pipe.to(dtype=torch.float16)


def write_tiny(dest: Path) -> None:
    """Copy easel's embedded demo model (built deterministically, as the server builds it)."""
    _import_repo()
    from models.demo import ensure_demo_model

    with tempfile.TemporaryDirectory(prefix="easel-bench-demo-") as tmp:
        built = ensure_demo_model(Path(tmp))
        shutil.copytree(built, dest)


def write_model(arch: str, out: Path, name: str, device: str) -> Path:
    """Write the checkpoint folder OUT/checkpoints/NAME (replacing an older one)."""
    dest = out / "checkpoints" / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if arch == "tiny":
        write_tiny(dest)
        return dest
    with tempfile.TemporaryDirectory(prefix="easel-bench-tok-") as cache:
        pipe = build_random_pipeline(arch, device, Path(cache))
    pipe.save_pretrained(dest, safe_serialization=True)
    return dest


def catalogue_code(out: Path, folder: Path) -> str:
    """The code easel's catalogue gives the folder; SystemExit if the scan does not take it."""
    _import_repo()
    from models.scan import scan_models_dir

    scan = scan_models_dir(out)
    for spec in scan.specs:
        if Path(spec.path).resolve() == folder.resolve():
            return spec.code
    reasons = [f"{s.path}: {s.reason}" for s in scan.skipped]
    raise SystemExit(f"easel's scan did not pick up {folder}: {reasons or 'not found'}")


def parameter_count(folder: Path) -> int:
    """Parameters of the UNet, read from its safetensors header (no weights loaded)."""
    _import_repo()
    from models.arch import read_safetensors_header

    files = sorted((folder / "unet").glob("*.safetensors"))
    return sum(
        math.prod(info.shape) for path in files for info in read_safetensors_header(path).values()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the models directory to write")
    parser.add_argument("--arch", choices=ARCHITECTURES, required=True)
    parser.add_argument("--name", help="checkpoint folder name (default bench-ARCH)")
    parser.add_argument(
        "--device", default=None, help="where to initialise (default: cuda if present, else cpu)"
    )
    args = parser.parse_args()
    import torch

    _quiet()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    folder = write_model(args.arch, args.out, args.name or DEFAULT_NAMES[args.arch], device)
    code = catalogue_code(args.out, folder)
    print(
        f"wrote {folder} in {time.perf_counter() - started:.1f}s: UNet "
        f"{parameter_count(folder) / 1e6:.0f}M parameters; easel model code: {code}"
    )


if __name__ == "__main__":
    main()
