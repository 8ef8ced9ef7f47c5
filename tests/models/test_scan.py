"""The models directory scan over a realistic A1111 / ComfyUI-style tree."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from models.catalogue import Architecture, ModelKind, WeightFormat
from models.scan import PICKLE_ARCHITECTURE_NOTE, ScanResult, scan_models_dir
from tests.models import tiny
from tests.models.tiny import write_fake_safetensors
from tests.models.tiny_submodels import (
    hypernetwork_state,
    save_a1111_pt_embedding,
    save_hypernetwork,
)

SD1, SD2, SDXL, UNKNOWN = (
    Architecture.SD1,
    Architecture.SD2,
    Architecture.SDXL,
    Architecture.UNKNOWN,
)
ST, DIFFUSERS, PICKLE = WeightFormat.SAFETENSORS, WeightFormat.DIFFUSERS, WeightFormat.PICKLE
CKPT, LORA, EMB, VAE = ModelKind.CHECKPOINT, ModelKind.LORA, ModelKind.EMBEDDING, ModelKind.VAE
CN, IPA, HN = ModelKind.CONTROLNET, ModelKind.IP_ADAPTER, ModelKind.HYPERNETWORK


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def models_dir(tmp_path: Path, sd1_pipe: DiffusionPipeline) -> Path:
    """A tree like the ones users have: mixed-case folder names, nesting, junk, mistakes."""
    root = tmp_path / "models"
    fake = write_fake_safetensors
    # A1111 checkpoint folder, with previews and yaml configs next to the models
    fake(root / "Stable-diffusion/sd15.safetensors", tiny.SD1_CHECKPOINT)
    put(root / "Stable-diffusion/sd15.preview.png", b"\x89PNG")
    put(root / "Stable-diffusion/sd15.yaml", b"model: {}")
    fake(root / "Stable-diffusion/XL/juggernaut.safetensors", tiny.SDXL_CHECKPOINT)
    fake(root / "Stable-diffusion/XL/inpaint/xl-inpaint.safetensors", tiny.SDXL_INPAINT_CHECKPOINT)
    fake(root / "Stable-diffusion/v2-1_768.safetensors", tiny.SD2_CHECKPOINT)
    fake(root / "Stable-diffusion/refiner.safetensors", tiny.SDXL_REFINER_CHECKPOINT)
    fake(root / "Stable-diffusion/misplaced-lora.safetensors", tiny.SD1_LORA)
    broken = fake(root / "Stable-diffusion/broken.safetensors", tiny.SD1_CHECKPOINT)
    with broken.open("r+b") as f:
        f.truncate(broken.stat().st_size // 2)
    put(root / "Stable-diffusion/old.ckpt", b"not loaded")
    put(root / "Stable-diffusion/.hidden.safetensors", b"ignored")
    # ComfyUI checkpoint folder: a stem shared with the A1111 folder, and a diffusers folder
    fake(root / "checkpoints/sd15.safetensors", tiny.SD1_INPAINT_CHECKPOINT)
    tiny.save_config_dir(sd1_pipe, root / "checkpoints/tiny-diffusers")
    put(root / "checkpoints/model.gguf", b"GGUF")
    # LoRAs, LyCORIS, nested
    fake(root / "Lora/style.safetensors", tiny.SD1_LORA)
    fake(root / "Lora/xl/detail.safetensors", tiny.SDXL_LORA)
    fake(root / "Lora/peft.safetensors", tiny.PEFT_LORA)
    put(root / "Lora/style.txt", b"trigger: style")
    fake(root / "LyCORIS/loha.safetensors", tiny.LYCORIS_LOHA)
    fake(root / "LyCORIS/not-a-lora.safetensors", tiny.VAE_FILE)
    # embeddings and hypernetworks: A1111 .pt pickles need no opt-in (weights-only unpickler)
    fake(root / "embeddings/easynegative.safetensors", tiny.SD1_EMBEDDING)
    fake(root / "embeddings/xl-negative.safetensors", tiny.SDXL_EMBEDDING)
    save_a1111_pt_embedding(root / "embeddings/old-style.pt", torch.zeros(2, 768))
    anime = hypernetwork_state([768, 320], layer_structure=(1, 0.01, 1))
    save_hypernetwork(root / "hypernetworks/anime.pt", anime)
    put(root / "hypernetworks/broken.pt", b"pickle")
    # ControlNet (single file + diffusers folder), IP-Adapter, VAE
    fake(root / "ControlNet/control_sd15_canny.safetensors", tiny.SD1_CONTROLNET)
    (root / "ControlNet/canny-sdxl").mkdir(parents=True)
    (root / "ControlNet/canny-sdxl/config.json").write_text(
        json.dumps({"_class_name": "ControlNetModel", "cross_attention_dim": 2048})
    )
    fake(root / "ControlNet/lora-by-mistake.safetensors", tiny.SD1_LORA)
    fake(root / "ipadapter/ip-adapter_sdxl.safetensors", tiny.SDXL_IP_ADAPTER)
    fake(root / "ipadapter/unusual-layout.safetensors", {"adapter.weight": (4, 4)})
    fake(root / "VAE/vae-ft-mse.safetensors", tiny.VAE_FILE)
    put(root / "VAE/garbage.safetensors", os.urandom(64))
    # things that are not models folders or are misplaced
    fake(root / "stray.safetensors", tiny.SD1_CHECKPOINT)
    (root / "configs/my-arch").mkdir(parents=True)
    put(root / "manifest.toml", b"")
    # symlinks: one escaping the models directory, one back into it (a duplicate), a loop
    outside = fake(tmp_path / "elsewhere/outside.safetensors", tiny.SD1_LORA)
    (root / "Lora/outside.safetensors").symlink_to(outside)
    (root / "Lora/again.safetensors").symlink_to(root / "Lora/style.safetensors")
    (root / "Lora/xl/loop").symlink_to(root / "Lora", target_is_directory=True)
    return root


def table(result: ScanResult, root: Path) -> dict[str, tuple]:
    return {
        s.path.relative_to(root.resolve()).as_posix(): (
            s.kind,
            s.code,
            s.architecture,
            s.inpainting,
            s.weight_format,
        )
        for s in result.specs
    }


def reasons(result: ScanResult, root: Path) -> dict[str, str]:
    return {
        (
            s.path.relative_to(root.resolve())
            if s.path.is_relative_to(root.resolve())
            else s.path.relative_to(root)
        ).as_posix(): s.reason
        for s in result.skipped
    }


def test_realistic_tree(models_dir: Path) -> None:
    result = scan_models_dir(models_dir)
    assert table(result, models_dir) == {
        "ControlNet/canny-sdxl": (CN, "canny-sdxl", SDXL, False, DIFFUSERS),
        "ControlNet/control_sd15_canny.safetensors": (CN, "control_sd15_canny", SD1, False, ST),
        "Lora/peft.safetensors": (LORA, "peft", SDXL, False, ST),
        "Lora/style.safetensors": (LORA, "style", SD1, False, ST),
        "Lora/xl/detail.safetensors": (LORA, "detail", SDXL, False, ST),
        "LyCORIS/loha.safetensors": (LORA, "loha", UNKNOWN, False, ST),
        "Stable-diffusion/XL/inpaint/xl-inpaint.safetensors": (
            CKPT,
            "xl-inpaint",
            SDXL,
            True,
            ST,
        ),
        "Stable-diffusion/XL/juggernaut.safetensors": (CKPT, "juggernaut", SDXL, False, ST),
        "Stable-diffusion/refiner.safetensors": (
            CKPT,
            "refiner",
            Architecture.SDXL_REFINER,
            False,
            ST,
        ),
        "Stable-diffusion/sd15.safetensors": (CKPT, "Stable-diffusion/sd15", SD1, False, ST),
        "Stable-diffusion/v2-1_768.safetensors": (CKPT, "v2-1_768", SD2, False, ST),
        "VAE/vae-ft-mse.safetensors": (VAE, "vae-ft-mse", UNKNOWN, False, ST),
        "checkpoints/sd15.safetensors": (CKPT, "checkpoints/sd15", SD1, True, ST),
        "checkpoints/tiny-diffusers": (CKPT, "tiny-diffusers", SD1, False, DIFFUSERS),
        "embeddings/easynegative.safetensors": (EMB, "easynegative", SD1, False, ST),
        "embeddings/old-style.pt": (EMB, "old-style", SD1, False, PICKLE),
        "embeddings/xl-negative.safetensors": (EMB, "xl-negative", SDXL, False, ST),
        "hypernetworks/anime.pt": (HN, "anime", SD1, False, PICKLE),
        "ipadapter/ip-adapter_sdxl.safetensors": (IPA, "ip-adapter_sdxl", SDXL, False, ST),
        "ipadapter/unusual-layout.safetensors": (IPA, "unusual-layout", UNKNOWN, False, ST),
    }
    paths = [s.path.relative_to(models_dir.resolve()).as_posix() for s in result.specs]
    assert paths == sorted(paths)
    assert all(s.name == s.code and s.path.exists() for s in result.specs)


def test_skipped_files_say_why(models_dir: Path) -> None:
    skipped = reasons(scan_models_dir(models_dir), models_dir)
    expected = {
        "ControlNet/lora-by-mistake.safetensors": "looks like a lora, not a controlnet",
        "Lora/again.safetensors": "same file as Lora/style.safetensors",
        "Lora/outside.safetensors": "symlink points outside the models directory",
        "LyCORIS/not-a-lora.safetensors": "looks like a vae, not a lora",
        "Stable-diffusion/broken.safetensors": "truncated",
        "Stable-diffusion/misplaced-lora.safetensors": "looks like a lora, not a checkpoint",
        "Stable-diffusion/old.ckpt": "--allow-pickle",
        "VAE/garbage.safetensors": "not a safetensors file",
        "checkpoints/model.gguf": "GGUF",
        "hypernetworks/broken.pt": "not a PyTorch weights file",
        "stray.safetensors": "not in a model folder",
    }
    assert set(skipped) == set(expected)
    for path, fragment in expected.items():
        assert fragment in skipped[path], (path, skipped[path])


def test_allow_pickle_lists_pickles_with_an_assumed_architecture(models_dir: Path) -> None:
    result = scan_models_dir(models_dir, allow_pickle=True)
    pickles = {s.code: s for s in result.specs if s.weight_format is PICKLE}
    assert {(c, s.kind) for c, s in pickles.items()} == {
        ("old", CKPT),
        ("old-style", EMB),
        ("anime", HN),
    }
    assert all(s.architecture is SD1 for s in pickles.values())
    # a checkpoint's family is assumed; embeddings and hypernetworks say theirs (widths 768)
    assert pickles["old"].description == PICKLE_ARCHITECTURE_NOTE
    assert pickles["old-style"].description == pickles["anime"].description == ""
    assert "Stable-diffusion/old.ckpt" not in reasons(result, models_dir)


def test_scan_is_deterministic(models_dir: Path) -> None:
    assert scan_models_dir(models_dir) == scan_models_dir(models_dir)


def test_folder_names_match_case_insensitively(tmp_path: Path) -> None:
    for folder in ("CHECKPOINTS", "LoRAs", "Embeddings", "ip-adapter", "vae"):
        (tmp_path / folder).mkdir()
    write_fake_safetensors(tmp_path / "CHECKPOINTS/a.safetensors", tiny.SD1_CHECKPOINT)
    write_fake_safetensors(tmp_path / "LoRAs/b.safetensors", tiny.SD1_LORA)
    write_fake_safetensors(tmp_path / "Embeddings/c.safetensors", tiny.SD1_EMBEDDING)
    write_fake_safetensors(tmp_path / "ip-adapter/d.safetensors", tiny.SDXL_IP_ADAPTER)
    write_fake_safetensors(tmp_path / "vae/e.safetensors", tiny.VAE_FILE)
    kinds = {s.code: s.kind for s in scan_models_dir(tmp_path).specs}
    assert kinds == {"a": CKPT, "b": LORA, "c": EMB, "d": IPA, "e": VAE}


def test_same_stem_in_one_folder_keeps_the_suffix(tmp_path: Path) -> None:
    write_fake_safetensors(tmp_path / "checkpoints/m.safetensors", tiny.SD1_CHECKPOINT)
    put(tmp_path / "checkpoints/m.ckpt", b"pickle")
    codes = sorted(s.code for s in scan_models_dir(tmp_path, allow_pickle=True).specs)
    assert codes == ["checkpoints/m.ckpt", "checkpoints/m.safetensors"]


def test_a_kind_folder_linked_from_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "big-disk"
    write_fake_safetensors(outside / "a.safetensors", tiny.SD1_CHECKPOINT)
    (tmp_path / "models").mkdir()
    (tmp_path / "models/checkpoints").symlink_to(outside, target_is_directory=True)
    result = scan_models_dir(tmp_path / "models")
    assert result.specs == []
    assert [s.reason for s in result.skipped] == ["symlink points outside the models directory"]


def test_missing_models_dir_is_reported_not_raised(tmp_path: Path) -> None:
    result = scan_models_dir(tmp_path / "absent")
    assert result.specs == []
    assert result.skipped[0].reason == "models directory does not exist"


def test_pipeline_folder_outside_checkpoints_is_skipped(
    tmp_path: Path, sd1_pipe: DiffusionPipeline
) -> None:
    tiny.save_config_dir(sd1_pipe, tmp_path / "loras/whole-model")
    result = scan_models_dir(tmp_path)
    assert result.specs == []
    assert "move it to checkpoints/" in result.skipped[0].reason
