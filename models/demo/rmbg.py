"""Tiny background-removal models, saved as the Hugging Face repository folders users install.

briaai/RMBG-1.4 and ZhengPeng7/BiRefNet (briaai/RMBG-2.0 is a BiRefNet) ship as remote-code
repositories: config.json whose auto_map points at the folder's own Python files (a config class
and a PreTrainedModel), plus model.safetensors. The folders written here have the same files,
names, config keys and output conventions, with a network small enough for CPU tests:

- BriaRMBG: input normalised with mean 0.5 / std 1.0; forward returns (side masks, features)
  where side masks[0] is a SIGMOID mask at the input size (RMBG-1.4's `[F.sigmoid(d1), ...]`).
- BiRefNet: input normalised with ImageNet's mean / std; forward returns a list of LOGITS maps,
  coarse to fine, whose [-1] is the prediction (BiRefNet's `scaled_preds`). Like the real
  birefnet.py, the model replaces `self.config` with a plain architecture object after
  PreTrainedModel's init.

Every weight is random (torch.manual_seed) except one hand-set path that makes the mask mean
something: a pixel's foreground logit grows with its brightness (mean of R, G, B), so bright
subjects on dark backgrounds are cut out and tests can see what each option does. The input
convolution works on 4 x 4 patches (stride 4, which keeps a 1024 x 1024 forward pass cheap on a
CPU) and the bilinear upsampling back gives the mask a soft edge, like a real model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

FAMILIES = ("BriaRMBG", "BiRefNet")
WIDTH = 8  # feature channels
NOISE = 0.02  # scale of the random weights off the brightness path

_RMBG_CONFIG_PY = """\
from transformers import PretrainedConfig


class RMBGConfig(PretrainedConfig):
    model_type = "SegformerForSemanticSegmentation"

    def __init__(self, in_ch=3, out_ch=1, width=8, gain=12.0, **kwargs):
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.width = width
        self.gain = gain
        super().__init__(**kwargs)
"""

_RMBG_MODEL_PY = '''\
"""A tiny stand-in for briaai/RMBG-1.4's briarmbg.py (same output convention)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel

from .MyConfig import RMBGConfig


def _upsample_like(src, tar):
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear")


class BriaRMBG(PreTrainedModel):
    config_class = RMBGConfig

    def __init__(self, config: RMBGConfig = RMBGConfig()):
        super().__init__(config)
        width = config.width
        self.conv_in = nn.Conv2d(config.in_ch, width, 4, stride=4)
        self.stage1 = nn.Conv2d(width, width, 3, padding=1)
        self.side1 = nn.Conv2d(width, config.out_ch, 3, padding=1)
        self.side2 = nn.Conv2d(width, config.out_ch, 1)
        self.post_init()

    def forward(self, x):
        hxin = F.relu(self.conv_in(x))
        hx1 = self.stage1(hxin)
        d1 = _upsample_like(self.side1(hx1), x)
        d2 = _upsample_like(self.side2(hxin), x)
        return [F.sigmoid(d1), F.sigmoid(d2)], [hx1, hxin]
