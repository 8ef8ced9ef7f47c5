"""What is installed, and installing more: the engine side of `easel models [pull]`.

The server layer may not import models/, so the command line reaches the catalogue and the
installer (models/install.py) through here, in plain strings and paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.catalogue import ModelKind, ModelSpec
from models.download import DownloadReporter, describe_size, describe_speed
from models.install import INSTALL_FOLDERS, KIND_NAMES, PullError, PullRequest, pull
from models.manifest import ManifestError
from models.utility_models import Utility
from models.utility_models import installed as installed_utilities

__all__ = [
    "INSTALL_KINDS",
    "KIND_CHOICES",
    "DownloadReporter",
    "InstalledModel",
    "PullError",
    "PullOptions",
    "Pulled",
    "describe_size",
    "describe_speed",
    "installed_models",
    "pull_model",
]

INSTALL_KINDS: tuple[str, ...] = tuple(kind.value for kind in INSTALL_FOLDERS)
KIND_CHOICES: tuple[str, ...] = tuple(KIND_NAMES)  # what --kind accepts: those, and spellings


@dataclass(frozen=True)
class PullOptions:
    source: str  # an http(s) URL or a Hugging Face repo id
    models_dir: Path
    code: str | None = None
    kind: str | None = None  # one of INSTALL_KINDS; None: read from the file
    sha256: str | None = None
    force: bool = False
    retries: int = 3
    backoff_s: float = 2.0


@dataclass(frozen=True)
class Pulled:
    """An installed model and how it got there."""

    code: str
    kind: str
    architecture: str
    inpainting: bool
    path: Path
    size: int
    sha256: str
    verified_by: str | None  # where the expected sha256 came from; None: nothing to check
    received: int  # bytes this run fetched
    resumed_from: int  # bytes an earlier run had fetched
    seconds: float
    unchanged: bool  # the same file was installed already
    replaced: bool  # --force replaced a different file
    public_ids: tuple[str, ...]
    notes: tuple[str, ...]


def pull_model(options: PullOptions, reporter: DownloadReporter) -> Pulled:
    """Download, verify and install one model; PullError (nothing installed) says why not."""
    kind = None
    if options.kind is not None:
        kind = KIND_NAMES.get(options.kind.lower())
        if kind is None:
            raise PullError(
                f"--kind must be one of {', '.join(INSTALL_KINDS)}, not {options.kind!r}"
            )
    request = PullRequest(
        source=options.source,
        models_dir=options.models_dir,
        code=options.code,
        kind=kind,
        sha256=options.sha256,
        force=options.force,
        retries=options.retries,
        backoff_s=options.backoff_s,
    )
    result = pull(request, reporter)
    fetched = result.download
    return Pulled(
        code=result.code,
        kind=result.kind.value,
        architecture=result.detected.architecture.value,
        inpainting=result.detected.inpainting,
        path=result.path,
        size=fetched.size,
        sha256=result.sha256,
        verified_by=result.verified_by,
        received=fetched.received,
        resumed_from=fetched.resumed_from,
        seconds=fetched.seconds,
        unchanged=result.unchanged,
        replaced=result.replaced,
        public_ids=result.public_ids,
        notes=result.notes,
    )


@dataclass(frozen=True)
class InstalledModel:
    kind: str
    code: str
    architecture: str
    path: Path
    public_ids: tuple[str, ...]  # other names clients may send for it: name, ids, aliases
    is_demo: bool = False


def installed_models(
    models_dir: Path, data_dir: Path, *, allow_pickle: bool = False
) -> tuple[list[InstalledModel], list[str]]:
    """Every model the server would serve (the demo set included), kinds in catalogue order, then
    the utility models, and notes on the files the scan skipped. ValueError: the manifest is
    broken."""
    from models.registry import build_catalogue  # builds the demo model: torch

    try:
        report = build_catalogue(models_dir, demo_root=data_dir / "demo", allow_pickle=allow_pickle)
    except ManifestError as error:
        raise ValueError(str(error)) from None
    catalogue = report.catalogue
    models = [
        _installed(spec, catalogue.aliases)
        for kind in ModelKind
        for spec in catalogue.by_kind(kind)
    ]
    models += [  # looked up when a job runs; listed as such a job would find them now
        InstalledModel(utility.value, model.name, "-", model.path, (), is_demo=model.is_demo)
        for utility in Utility
        for model in installed_utilities(models_dir, utility)
    ]
    notes = [f"skipped {s.path}: {s.reason}" for s in report.skipped]
    return models, notes


def _installed(spec: ModelSpec, aliases: dict[str, str]) -> InstalledModel:
    names = [spec.name] if spec.name != spec.code else []
    if spec.kind is ModelKind.CHECKPOINT:
        names += [alias for alias, code in aliases.items() if code == spec.code]
    return InstalledModel(
        kind=spec.kind.value,
        code=spec.code,
        architecture=spec.architecture.value,
        path=spec.path,
        public_ids=(*names, *spec.public_ids),
        is_demo=spec.is_demo,
    )
