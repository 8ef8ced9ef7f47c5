"""Loading through the real loaders, pinned by parity: a single-file checkpoint, scanned and
configured like a user's, draws exactly the image its diffusers original draws."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from models.catalogue import Architecture, ModelKind, ModelSpec, WeightFormat
from models.loader import (
    CONFIGS_DIR,
    ModelLoadError,
    config_dir_for,
    load_pipeline,
    load_vae,
)
from models.manifest import apply_manifest, load_manifest
from models.scan import scan_models_dir
from tests.models import tiny
from tests.models.ldm_format import vae_file_state

FAMILIES = ("sd1", "sd1-inpaint", "sdxl", "sdxl-inpaint")
BUNDLED = {
    "sd1": "sd15",
    "sd1-inpaint": "sd15-inpaint",
    "sdxl": "sdxl",
    "sdxl-inpaint": "sdxl-inpaint",
}
CLASSES = {
    "sd1": StableDiffusionPipeline,
    "sd1-inpaint": StableDiffusionInpaintPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sdxl-inpaint": StableDiffusionXLInpaintPipeline,
}


@pytest.fixture(scope="module")
def pipes(
    sd1_pipe: DiffusionPipeline,
    sd1_inpaint_pipe: DiffusionPipeline,
    sdxl_pipe: DiffusionPipeline,
    sdxl_inpaint_pipe: DiffusionPipeline,
) -> dict[str, DiffusionPipeline]:
    built = (sd1_pipe, sd1_inpaint_pipe, sdxl_pipe, sdxl_inpaint_pipe)
    return dict(zip(FAMILIES, built, strict=True))


@pytest.fixture(scope="module")
def models_dir(
    tmp_path_factory: pytest.TempPathFactory, pipes: dict[str, DiffusionPipeline]
) -> Path:
    """Each tiny family as a single file (with its config folder named in the manifest) and as
    a diffusers folder; SD 1.x also as a pickle .ckpt; a standalone VAE file."""
    root = tmp_path_factory.mktemp("models")
    manifest = []
    for family, pipe in pipes.items():
        tiny.save_single_file(pipe, root / f"checkpoints/{family}.safetensors")
        tiny.save_diffusers(pipe, root / f"checkpoints/diffusers/{family}-folder")
        tiny.save_config_dir(pipe, root / f"configs/{family}", like=BUNDLED[family])
        manifest.append(
            f'[models."checkpoints/{family}.safetensors"]\nconfig = "configs/{family}"\n'
        )
    tiny.save_pickle(pipes["sd1"], root / "checkpoints/legacy/sd1-pickle.ckpt")
    manifest.append('[models."checkpoints/legacy/sd1-pickle.ckpt"]\nconfig = "configs/sd1"\n')
    vae = vae_file_state(pipes["sd1"])
    tiny.save_safetensors(vae, root / "vae/tiny-vae.safetensors")
    manifest.append('[models."vae/tiny-vae.safetensors"]\nconfig = "configs/sd1"\n')
    (root / "manifest.toml").write_text("\n".join(manifest))
    return root


@pytest.fixture(scope="module")
def specs(models_dir: Path) -> dict[str, ModelSpec]:
    result = scan_models_dir(models_dir, allow_pickle=True)
    assert result.skipped == []
    specs = apply_manifest(result.specs, load_manifest(models_dir))
    return {spec.code: spec for spec in specs}


def generate(pipe: DiffusionPipeline, family: str) -> np.ndarray:
    kwargs: dict[str, object] = {}
    if family.endswith("inpaint"):
        image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., 16:48, 16:48] = 1
        kwargs = {"image": image, "mask_image": mask}
    return pipe(
        prompt="a red fox in the snow",
        negative_prompt="blurry",
        num_inference_steps=2,
        guidance_scale=5.0,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images


def load(spec: ModelSpec, cache: Path, **options: object) -> DiffusionPipeline:
    return load_pipeline(spec, device="cpu", dtype=torch.float32, cache_dir=cache, **options)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_draws_what_the_diffusers_folder_draws(
    family: str,
    pipes: dict[str, DiffusionPipeline],
    specs: dict[str, ModelSpec],
    tokenizer_cache: Path,
) -> None:
    single, folder = specs[family], specs[f"{family}-folder"]
    assert single.weight_format is WeightFormat.SAFETENSORS
    assert folder.weight_format is WeightFormat.DIFFUSERS
    assert single.inpainting is folder.inpainting is family.endswith("inpaint")
    from_file = load(single, tokenizer_cache)
    from_folder = load(folder, tokenizer_cache)
    assert type(from_file) is type(from_folder) is CLASSES[family]
    expected = generate(pipes[family], family)
    assert expected.std() > 0.01  # a real picture of noise, not a constant
    np.testing.assert_array_equal(generate(from_folder, family), expected)
    np.testing.assert_array_equal(generate(from_file, family), expected)


def test_pickle_is_refused_without_the_opt_in(specs: dict[str, ModelSpec], tmp_path: Path) -> None:
    spec = specs["sd1-pickle"]
    with pytest.raises(ModelLoadError) as info:
        load(spec, tmp_path)
    message = str(info.value)
    assert str(spec.path) in message
    assert "--allow-pickle" in message and "EASEL_ALLOW_PICKLE=1" in message


def test_pickle_loads_with_the_opt_in(
    specs: dict[str, ModelSpec], pipes: dict[str, DiffusionPipeline], tokenizer_cache: Path
) -> None:
    spec = specs["sd1-pickle"]
    assert spec.weight_format is WeightFormat.PICKLE
    pipe = load(spec, tokenizer_cache, allow_pickle=True)
    np.testing.assert_array_equal(generate(pipe, "sd1"), generate(pipes["sd1"], "sd1"))


def test_default_cache_dir_is_under_the_temp_dir(
    specs: dict[str, ModelSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    load_pipeline(specs["sdxl"], device="cpu", dtype=torch.float32)
    tokenizers = tmp_path / "easel-cache" / "tokenizers"
    assert sorted(p.name for p in tokenizers.iterdir()) == [
        "clip-tokenizer",
        "clip-tokenizer-pad-33",
    ]


def test_load_vae_from_a_single_file_and_from_folders(
    specs: dict[str, ModelSpec], pipes: dict[str, DiffusionPipeline], models_dir: Path
) -> None:
    expected = pipes["sd1"].vae.state_dict()
    pipeline_folder = specs["sd1-folder"]
    pipes["sd1"].vae.save_pretrained(models_dir / "vae/tiny-vae-folder")
    vae_folder = dataclasses.replace(
        pipeline_folder,
        kind=ModelKind.VAE,
        path=models_dir / "vae/tiny-vae-folder",
        architecture=Architecture.UNKNOWN,
    )
    for spec in (specs["tiny-vae"], pipeline_folder, vae_folder):
        vae = load_vae(spec, device="cpu", dtype=torch.float32)
        state = vae.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected), spec.code
        assert vae.config.scaling_factor == pytest.approx(0.18215)


def test_bundled_config_follows_architecture_and_inpainting(specs: dict[str, ModelSpec]) -> None:
    spec = dataclasses.replace(specs["sd1"], config_dir=None)
    cases = {
        (Architecture.SD1, False): "sd15",
        (Architecture.SD1, True): "sd15-inpaint",
        (Architecture.SD2, False): "sd2",
        (Architecture.SDXL, False): "sdxl",
        (Architecture.SDXL, True): "sdxl-inpaint",
    }
    for (architecture, inpainting), folder in cases.items():
        chosen = dataclasses.replace(spec, architecture=architecture, inpainting=inpainting)
        assert config_dir_for(chosen) == CONFIGS_DIR / folder
    assert config_dir_for(specs["sd1"]) == specs["sd1"].config_dir


def _broken(spec: ModelSpec, tmp_path: Path) -> ModelSpec:
    path = tmp_path / "broken.safetensors"
    data = spec.path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return dataclasses.replace(spec, path=path)


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda s, t: _broken(s, t), ["broken.safetensors", "truncated"]),
        (
            lambda s, t: dataclasses.replace(s, path=t / "gone.safetensors"),
            ["gone.safetensors", "does not exist"],
        ),
        (
            lambda s, t: dataclasses.replace(
                s, architecture=Architecture.SDXL, config_dir=s.config_dir.parent / "sdxl"
            ),
            ["sd1.safetensors", "loaded as an sdxl checkpoint", "manifest.toml"],
        ),
        (
            lambda s, t: dataclasses.replace(
                s, architecture=Architecture.SD2, inpainting=True, config_dir=None
            ),
            ["sd1.safetensors", "no bundled config for sd2 inpainting", "`config`"],
        ),
        (
            lambda s, t: dataclasses.replace(s, config_dir=t),
            ["config folder", "has no model_index.json"],
        ),
        (
            lambda s, t: dataclasses.replace(s, config_dir=t / "absent"),
            ["config folder", "does not exist"],
        ),
        (
            lambda s, t: dataclasses.replace(s, architecture=Architecture.UNKNOWN),
            ["unsupported architecture"],
        ),
    ],
)
def test_load_failures_say_what_to_fix(
    specs: dict[str, ModelSpec], tmp_path: Path, change, fragments: list[str]
) -> None:
    spec = change(specs["sd1"], tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load(spec, tmp_path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_incomplete_diffusers_folder(
    specs: dict[str, ModelSpec], pipes: dict[str, DiffusionPipeline], tmp_path: Path
) -> None:
    folder = tiny.save_config_dir(pipes["sd1"], tmp_path / "incomplete")  # configs, no weights
    spec = dataclasses.replace(specs["sd1-folder"], path=folder)
    with pytest.raises(ModelLoadError, match="complete diffusers model"):
        load(spec, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_half_precision_on_the_gpu(
    family: str, specs: dict[str, ModelSpec], tokenizer_cache: Path
) -> None:
    """What the server does on a GPU: fp16, single file and diffusers folder alike."""
    images = []
    for spec in (specs[family], specs[f"{family}-folder"]):
        pipe = load_pipeline(spec, device="cuda", dtype=torch.float16, cache_dir=tokenizer_cache)
        assert pipe.unet.dtype == torch.float16 and pipe.device.type == "cuda"
        images.append(generate(pipe, family))
    assert np.isfinite(images[0]).all()
    np.testing.assert_allclose(images[0], images[1], atol=1e-3)
