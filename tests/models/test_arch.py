"""Detection from safetensors headers and diffusers configs, without reading weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from diffusers import DiffusionPipeline

from models.arch import (
    ModelDetectionError,
    TensorInfo,
    classify,
    detect_checkpoint,
    detect_diffusers_component,
    detect_diffusers_pipeline,
    inspect_safetensors,
    read_safetensors_header,
)
from models.catalogue import Architecture, ModelKind
from tests.models import tiny
from tests.models.tiny import write_fake_safetensors

SD1, SD2, SDXL, UNKNOWN = (
    Architecture.SD1,
    Architecture.SD2,
    Architecture.SDXL,
    Architecture.UNKNOWN,
)


def header(shapes: dict[str, tuple[int, ...]]) -> dict[str, TensorInfo]:
    return {name: TensorInfo("F16", shape) for name, shape in shapes.items()}


# --- reading headers -----------------------------------------------------------------------------


def test_header_names_shapes_and_skips_metadata(tmp_path: Path) -> None:
    path = write_fake_safetensors(
        tmp_path / "m.safetensors", tiny.SD1_CHECKPOINT, metadata={"format": "pt"}
    )
    result = read_safetensors_header(path)
    assert set(result) == set(tiny.SD1_CHECKPOINT)
    assert result["model.diffusion_model.input_blocks.0.0.weight"] == TensorInfo(
        "F16", (320, 4, 3, 3)
    )


def test_header_of_a_real_safetensors_file(tmp_path: Path, sd1_pipe: DiffusionPipeline) -> None:
    path = tiny.save_single_file(sd1_pipe, tmp_path / "tiny.safetensors")
    result = read_safetensors_header(path)
    assert result["model.diffusion_model.input_blocks.0.0.weight"].dtype == "F32"
    assert inspect_safetensors(path).architecture is SD1


def _raw_file(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "only 0 bytes"),
        (b"abc", "only 3 bytes"),
        (struct.pack("<Q", 10**12) + b"{}", "does not fit"),
        (struct.pack("<Q", 5) + b"{nope", "bad JSON"),
        (struct.pack("<Q", 2) + b"[]", "not an object"),
        (struct.pack("<Q", 2) + b"{}", "no tensors"),
        (struct.pack("<Q", 11) + b'{"a": true}', "corrupt safetensors header at 'a'"),
    ],
)
def test_unreadable_headers_raise_detection_errors(
    tmp_path: Path, payload: bytes, message: str
) -> None:
    path = _raw_file(tmp_path / "bad.safetensors", payload)
    with pytest.raises(ModelDetectionError, match=message) as info:
        read_safetensors_header(path)
    assert str(path) in str(info.value)


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    path = write_fake_safetensors(tmp_path / "part.safetensors", tiny.SD1_CHECKPOINT)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(ModelDetectionError, match="truncated"):
        read_safetensors_header(path)


def test_missing_file_is_a_detection_error(tmp_path: Path) -> None:
    with pytest.raises(ModelDetectionError, match="cannot read"):
        read_safetensors_header(tmp_path / "absent.safetensors")


def test_header_json_is_not_trusted_blindly(tmp_path: Path) -> None:
    raw = json.dumps({"w": {"dtype": "F16", "shape": ["x"], "data_offsets": [0, 2]}}).encode()
    path = _raw_file(tmp_path / "odd.safetensors", struct.pack("<Q", len(raw)) + raw + b"\0\0")
    with pytest.raises(ModelDetectionError, match="corrupt"):
        read_safetensors_header(path)


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shapes", "architecture", "inpainting"),
    [
        (tiny.SD1_CHECKPOINT, SD1, False),
        (tiny.SD1_INPAINT_CHECKPOINT, SD1, True),
        (tiny.SD2_CHECKPOINT, SD2, False),
        (tiny.SDXL_CHECKPOINT, SDXL, False),
        (tiny.SDXL_INPAINT_CHECKPOINT, SDXL, True),
        (tiny.UNET_ONLY_SDXL, SDXL, False),  # no text encoder: the context width decides
        (tiny.SDXL_REFINER_CHECKPOINT, Architecture.SDXL_REFINER, False),  # OpenCLIP bigG alone
    ],
)
def test_checkpoint_architecture_and_inpainting(
    shapes: dict[str, tuple[int, ...]], architecture: Architecture, inpainting: bool
) -> None:
    detected = detect_checkpoint(header(shapes))
    assert (detected.kind, detected.architecture, detected.inpainting) == (
        ModelKind.CHECKPOINT,
        architecture,
        inpainting,
    )


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            {
                **tiny.SD1_CHECKPOINT,
                "model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3),
            },
            "8 input channels",
        ),
        (tiny.SD1_LORA, "no UNet weights"),
        ({"model.diffusion_model.out.2.weight": (4, 320, 3, 3)}, "unknown architecture"),
    ],
)
def test_unsupported_checkpoints(shapes: dict[str, tuple[int, ...]], message: str) -> None:
    with pytest.raises(ModelDetectionError, match=message):
        detect_checkpoint(header(shapes), source="x.safetensors")


def test_tiny_single_files_detect_like_real_ones(
    tmp_path: Path, sd1_inpaint_pipe: DiffusionPipeline, sdxl_pipe: DiffusionPipeline
) -> None:
    inpaint = inspect_safetensors(
        tiny.save_single_file(sd1_inpaint_pipe, tmp_path / "a.safetensors")
    )
    xl = inspect_safetensors(tiny.save_single_file(sdxl_pipe, tmp_path / "b.safetensors"))
    assert (inpaint.architecture, inpaint.inpainting) == (SD1, True)
    assert (xl.architecture, xl.inpainting) == (SDXL, False)


# --- other single files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shapes", "kind", "architecture"),
    [
        (tiny.SD1_LORA, ModelKind.LORA, SD1),
        (tiny.SDXL_LORA, ModelKind.LORA, SDXL),
        (tiny.PEFT_LORA, ModelKind.LORA, SDXL),
        (tiny.LYCORIS_LOHA, ModelKind.LORA, UNKNOWN),
        (tiny.SD1_EMBEDDING, ModelKind.EMBEDDING, SD1),
        (tiny.SDXL_EMBEDDING, ModelKind.EMBEDDING, SDXL),
        (tiny.DIFFUSERS_EMBEDDING, ModelKind.EMBEDDING, SD1),
        (tiny.VAE_FILE, ModelKind.VAE, UNKNOWN),
        (tiny.SD1_CONTROLNET, ModelKind.CONTROLNET, SD1),
        (tiny.SDXL_IP_ADAPTER, ModelKind.IP_ADAPTER, SDXL),
        (tiny.SDXL_CHECKPOINT, ModelKind.CHECKPOINT, SDXL),
    ],
)
def test_classify_standalone_files(
    shapes: dict[str, tuple[int, ...]], kind: ModelKind, architecture: Architecture
) -> None:
    detected = classify(header(shapes))
    assert (detected.kind, detected.architecture) == (kind, architecture)


def test_unrecognised_file_names_some_tensors() -> None:
    with pytest.raises(ModelDetectionError, match=r"unrecognised weights.*alpha"):
        classify(header({"alpha": (3, 3), "beta": (3,)}), source="odd.safetensors")


# --- diffusers folders ---------------------------------------------------------------------------


def test_diffusers_pipeline_folders(
    tmp_path: Path, sd1_pipe: DiffusionPipeline, sdxl_inpaint_pipe: DiffusionPipeline
) -> None:
    sd1 = detect_diffusers_pipeline(tiny.save_config_dir(sd1_pipe, tmp_path / "sd1"))
    xl = detect_diffusers_pipeline(tiny.save_config_dir(sdxl_inpaint_pipe, tmp_path / "xl"))
    assert (sd1.kind, sd1.architecture, sd1.inpainting) == (ModelKind.CHECKPOINT, SD1, False)
    assert (xl.architecture, xl.inpainting) == (SDXL, True)


def _pipeline_folder(path: Path, index: dict[str, object], unet: dict[str, object]) -> Path:
    (path / "unet").mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps(index))
    (path / "unet" / "config.json").write_text(json.dumps(unet))
    return path


def test_sd2_folder_by_context_width(tmp_path: Path) -> None:
    folder = _pipeline_folder(
        tmp_path / "sd2",
        {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "X"]},
        {"cross_attention_dim": 1024, "in_channels": 4},
    )
    assert detect_diffusers_pipeline(folder).architecture is SD2


@pytest.mark.parametrize(
    ("index", "unet", "message"),
    [
        ({"_class_name": "FluxPipeline"}, {}, "FluxPipeline pipelines are not supported"),
        (
            {"_class_name": "StableDiffusionImg2ImgPipeline", "text_encoder": [None, None]},
            {"cross_attention_dim": 768, "in_channels": 4},
            "no text_encoder",
        ),
        (
            {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "X"]},
            {"cross_attention_dim": 768, "in_channels": 8},
            "8 input channels",
        ),
        (
            {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "X"]},
            {"in_channels": 4},
            "cross_attention_dim missing",
        ),
    ],
)
def test_unsupported_diffusers_folders(
    tmp_path: Path, index: dict[str, object], unet: dict[str, object], message: str
) -> None:
    folder = _pipeline_folder(tmp_path / "m", index, unet)
    with pytest.raises(ModelDetectionError, match=message):
        detect_diffusers_pipeline(folder)


def test_sdxl_refiner_folder(tmp_path: Path) -> None:
    folder = _pipeline_folder(
        tmp_path / "refiner",
        {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]},
        {"cross_attention_dim": 1280, "in_channels": 4},
    )
    assert detect_diffusers_pipeline(folder).architecture is Architecture.SDXL_REFINER


def test_broken_model_index_is_a_detection_error(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelDetectionError, match="not valid JSON"):
        detect_diffusers_pipeline(tmp_path)


def test_component_folders(tmp_path: Path, sd1_pipe: DiffusionPipeline) -> None:
    sd1_pipe.vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "cn").mkdir()
    (tmp_path / "cn" / "config.json").write_text(
        json.dumps({"_class_name": "ControlNetModel", "cross_attention_dim": 2048})
    )
    assert detect_diffusers_component(tmp_path / "vae").kind is ModelKind.VAE
    controlnet = detect_diffusers_component(tmp_path / "cn")
    assert (controlnet.kind, controlnet.architecture) == (ModelKind.CONTROLNET, SDXL)
