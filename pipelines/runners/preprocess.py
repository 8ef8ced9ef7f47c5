"""Standalone ControlNet preprocessing (Runware's imageControlNetPreProcess): one control map.

No checkpoint is loaded: the map is made by pipelines.preprocessors at the job's working
resolution (most annotators are torch models, so this runs on the worker's thread and device,
cached like any auxiliary model), then resized to the size the client asked for, or back to the
input's size so the map lines up with the image it came from.
"""

from __future__ import annotations

from pathlib import Path

from PIL.Image import Image

from pipelines.imaging import fit_image
from pipelines.jobs import ErrorCode, JobError, PreprocessJob, ResizeMode
from pipelines.preprocessors import (
    MIN_RESOLUTION,
    NO_PREPROCESSOR,
    call_options,
    install_hint,
    is_map,
    missing_files,
    preprocess,
    preprocessor_spec,
)
from pipelines.runners.common import RunContext


def validate(job: PreprocessJob, models_dir: Path | None) -> None:
    """Refuse at submit what could only fail later: an unknown code or option, a bad size,
    weights that are not installed (with the file to install and where)."""
    if is_map(job.preprocessor):
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"a preprocessing task needs a preprocessor: {NO_PREPROCESSOR!r} makes no map",
        )
    spec = preprocessor_spec(job.preprocessor)
    call_options(job.preprocessor, job.options)
    if spec.sizes and job.resolution < MIN_RESOLUTION:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"preprocessor resolution {job.resolution} is below the minimum of {MIN_RESOLUTION}",
        )
    for name, side in (("width", job.width), ("height", job.height)):
        if side is not None and side < 1:
            raise JobError(ErrorCode.INVALID_INPUT, f"the map's {name} must be positive: {side}")
    missing = missing_files(spec, models_dir)
    if missing:
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE, install_hint(job.preprocessor, missing, models_dir)
        )


def output_size(job: PreprocessJob) -> tuple[int, int]:
    """The asked width x height; a missing side follows the input's aspect ratio, and with
    neither given the map takes the input's size."""
    width, height = job.image.size
    if job.width is not None and job.height is not None:
        return job.width, job.height
    if job.width is not None:
        return job.width, max(1, round(height * job.width / width))
    if job.height is not None:
        return max(1, round(width * job.height / height)), job.height
    return width, height


def run(job: PreprocessJob, ctx: RunContext) -> list[Image]:
    """The control map, as the job's only image. Progress is one step, reported when done (a
    cancel asked meanwhile fails the job there)."""
    resources = ctx.resources
    control_map = preprocess(
        job.preprocessor,
        job.image,
        resolution=job.resolution,
        options=job.options,
        models_dir=None if resources is None else resources.models_dir,
        cache=None if resources is None else resources.cache,
        seed=job.seeds[0],
    )
    width, height = output_size(job)
    control_map = fit_image(control_map, width, height, ResizeMode.JUST_RESIZE)
    ctx.report_step(1, 1)
    return [control_map]
