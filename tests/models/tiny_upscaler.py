"""A tiny Real-ESRGAN "compact" upscaler (SRVGGNetCompact) with random weights, as real files are.

The builder is the demo set's (models/demo/upscaler.py), which the server uses too.
"""

from models.demo.upscaler import (  # noqa: F401
    NUM_CONV,
    NUM_FEAT,
    RECEPTIVE_RADIUS,
    save_tiny_upscaler,
    tiny_upscaler_state_dict,
)
