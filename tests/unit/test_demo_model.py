"""The embedded demo model is built deterministically and reused once built."""

from __future__ import annotations

from pathlib import Path

from models.demo import DEMO_CODE, ensure_demo_model


def _weights(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


def test_same_weights_on_every_build(tmp_path: Path, demo_dir: Path) -> None:
    built = ensure_demo_model(tmp_path)
    assert built == tmp_path / DEMO_CODE
    assert _weights(built) == _weights(demo_dir)
    assert len(_weights(built)) == 3  # unet, vae, text encoder


def test_second_start_reuses_the_build(tmp_path: Path) -> None:
    built = ensure_demo_model(tmp_path)
    marker = built / "unet" / "diffusion_pytorch_model.safetensors"
    stamp = marker.stat().st_mtime_ns
    assert ensure_demo_model(tmp_path) == built
    assert marker.stat().st_mtime_ns == stamp
