"""Build the catalogue from the models directory, its manifest and the embedded demo model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.catalogue import Catalogue
from models.demo import demo_spec, ensure_demo_model
from models.manifest import MANIFEST_NAME, ManifestError, apply_manifest, load_manifest
from models.scan import SkippedFile, scan_models_dir


@dataclass(frozen=True)
class CatalogueReport:
    catalogue: Catalogue
    skipped: list[SkippedFile] = field(default_factory=list)


def build_catalogue(
    models_dir: Path, *, demo_root: Path | None, allow_pickle: bool = False
) -> CatalogueReport:
    """Scan, apply the manifest, add the demo model (built on first use under demo_root).

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
        specs.append(demo_spec(ensure_demo_model(demo_root)))
    try:
        catalogue = Catalogue(specs, aliases=aliases, default_checkpoint=default)
    except ValueError as error:  # two models given one public id
        raise ManifestError(f"{models_dir / MANIFEST_NAME}: {error}") from None
    return CatalogueReport(catalogue, list(skipped))
