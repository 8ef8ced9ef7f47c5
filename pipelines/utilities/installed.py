"""The installed utility model a job runs on (or the engine's error for a missing one), and
loading the tokenizer + model folders that several utilities share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.utility_models import Utility, UtilityModel, UtilityModelMissing, find
from pipelines.jobs import ErrorCode, JobError


def installed_model(
    models_dir: Path | None, utility: Utility, name: str | None = None
) -> UtilityModel:
    """models.utility_models.find, failing as jobs fail: JobError MODEL_UNAVAILABLE whose
    message says what to install where."""
    try:
        return find(models_dir, utility, name)
    except UtilityModelMissing as missing:
        raise JobError(ErrorCode.MODEL_UNAVAILABLE, str(missing)) from None


def load_text_model(
    folder: Path, model_class: Any, what: str, device: str, dtype: Any
) -> tuple[Any, Any]:
    """The (model, tokenizer) of a transformers folder, offline, on the device and in eval
    mode; a folder that does not load is MODEL_UNAVAILABLE naming it. model_class: an Auto*
    class (AutoModelForCausalLM, AutoModelForSeq2SeqLM...)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = model_class.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the {what} in {folder} could not be loaded ({error}); reinstall it",
        ) from error
    return model.to(device).eval(), tokenizer