'''

_BIREFNET_CONFIG_PY = """\
from transformers import PretrainedConfig


class BiRefNetConfig(PretrainedConfig):
    model_type = "SegformerForSemanticSegmentation"

    def __init__(self, bb_pretrained=False, width=8, **kwargs):
        self.bb_pretrained = bb_pretrained
        self.width = width
        super().__init__(**kwargs)
"""

_BIREFNET_MODEL_PY = '''\
"""A tiny stand-in for ZhengPeng7/BiRefNet's birefnet.py (same output convention)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel

from .BiRefNet_config import BiRefNetConfig


class Config:
    """The real model keeps its architecture settings in a plain object like this one."""

    def __init__(self, width=8):
        self.width = width
        self.out_ref = False


class BiRefNet(PreTrainedModel):
    config_class = BiRefNetConfig

    def __init__(self, bb_pretrained=True, config=BiRefNetConfig()):
        super(BiRefNet, self).__init__(config)
        width = config.width
        self.config = Config(width)
        self.bb = nn.Conv2d(3, width, 4, stride=4)
        self.squeeze_module = nn.Conv2d(width, width, 3, padding=1)
        self.conv_coarse = nn.Conv2d(width, 1, 1)
        self.conv_out1 = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x):
        feature = F.relu(self.bb(x))
        refined = self.squeeze_module(feature)
        size = x.shape[2:]
        coarse = F.interpolate(self.conv_coarse(feature), size=size, mode="bilinear")
        fine = F.interpolate(self.conv_out1(refined), size=size, mode="bilinear")
        return [coarse, fine]
'''

# Per family: the folder's files, config.json, and the weight names of the brightness path
# (input conv, the 3x3 middle conv, the 3x3 output conv whose map is the prediction) with the
# gain that turns "mean brightness of the normalised input" into the prediction's logit.
_FILES: dict[str, dict[str, str]] = {
    "BriaRMBG": {"MyConfig.py": _RMBG_CONFIG_PY, "briarmbg.py": _RMBG_MODEL_PY},
    "BiRefNet": {"BiRefNet_config.py": _BIREFNET_CONFIG_PY, "birefnet.py": _BIREFNET_MODEL_PY},
}
_CONFIGS: dict[str, dict[str, object]] = {
    "BriaRMBG": {
        "_name_or_path": "briaai/RMBG-1.4",
        "architectures": ["BriaRMBG"],
        "auto_map": {
            "AutoConfig": "MyConfig.RMBGConfig",
            "AutoModelForImageSegmentation": "briarmbg.BriaRMBG",
        },
        "custom_pipelines": {
            "image-segmentation": {
                "impl": "MyPipe.RMBGPipe",
                "pt": ["AutoModelForImageSegmentation"],
                "tf": [],
                "type": "image",
            }
        },
        "in_ch": 3,
        "model_type": "SegformerForSemanticSegmentation",
        "out_ch": 1,
        "width": WIDTH,
        "torch_dtype": "float32",
        "transformers_version": "4.38.0.dev0",
    },
    "BiRefNet": {
        "_name_or_path": "ZhengPeng7/BiRefNet",
        "architectures": ["BiRefNet"],
        "auto_map": {
            "AutoConfig": "BiRefNet_config.BiRefNetConfig",
            "AutoModelForImageSegmentation": "birefnet.BiRefNet",
        },
        "custom_pipelines": {
            "image-segmentation": {
                "pt": ["AutoModelForImageSegmentation"],
                "tf": [],
                "type": "image",
            }
        },
        "bb_pretrained": False,
        "width": WIDTH,
        "torch_dtype": "float32",
    },
}
_PATHS: dict[str, tuple[str, str, str, float]] = {
    # RMBG-1.4's input is in [-0.5, 0.5]: logits within about +-6
    "BriaRMBG": ("conv_in", "stage1", "side1", 12.0),
    # ImageNet-normalised input spans about [-2.1, 2.6]: logits within about +-6
    "BiRefNet": ("bb", "squeeze_module", "conv_out1", 2.5),
}
_OTHER_OUTPUTS: dict[str, str] = {"BriaRMBG": "side2", "BiRefNet": "conv_coarse"}


def _weights(family: str, seed: int) -> dict[str, torch.Tensor]:
    """Random weights plus the brightness path: channel 0 carries +brightness and channel 1
    -brightness through the ReLU, the middle conv passes them on, the output conv subtracts
    them: logit = gain x (mean of the normalised R, G, B) + small random terms."""
    first, middle, last, gain = _PATHS[family]
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        f"{first}.weight": (WIDTH, 3, 4, 4),
        f"{middle}.weight": (WIDTH, WIDTH, 3, 3),
        f"{last}.weight": (1, WIDTH, 3, 3),
        f"{_OTHER_OUTPUTS[family]}.weight": (1, WIDTH, 1, 1),
    }
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        state[name] = torch.randn(shape, generator=generator) * NOISE
        state[name.replace(".weight", ".bias")] = torch.randn(shape[0], generator=generator) * NOISE
    with torch.no_grad():
        state[f"{first}.weight"][0] = 1.0 / 48.0  # the mean of a 4 x 4 patch's R, G, B
        state[f"{first}.weight"][1] = -1.0 / 48.0
        state[f"{first}.bias"][:2] = 0.0
        state[f"{middle}.weight"][:2] = 0.0
        state[f"{middle}.weight"][0, 0, 1, 1] = 1.0
        state[f"{middle}.weight"][1, 1, 1, 1] = 1.0
        state[f"{middle}.bias"][:2] = 0.0
        state[f"{last}.weight"][0, :2] = 0.0
        state[f"{last}.weight"][0, 0, 1, 1] = gain
        state[f"{last}.weight"][0, 1, 1, 1] = -gain
        state[f"{last}.bias"][0] = 0.0
    return {name: tensor.contiguous() for name, tensor in state.items()}


def save_tiny_rmbg(folder: Path, family: str = "BriaRMBG", seed: int = 0) -> Path:
    """Write a repository folder shaped like briaai/RMBG-1.4 (family "BriaRMBG") or
    ZhengPeng7/BiRefNet / briaai/RMBG-2.0 ("BiRefNet"); returns the folder. Install it as
    models_dir/background-removal/<name>."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in _FILES[family].items():
        (folder / name).write_text(source)
    (folder / "config.json").write_text(json.dumps(_CONFIGS[family], indent=2) + "\n")
    save_file(_weights(family, seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
