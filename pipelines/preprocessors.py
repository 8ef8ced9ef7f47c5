"""ControlNet preprocessors: an input image -> a control map (edges, lines, depth, pose...).

One data table, PREPROCESSORS, says for each code (the A1111 / PICPIK names: canny, mlsd, depth,
lineart_anime, openpose_full...) which detector makes the map, which weight files it needs, which
options it takes (neutral snake_case names -> the detector's keywords, with their defaults) and
which fixed arguments select its variant. Detectors are controlnet-aux's; a few weightless ones
that controlnet-aux lacks (scribble_xdog, recolor_*, invert) follow A1111's code here.

Weights are the lllyasviel/Annotators files, read from `<models_dir>/annotators/` (nothing is
downloaded); a missing one fails the job with MODEL_UNAVAILABLE naming the file and the folder.
They are .pth pickles: torch.load reads them with its weights-only unpickler (torch's default),
so a file cannot run code. Loaded detectors stay in the worker's component cache.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
from PIL import Image

from models.cache import PipelineCache
from pipelines.jobs import ErrorCode, JobError, PreprocessorInfo

ANNOTATORS_DIR = "annotators"  # under the models directory
ANNOTATORS_REPO = "lllyasviel/Annotators"  # where the weight files come from
NO_PREPROCESSOR = "none"  # the image already is a control map
MIN_RESOLUTION = 64  # detectors round sizes to multiples of 64
Detector = Callable[..., Image.Image]


@dataclass(frozen=True)
class Option:
    """A tunable of a preprocessor: the detector keyword it sets, and its default."""

    argument: str
    default: float


@dataclass(frozen=True)
class Preprocessor:
    """How one code makes its map."""

    detector: str  # a controlnet_aux class name, or a key of LOCAL_DETECTORS
    files: Mapping[str, str] = field(default_factory=dict)  # from_pretrained kw -> file
    options: Mapping[str, Option] = field(default_factory=dict)  # neutral name -> keyword
    fixed: Mapping[str, Any] = field(default_factory=dict)  # the variant: scribble=True...
    sizes: tuple[str, ...] = ("detect_resolution", "image_resolution")  # get unit.resolution
    seeded: bool = False  # draws from numpy's global RNG: seeded from the job for repeatability


# --- A1111's weightless maps that controlnet-aux lacks ------------------------------------------


def _hwc3(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _resized(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """controlnet-aux's resize_image: shorter side to resolution, sides rounded to 64."""
    return controlnet_aux().util.resize_image(pixels, resolution)


