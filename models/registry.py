"""Build the catalogue from the models directory, its manifest and the embedded demo set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.catalogue import Catalogue, ModelKind
from models.demo import demo_specs, ensure_demo_set
from models.manifest import MANIFEST_NAME, ManifestError, apply_manifest, load_manifest
from models.scan import SkippedFile, scan_models_dir
from models.utility_models import use_demo_models


@dataclass(frozen=True)
class CatalogueReport:
    catalogue: Catalogue
    skipped: list[SkippedFile] = field(default_factory=list)


def build_catalogue(
    models_dir: Path, *, demo_root: Path | None, allow_pickle: bool = False
) -> CatalogueReport:
    """Scan, apply the manifest, add the demo set (built on first use under demo_root; its
    models give way to installed ones of the same kind and code). While no real checkpoint is
    installed, utilities without an installed model use the demo set's (use_demo_models).

    Raises models.manifest.ManifestError for a broken manifest: the operator must fix it.
    """
    specs, skipped = [], []
    if models_dir.is_dir():
        scan = scan_models_dir(models_dir, allow_pickle=allow_pickle)
        manifest = load_manifest(models_dir)
        specs, skipped = apply_manifest(scan.specs, manifest), scan.skipped
        aliases, default = manifest.aliases, manifest.default
    else:
        aliases, default = {}, None
    if demo_root is not None:
        specs += demo_specs(ensure_demo_set(demo_root))
    try:
        catalogue = Catalogue(specs, aliases=aliases, default_checkpoint=default)
    except ValueError as error:  # two models given one public id
        raise ManifestError(f"{models_dir / MANIFEST_NAME}: {error}") from None
    if demo_root is not None:
        real = any(not s.is_demo for s in catalogue.by_kind(ModelKind.CHECKPOINT))
        use_demo_models(models_dir, None if real else demo_root)
    return CatalogueReport(catalogue, list(skipped))
