"""The demo set (models/demo): built deterministically, every kind present in its real format,
and replaced by the operator's models of the same kind and code; legacy model ids resolve to the
default checkpoint of their architecture."""

from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from models.catalogue import (
    LEGACY_MODEL_ARCHITECTURES,
    Architecture,
    Catalogue,
    ModelKind,
    ModelSpec,
    UnknownModelError,
    WeightFormat,
)
from models.demo import (
    CONTROLNET_CODES,
    DEMO_CODE,
    DEMO_XL_CODE,
    IP_ADAPTER_CODE,
    demo_specs,
    ensure_demo_set,
)
from models.demo.demo_set import SET_MARKER
from models.registry import build_catalogue
from models.scan import scan_models_dir
from models.utility_models import Utility, find, installed
from server.runware.legacy.tables import LEGACY_MODEL_IDS
from tests.models.tiny import SD1_CHECKPOINT, SDXL_CHECKPOINT, write_fake_safetensors


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root but the hidden ones (the tokenizer cache)."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts)
    }


def test_the_build_is_deterministic(demo_root: Path, tmp_path: Path) -> None:
    again = ensure_demo_set(tmp_path / "demo")
    assert _digests(again) == _digests(demo_root)


def test_a_built_set_is_reused_and_an_old_one_rebuilt(tmp_path: Path, demo_root: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(demo_root, root)
    canny = root / "controlnet" / CONTROLNET_CODES[0] / "config.json"
    canny.write_text("{}")  # a build would overwrite it
    ensure_demo_set(root)
    assert canny.read_text() == "{}"
    (root / SET_MARKER).write_text(json.dumps({"version": 0}))
    ensure_demo_set(root)
    assert json.loads(canny.read_text())["_class_name"] == "ControlNetModel"


def test_starts_at_once_build_it_once(tmp_path: Path, demo_root: Path) -> None:
    """Two starts on one fresh data directory (an API replica and a worker): one builds, the
    other waits for it and reuses the build."""
    root = tmp_path / "demo"
    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(ensure_demo_set, [root, root]))
    assert built == [root, root]
    assert _digests(root) == _digests(demo_root)


def test_every_kind_is_there_in_the_format_the_scan_reads(demo_root: Path, tmp_path: Path) -> None:
    specs = demo_specs(demo_root)
    assert all(spec.is_demo and spec.path.exists() for spec in specs)
    by_kind = {kind: [s.code for s in specs if s.kind is kind] for kind in ModelKind}
    assert by_kind[ModelKind.CHECKPOINT] == [DEMO_CODE, DEMO_XL_CODE]
    assert by_kind[ModelKind.CONTROLNET] == list(CONTROLNET_CODES)
    assert by_kind[ModelKind.IP_ADAPTER] == [IP_ADAPTER_CODE]
    # Laid out as a models directory, the real scan finds the same models.
    models = tmp_path / "models"
    for folder in ("controlnet", "ipadapter"):
        shutil.copytree(demo_root / folder, models / folder)
    for code in (DEMO_CODE, DEMO_XL_CODE):
        shutil.copytree(demo_root / code, models / "checkpoints" / code)
    scan = scan_models_dir(models)
    assert scan.skipped == []
    # (At these widths the files do not say their family: the demo specs name it.)
    assert {(s.kind, s.code) for s in scan.specs} == {(s.kind, s.code) for s in specs}
    # One model per utility, where a models directory keeps it.
    for utility in Utility:
        (model,) = installed(demo_root, utility)
        assert model.name.startswith("easel-demo"), model


def _real(kind: ModelKind, code: str, architecture: Architecture = Architecture.SD1) -> ModelSpec:
    return ModelSpec(
        code, code, kind, architecture, Path(f"/models/{code}"), WeightFormat.DIFFUSERS
    )


def test_an_installed_model_replaces_the_demo_one_of_its_code(demo_root: Path) -> None:
    canny = _real(ModelKind.CONTROLNET, CONTROLNET_CODES[0])
    adapter = _real(ModelKind.IP_ADAPTER, IP_ADAPTER_CODE)
    catalogue = Catalogue([*demo_specs(demo_root), canny, adapter])
    assert catalogue.resolve(canny.code, ModelKind.CONTROLNET) is canny
    assert catalogue.resolve(IP_ADAPTER_CODE, ModelKind.IP_ADAPTER) is adapter
    controlnets = catalogue.by_kind(ModelKind.CONTROLNET)
    assert [s.code for s in controlnets].count(canny.code) == 1
    assert all(s.is_demo for s in controlnets if s is not canny)  # the other codes stay demo
    with pytest.raises(ValueError, match="share the code"):  # two installed ones still clash
        Catalogue([canny, replace(canny, path=Path("/models/other"))])


def test_demo_utilities_serve_only_what_is_missing_and_no_real_server(
    demo_root: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    (models / "caption" / "blip").mkdir(parents=True)
    (models / "caption" / "blip" / "config.json").write_text("{}")
    build_catalogue(models, demo_root=demo_root)
    assert find(models, Utility.CAPTION).name == "blip"  # installed: no demo
    demo = find(models, Utility.UPSCALE)
    assert demo.is_demo and demo.path.is_relative_to(demo_root)
    write_fake_safetensors(models / "checkpoints" / "real.safetensors", SD1_CHECKPOINT)
    build_catalogue(models, demo_root=demo_root)
    assert installed(models, Utility.UPSCALE) == []  # a real checkpoint: no random utilities
    assert find(models, Utility.CAPTION).name == "blip"


def test_legacy_ids_resolve_to_a_checkpoint_of_their_architecture(
    demo_root: Path, tmp_path: Path
) -> None:
    demo = build_catalogue(tmp_path / "none", demo_root=demo_root).catalogue
    assert demo.resolve("legacy:13").code == DEMO_CODE
    assert demo.resolve("legacy:4").code == DEMO_XL_CODE
    models = tmp_path / "models"
    write_fake_safetensors(models / "checkpoints" / "a-sd1.safetensors", SD1_CHECKPOINT)
    write_fake_safetensors(models / "checkpoints" / "b-xl.safetensors", SDXL_CHECKPOINT)
    real = build_catalogue(models, demo_root=demo_root).catalogue
    assert real.resolve("legacy:13").code == "a-sd1"  # the default checkpoint
    assert real.resolve("legacy:4").code == "b-xl"  # the first SDXL one
    assert real.aliases["legacy:20"] == "a-sd1"  # listed like the PICPIK public names
    (models / "manifest.toml").write_text(
        '[models."checkpoints/b-xl.safetensors"]\nids = ["legacy:13"]\n'
    )
    bound = build_catalogue(models, demo_root=demo_root).catalogue
    assert bound.resolve("legacy:13").code == "b-xl"  # the manifest's binding wins
    assert "legacy:13" not in bound.aliases


def test_a_legacy_id_without_a_fitting_checkpoint_says_what_to_install(demo_root: Path) -> None:
    sd1_only = Catalogue([s for s in demo_specs(demo_root) if s.code != DEMO_XL_CODE])
    with pytest.raises(UnknownModelError, match=r"SDXL checkpoint .* checkpoints/"):
        sd1_only.resolve("legacy:4")


def test_the_catalogue_knows_every_legacy_model_id() -> None:
    legacy = {model.public_id: model.name for model in LEGACY_MODEL_IDS.values()}
    assert set(legacy) == set(LEGACY_MODEL_ARCHITECTURES)
    for public_id, name in legacy.items():
        expected = Architecture.SDXL if name.startswith("SDXL") else Architecture.SD1
        assert LEGACY_MODEL_ARCHITECTURES[public_id] is expected, public_id