def scribble_xdog(
    input_image: Image.Image,
    detect_resolution: int = 512,
    threshold: float = 32,
    output_type: str = "pil",
) -> Image.Image:
    """XDoG scribble (A1111's scribble_xdog): white where a difference of Gaussians is strong.

    Resized like the controlnet-aux detectors (A1111 pads to 64 instead), and computed in int32
    where A1111's uint8 product wraps around for very strong edges."""
    pixels = _resized(_hwc3(input_image), detect_resolution).astype(np.float32)
    g1 = cv2.GaussianBlur(pixels, (0, 0), 0.5)
    g2 = cv2.GaussianBlur(pixels, (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros(pixels.shape, dtype=np.uint8)
    result[2 * (255 - dog.astype(np.int32)) > threshold] = 255
    return Image.fromarray(result)


def _recolor(conversion: int, channel: int) -> Detector:
    """A1111's recolor_*: one channel of a colour space, gamma-adjusted, as grey."""

    def recolor(
        input_image: Image.Image, gamma: float = 1.0, output_type: str = "pil"
    ) -> Image.Image:
        values = cv2.cvtColor(_hwc3(input_image), conversion)[:, :, channel]
        values = (values.astype(np.float32) / 255.0) ** gamma
        grey = (values * 255.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")

    return recolor


def invert(input_image: Image.Image, output_type: str = "pil") -> Image.Image:
    """White background, black lines -> the black background, white lines ControlNets expect."""
    return Image.fromarray(255 - _hwc3(input_image))


LOCAL_DETECTORS: dict[str, Detector] = {
    "XDoG": scribble_xdog,
    # A1111 converts its RGB arrays with cv2's BGR codes; kept, so maps match A1111's.
    "RecolorLuminance": _recolor(cv2.COLOR_BGR2LAB, 0),
    "RecolorIntensity": _recolor(cv2.COLOR_BGR2HSV, 2),
    "Invert": invert,
}


# --- the table ----------------------------------------------------------------------------------

_HED = {"filename": "ControlNetHED.pth"}
_PIDI = {"filename": "table5_pidinet.pth"}
_LINEART = {"filename": "sk_model.pth", "coarse_filename": "sk_model2.pth"}
_LERES = {"filename": "res101.pth", "pix2pix_filename": "latest_net_G.pth"}
_OPENPOSE = {
    "filename": "body_pose_model.pth",
    "hand_filename": "hand_pose_model.pth",
    "face_filename": "facenet.pth",
}
_LERES_OPTIONS = {"remove_near": Option("thr_a", 0.0), "remove_background": Option("thr_b", 0.0)}


def _openpose(body: bool, hand: bool, face: bool) -> Preprocessor:
    fixed = {"include_body": body, "include_hand": hand, "include_face": face}
    return Preprocessor("OpenposeDetector", _OPENPOSE, fixed=fixed)


PREPROCESSORS: dict[str, Preprocessor] = {
    "canny": Preprocessor(
        "CannyDetector",
        options={
            "low_threshold": Option("low_threshold", 100),
            "high_threshold": Option("high_threshold", 200),
        },
    ),
    "mlsd": Preprocessor(
        "MLSDdetector",
        {"filename": "mlsd_large_512_fp32.pth"},
        options={
            "value_threshold": Option("thr_v", 0.1),
            "distance_threshold": Option("thr_d", 0.1),
        },
    ),
    "shuffle": Preprocessor("ContentShuffleDetector", seeded=True),
    "lineart_standard": Preprocessor(
        "LineartStandardDetector",
        options={
            "gaussian_sigma": Option("guassian_sigma", 6.0),  # sic, controlnet-aux's keyword
            "intensity_threshold": Option("intensity_threshold", 8),
        },
        sizes=("detect_resolution",),
    ),
    "lineart": Preprocessor("LineartDetector", _LINEART, fixed={"coarse": False}),
    "lineart_coarse": Preprocessor("LineartDetector", _LINEART, fixed={"coarse": True}),
    "lineart_anime": Preprocessor("LineartAnimeDetector", {"filename": "netG.pth"}),
    "hed": Preprocessor("HEDdetector", _HED),
    "softedge_hed": Preprocessor("HEDdetector", _HED),
    "softedge_hedsafe": Preprocessor("HEDdetector", _HED, fixed={"safe": True}),
    "scribble_hed": Preprocessor("HEDdetector", _HED, fixed={"scribble": True}),
    "softedge_pidinet": Preprocessor("PidiNetDetector", _PIDI),
    "softedge_pidisafe": Preprocessor("PidiNetDetector", _PIDI, fixed={"safe": True}),
    "scribble_pidinet": Preprocessor("PidiNetDetector", _PIDI, fixed={"scribble": True}),
    "scribble_xdog": Preprocessor(
        "XDoG",
        options={"threshold": Option("threshold", 32)},
        sizes=("detect_resolution",),
    ),
    "depth": Preprocessor("MidasDetector", {"filename": "dpt_hybrid-midas-501f0c75.pt"}),
    "depth_midas": Preprocessor("MidasDetector", {"filename": "dpt_hybrid-midas-501f0c75.pt"}),
    "depth_leres": Preprocessor("LeresDetector", _LERES, _LERES_OPTIONS, {"boost": False}),
    "depth_leres++": Preprocessor("LeresDetector", _LERES, _LERES_OPTIONS, {"boost": True}),
    "depth_zoe": Preprocessor("ZoeDetector", {"filename": "ZoeD_M12_N.pt"}),
    "normal_bae": Preprocessor("NormalBaeDetector", {"filename": "scannet.pt"}),
    "openpose": _openpose(body=True, hand=False, face=False),
    "openpose_hand": _openpose(body=True, hand=True, face=False),
    "openpose_face": _openpose(body=True, hand=False, face=True),
    "openpose_faceonly": _openpose(body=False, hand=False, face=True),
    "openpose_full": _openpose(body=True, hand=True, face=True),
    "recolor_luminance": Preprocessor(
        "RecolorLuminance", options={"gamma": Option("gamma", 1.0)}, sizes=()
    ),
    "recolor_intensity": Preprocessor(
        "RecolorIntensity", options={"gamma": Option("gamma", 1.0)}, sizes=()
    ),
    "invert": Preprocessor("Invert", sizes=()),
}


# --- lookups ------------------------------------------------------------------------------------


def is_map(code: str | None) -> bool:
    """True when the unit's image is used as the control map as it is."""
    return code is None or code == NO_PREPROCESSOR


def preprocessor_spec(code: str) -> Preprocessor:
    spec = PREPROCESSORS.get(code)
    if spec is None:
        known = ", ".join([NO_PREPROCESSOR, *PREPROCESSORS])
        raise JobError(
            ErrorCode.INVALID_INPUT, f"unknown preprocessor {code!r}; known ones: {known}"
        )
    return spec


def call_options(code: str, options: Mapping[str, float]) -> dict[str, Any]:
    """The detector keywords for a unit's options (defaults filled in); unknown names refused."""
    spec = preprocessor_spec(code)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"preprocessor {code!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {allowed}",
        )
    return {
        option.argument: options.get(name, option.default) for name, option in spec.options.items()
    }


def annotators_dir(models_dir: Path | None) -> Path | None:
    return None if models_dir is None else models_dir / ANNOTATORS_DIR


def missing_files(spec: Preprocessor, models_dir: Path | None) -> list[str]:
    folder = annotators_dir(models_dir)
    return [f for f in spec.files.values() if folder is None or not (folder / f).is_file()]


def install_hint(code: str, missing: list[str], models_dir: Path | None) -> str:
    folder = annotators_dir(models_dir)
    where = f"{folder}/" if folder is not None else "<models_dir>/annotators/"
    return (
        f"preprocessor {code!r} needs its weights: install {', '.join(missing)} "
        f"({ANNOTATORS_REPO}) into {where}"
    )


def list_preprocessors(models_dir: Path | None) -> list[PreprocessorInfo]:
    """Every preprocessor code, whether its weights are installed and the options it takes."""
    infos = [PreprocessorInfo(NO_PREPROCESSOR, available=True)]
    for code, spec in PREPROCESSORS.items():
        missing = missing_files(spec, models_dir)
        infos.append(
            PreprocessorInfo(
                code,
                available=not missing,
                hint=install_hint(code, missing, models_dir) if missing else "",
                options=tuple(spec.options),
                defaults=MappingProxyType({n: o.default for n, o in spec.options.items()}),
            )
        )
    return infos


# --- running ------------------------------------------------------------------------------------


def preprocess(
    code: str,
    image: Image.Image,
    *,
    resolution: int,
    options: Mapping[str, float],
    models_dir: Path | None,
    cache: PipelineCache | None = None,
    seed: int = 0,
) -> Image.Image:
    """The control map (RGB) of image by the preprocessor `code`, made at `resolution`."""
    spec = preprocessor_spec(code)
    arguments = call_options(code, options)
    if spec.sizes and resolution < MIN_RESOLUTION:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"preprocessor resolution {resolution} is below the minimum of {MIN_RESOLUTION}",
        )
    detector = _detector(code, spec, models_dir, cache)
    sizes = dict.fromkeys(spec.sizes, resolution)
    with _numpy_seed(seed if spec.seeded else None):
        result = detector(
            image.convert("RGB"), **sizes, **spec.fixed, **arguments, output_type="pil"
        )
    return result.convert("RGB")


def _detector(
    code: str, spec: Preprocessor, models_dir: Path | None, cache: PipelineCache | None
) -> Detector:
    local = LOCAL_DETECTORS.get(spec.detector)
    if local is not None:
        return local
    missing = missing_files(spec, models_dir)
    if missing:
        raise JobError(ErrorCode.MODEL_UNAVAILABLE, install_hint(code, missing, models_dir))

    def load() -> Detector:
        return _load(code, spec, annotators_dir(models_dir), cache)

    if cache is None:
        return load()
    key = ("preprocessor", spec.detector, tuple(spec.files.values()), str(models_dir))
    return cache.component(key, load)


def controlnet_aux() -> Any:
    """The controlnet_aux package, imported on first use without its warnings about optional
    packages (mediapipe...) and timm registry names that no preprocessor here needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("controlnet_aux")


def _load(code: str, spec: Preprocessor, folder: Path | None, cache: PipelineCache | None) -> Any:
    try:
        cls = getattr(controlnet_aux(), spec.detector)
        detector = cls.from_pretrained(str(folder), **spec.files) if spec.files else cls()
        if cache is not None and hasattr(detector, "to"):
            detector = detector.to(cache.device)
    except Exception as e:  # a corrupt or wrong file, a missing optional package
        files = ", ".join(spec.files.values())
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"preprocessor {code!r}: cannot load {files or spec.detector} from {folder}: "
            f"{type(e).__name__}: {e}; install the original files from {ANNOTATORS_REPO}",
        ) from e
    return detector


_NUMPY_RNG = threading.Lock()  # one worker thread per device may preprocess at the same time


@contextmanager
def _numpy_seed(seed: int | None) -> Iterator[None]:
    """numpy's global RNG seeded for one call, then restored (controlnet-aux draws from it)."""
    if seed is None:
        yield
        return
    with _NUMPY_RNG:
        state = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)
