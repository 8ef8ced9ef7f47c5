"""The model catalogue: every public identifier a client may send, mapped to a model spec.

A spec says what a model is (kind, architecture), where its weights are and how they are stored,
and which inference defaults it brings. Specs come from the models directory scan, the optional
manifest and the embedded demo model; the catalogue itself is plain data with lookups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType


class ModelKind(StrEnum):
    CHECKPOINT = "checkpoint"
    LORA = "lora"
    EMBEDDING = "embedding"
    HYPERNETWORK = "hypernetwork"
    CONTROLNET = "controlnet"
    IP_ADAPTER = "ip_adapter"
    VAE = "vae"
    PREPROCESSOR = "preprocessor"
    UTILITY = "utility"


class Architecture(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"  # only OpenCLIP bigG, aesthetic-score conditioning
    UNKNOWN = "unknown"


class WeightFormat(StrEnum):
    DIFFUSERS = "diffusers"  # a diffusers folder with model_index.json / config.json
    SAFETENSORS = "safetensors"  # one single-file .safetensors checkpoint
    PICKLE = "pickle"  # .ckpt / .pt / .bin: only loaded when the operator opts in


@dataclass(frozen=True)
class InferenceDefaults:
    """Per-model defaults, in protocol-neutral names; None = the server-wide default."""

    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    clip_skip: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    code: str  # unique model code within its kind
    name: str  # display name
    kind: ModelKind
    architecture: Architecture
    path: Path
    weight_format: WeightFormat
    inpainting: bool = False
    config_dir: Path | None = None  # explicit architecture config folder (else the bundled one)
    defaults: InferenceDefaults = field(default_factory=InferenceDefaults)
    trigger_words: tuple[str, ...] = ()
    description: str = ""
    is_demo: bool = False
    inpainting_model: str | None = None  # code of this checkpoint's inpainting variant
    # Ids the hosted APIs' clients send for this model (Runware AIR ids such as
    # "civitai:36520@76907", legacy numeric ids...), bound by the manifest's `ids`.
    public_ids: tuple[str, ...] = ()


# Names of a checkpoint's inpainting variant: `<code><suffix>`.
INPAINTING_SUFFIXES: tuple[str, ...] = (
    "-inpainting",
    "_inpainting",
    ".inpainting",
    "-inpaint",
    "_inpaint",
)


# Public codes that clients of the hosted APIs send without knowing what is installed. They resolve
# to the default checkpoint unless the manifest maps them to a model of its own.
DEFAULT_CHECKPOINT_ALIASES: tuple[str, ...] = (
    "PICPIK General",
    "PICPIK Anime",
    "PICPIK Interior Design",
)


# Legacy (picfinder) numeric model ids, as Runware's legacy SDKs send them ("legacy:<id>", see
# server/runware/legacy/tables.py LEGACY_MODEL_IDS), and the architecture each one was. Unless the
# manifest binds one (`ids = ["legacy:13"]`, or an alias), it resolves to the default checkpoint
# of that architecture (Catalogue.default_for).
LEGACY_MODEL_ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType(
    {
        "legacy:4": Architecture.SDXL,  # SDXL v1.0
        "legacy:13": Architecture.SD1,  # rev_animated v1.2.2
        "legacy:18": Architecture.SD1,  # absolutereality v1.8.1
        "legacy:19": Architecture.SD1,  # cyberrealistic v3.2
        "legacy:20": Architecture.SD1,  # dreamshaper v7.0
        "legacy:22": Architecture.SD1,  # ghostmix_v2.0 bakedvae
        "legacy:25": Architecture.SD1,  # samaritan_3d_cartoon v3.0
    }
)
FAMILY_NAMES: Mapping[Architecture, str] = MappingProxyType(
    {
        Architecture.SD1: "SD 1.x",
        Architecture.SD2: "SD 2.x",
        Architecture.SDXL: "SDXL",
        Architecture.SDXL_REFINER: "SDXL refiner",
    }
)


class UnknownModelError(LookupError):
    def __init__(self, identifier: str, kind: ModelKind, hint: str = "") -> None:
        message = f"unknown {kind.value} model: {identifier!r}"
        super().__init__(f"{message} ({hint})" if hint else message)
        self.identifier = identifier
        self.kind = kind


class Catalogue:
    """Lookups over a fixed set of specs; rebuilt, not mutated, when the models change.

    A demo spec (models/demo) gives way to an installed spec of the same kind and code: the
    operator's real control_v11p_sd15_canny replaces the demo one. Two installed specs, or two
    demo ones, with one code are an error.
    """

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        *,
        aliases: Mapping[str, str] | None = None,
        default_checkpoint: str | None = None,
    ) -> None:
        self._specs: dict[tuple[ModelKind, str], ModelSpec] = {}
        self._public_ids: dict[tuple[ModelKind, str], ModelSpec] = {}
        specs = list(specs)
        installed = {(spec.kind, spec.code) for spec in specs if not spec.is_demo}
        for spec in specs:
            if spec.is_demo and (spec.kind, spec.code) in installed:
                continue  # replaced by the operator's model
            key = (spec.kind, spec.code)
            if key in self._specs:
                raise ValueError(f"two {spec.kind.value} models share the code {spec.code!r}")
            self._specs[key] = spec
            for public_id in spec.public_ids:
                other = self._public_ids.setdefault((spec.kind, public_id), spec)
                if other is not spec:
                    raise ValueError(
                        f"the id {public_id!r} is given to two {spec.kind.value} models: "
                        f"{other.code!r} and {spec.code!r}"
                    )
        checkpoints = self.by_kind(ModelKind.CHECKPOINT)
        real = [s for s in checkpoints if not s.is_demo]
        if default_checkpoint is None and checkpoints:
            default_checkpoint = (real or checkpoints)[0].code
        if default_checkpoint is not None and (ModelKind.CHECKPOINT, default_checkpoint) not in (
            self._specs
        ):
            raise ValueError(f"default checkpoint {default_checkpoint!r} is not installed")
        self.default_checkpoint = default_checkpoint
        self.aliases: dict[str, str] = {}
        if default_checkpoint is not None:
            self.aliases.update({alias: default_checkpoint for alias in DEFAULT_CHECKPOINT_ALIASES})
        for alias, code in (aliases or {}).items():
            if (ModelKind.CHECKPOINT, code) not in self._specs:
                raise ValueError(f"alias {alias!r} points at {code!r}, which is not installed")
            self.aliases[alias] = code
        self._add_legacy_defaults()

    def _add_legacy_defaults(self) -> None:
        """Legacy model ids the manifest does not bind -> the default checkpoint of their
        architecture, as aliases (so listings show them)."""
        bound = {i for (k, i) in self._public_ids if k is ModelKind.CHECKPOINT} | set(self.aliases)
        for public_id, architecture in LEGACY_MODEL_ARCHITECTURES.items():
            spec = self.default_for(architecture)
            if public_id not in bound and spec is not None:
                self.aliases[public_id] = spec.code

    def default_for(self, architecture: Architecture) -> ModelSpec | None:
        """The checkpoint a request for "some model of this architecture" gets: the default
        checkpoint if it is one, else the first installed one (txt2img before inpainting), else
        the first demo one; None when there is none."""
        checkpoints = [
            s for s in self.by_kind(ModelKind.CHECKPOINT) if s.architecture is architecture
        ]
        default = next((s for s in checkpoints if s.code == self.default_checkpoint), None)
        if default is not None:
            return default
        ranked = sorted(checkpoints, key=lambda s: (s.is_demo, s.inpainting))  # stable: by path
        return ranked[0] if ranked else None

    def by_kind(self, kind: ModelKind) -> list[ModelSpec]:
        return [spec for (k, _), spec in self._specs.items() if k is kind]

    def default_vae(self, architecture: Architecture) -> ModelSpec | None:
        """The server's own VAE for an architecture: the first installed one that fits, if any.

        PICPIK's UseMainModelVAE=false asks for it instead of the checkpoint's own. VAE files do
        not say which family they serve (SD 1.x and SDXL VAEs share one layout), so a VAE whose
        architecture is unknown fits any; the manifest can pin it.
        """
        fits = (architecture, Architecture.UNKNOWN)
        return next((s for s in self.by_kind(ModelKind.VAE) if s.architecture in fits), None)

    def inpainting_variant(self, spec: ModelSpec) -> ModelSpec | None:
        """The inpainting checkpoint that goes with a checkpoint: itself if it is one, else the
        one the manifest names (`inpainting_model`), else an installed inpainting checkpoint of
        the same architecture named after it (`<code>-inpainting`, `<code>_inpaint`, ...)."""
        if spec.inpainting:
            return spec
        candidates = [spec.inpainting_model] if spec.inpainting_model else []
        candidates += [spec.code + suffix for suffix in INPAINTING_SUFFIXES]
        for code in candidates:
            variant = self._specs.get((ModelKind.CHECKPOINT, code))
            if (
                variant is not None
                and variant.inpainting
                and (variant.architecture is spec.architecture)
            ):
                return variant
        return None

    def resolve(self, identifier: str | None, kind: ModelKind = ModelKind.CHECKPOINT) -> ModelSpec:
        """A model code, an alias, a public id (manifest `ids`) or a display name, in that order;
        None or "" means the default checkpoint."""
        if not identifier:
            if kind is ModelKind.CHECKPOINT and self.default_checkpoint is not None:
                return self._specs[(kind, self.default_checkpoint)]
            raise UnknownModelError(identifier or "", kind)
        spec = self._specs.get((kind, identifier))
        if spec is None and kind is ModelKind.CHECKPOINT and identifier in self.aliases:
            spec = self._specs[(kind, self.aliases[identifier])]
        if spec is None:
            spec = self._public_ids.get((kind, identifier))
        if spec is None:
            spec = next((s for s in self.by_kind(kind) if s.name == identifier), None)
        if spec is None:
            raise UnknownModelError(identifier, kind, self._hint(identifier, kind))
        return spec

    @staticmethod
    def _hint(identifier: str, kind: ModelKind) -> str:
        """What to install for a public id that names an architecture, not a model."""
        architecture = LEGACY_MODEL_ARCHITECTURES.get(identifier)
        if kind is not ModelKind.CHECKPOINT or architecture is None:
            return ""
        return (
            f"{identifier} asks for an {FAMILY_NAMES[architecture]} checkpoint and none is "
            "installed: put one into the models directory's checkpoints/ folder, or bind "
            f'{identifier} to a checkpoint with ids = ["{identifier}"] in manifest.toml'
        )
