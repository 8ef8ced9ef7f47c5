"""Catalogue lookups: codes, names, aliases and the default checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.catalogue import (
    Architecture,
    Catalogue,
    ModelKind,
    ModelSpec,
    UnknownModelError,
    WeightFormat,
)


def _spec(code: str, *, kind: ModelKind = ModelKind.CHECKPOINT, demo: bool = False) -> ModelSpec:
    return ModelSpec(
        code=code,
        name=f"{code} name",
        kind=kind,
        architecture=Architecture.SD1,
        path=Path(code),
        weight_format=WeightFormat.SAFETENSORS,
        is_demo=demo,
    )


def test_default_is_the_first_installed_checkpoint_not_the_demo() -> None:
    catalogue = Catalogue([_spec("demo", demo=True), _spec("real"), _spec("other")])
    assert catalogue.default_checkpoint == "real"
    assert catalogue.resolve(None).code == "real"
    assert catalogue.resolve("").code == "real"
    for alias in ("PICPIK General", "PICPIK Anime", "PICPIK Interior Design"):
        assert catalogue.resolve(alias).code == "real"


def test_demo_is_the_default_when_nothing_is_installed() -> None:
    assert Catalogue([_spec("demo", demo=True)]).resolve("PICPIK Anime").code == "demo"


def test_operator_aliases_and_default_win() -> None:
    catalogue = Catalogue(
        [_spec("a"), _spec("b"), _spec("c")],
        aliases={"PICPIK Anime": "c", "runware:100@1": "b"},
        default_checkpoint="b",
    )
    assert catalogue.resolve("PICPIK General").code == "b"
    assert catalogue.resolve("PICPIK Anime").code == "c"
    assert catalogue.resolve("runware:100@1").code == "b"


def test_lookup_by_code_then_name_within_a_kind() -> None:
    catalogue = Catalogue([_spec("a"), _spec("style", kind=ModelKind.LORA)])
    assert catalogue.resolve("a name").code == "a"
    assert catalogue.resolve("style", ModelKind.LORA).code == "style"
    with pytest.raises(UnknownModelError):
        catalogue.resolve("style")  # a LoRA is not a checkpoint
    with pytest.raises(UnknownModelError):
        catalogue.resolve("missing")


def test_inconsistent_catalogues_are_refused() -> None:
    with pytest.raises(ValueError, match="share the code"):
        Catalogue([_spec("a"), _spec("a")])
    with pytest.raises(ValueError, match="not installed"):
        Catalogue([_spec("a")], default_checkpoint="zzz")
    with pytest.raises(ValueError, match="not installed"):
        Catalogue([_spec("a")], aliases={"PICPIK General": "zzz"})
