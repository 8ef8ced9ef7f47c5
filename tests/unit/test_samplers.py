"""Every sampler name maps to a scheduler diffusers really has, with options it accepts."""

from __future__ import annotations

import diffusers
import pytest

from pipelines.samplers import SAMPLERS, is_known_sampler, sampler_spec

SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_builds_its_scheduler(name: str) -> None:
    spec = SAMPLERS[name]
    cls = getattr(diffusers, spec.scheduler_class)
    scheduler = cls.from_config(SD_SCHEDULER_CONFIG, **spec.options)
    for option, value in spec.options.items():
        assert scheduler.config[option] == value
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) >= 10


def test_lookup_is_case_insensitive_and_default_is_the_models_own() -> None:
    assert sampler_spec("dpm++ 2m karras") == SAMPLERS["DPM++ 2M Karras"]
    assert sampler_spec("Default") is None
    assert sampler_spec(None) is None
    assert is_known_sampler("EULER A")
    assert not is_known_sampler("Euler b")
    with pytest.raises(KeyError):
        sampler_spec("no such sampler")
