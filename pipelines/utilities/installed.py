"""The installed utility model a job runs on, or the engine's error for a missing one."""

from __future__ import annotations

from pathlib import Path

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
