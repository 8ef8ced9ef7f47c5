"""A tiny random-weight Stable Diffusion safety checker that flags one chosen image.

The builder is the demo set's (models/demo/safety_checker.py), which the server uses too.
"""

from models.demo.safety_checker import (  # noqa: F401
    FLAG_THRESHOLD,
    IMAGE_SIZE,
    NEVER,
    OUTER,
    WEIGHT_STD,
    image_processor,
    save_tiny_safety_checker,
    tiny_safety_checker,
)
